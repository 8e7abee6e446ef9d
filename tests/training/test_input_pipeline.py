"""Input pipeline: ops eagerly and inside tf.data, label-correct augmentation, determinism."""

import math

import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf import input_pipeline
from deeplense_tf.simulation import recipes, substructure
from deeplense_tf.simulation.components import MainDeflector, SersicSource
from deeplense_tf.simulation.priors import Fixed
from deeplense_tf.simulation.simulator import LensSimulator, example_rng

DATASET = "deeplense_lensing/euclid_axion_tiny"
ORIENTED = ["lens_center_x", "lens_center_y", "source_center_x", "source_center_y", "lens_e1",
            "lens_e2", "shear_gamma1", "shear_gamma2", "source_e1", "source_e2", "vortex_angle",
            "theta_e", "log10_m_axion"]


def _render(params):
    """Noiseless Euclid image of the given parameters (vortex included)."""
    deflector = MainDeflector(theta_e=params["theta_e"], e1=params["lens_e1"],
                              e2=params["lens_e2"], gamma1=params["shear_gamma1"],
                              gamma2=params["shear_gamma2"], center_x=params["lens_center_x"],
                              center_y=params["lens_center_y"])
    source = SersicSource(magnitude=Fixed(20.5), r_sersic=0.3, n_sersic=1.5, e1=params["source_e1"],
                          e2=params["source_e2"], center_x=params["source_center_x"],
                          center_y=params["source_center_y"])
    vortex = substructure.AxionVortex(log10_m_axion=Fixed(params["log10_m_axion"]),
                                      angle=Fixed(params["vortex_angle"]))
    sim = LensSimulator("euclid", deflector, source, {"axion": vortex}, noise=False)
    return sim.simulate(example_rng(0, 0, 0)).image


PARAMS = {"theta_e": 1.3, "lens_e1": 0.12, "lens_e2": -0.07, "shear_gamma1": 0.04,
          "shear_gamma2": 0.03, "lens_center_x": 0.08, "lens_center_y": -0.05,
          "source_e1": 0.2, "source_e2": 0.1, "source_center_x": 0.15, "source_center_y": 0.05,
          "vortex_angle": 0.4, "log10_m_axion": -23.3}


@pytest.mark.parametrize("k, flip", [(k, f) for k in range(4) for f in (False, True)])
def test_augmented_labels_describe_the_augmented_image(k, flip):
    """Transforming the image and re-simulating from the transformed labels agree."""
    image = _render(PARAMS)
    labels = {name: tf.constant(v, tf.float32) for name, v in PARAMS.items()}
    new_image, new_labels = input_pipeline.dihedral(image[..., None], labels, k, flip)
    rendered = _render({name: float(v) for name, v in new_labels.items()})
    scale = image.max()
    np.testing.assert_allclose(new_image.numpy()[..., 0], rendered, atol=2e-4 * scale)
    assert float(new_labels["theta_e"]) == pytest.approx(1.3)
    assert float(new_labels["log10_m_axion"]) == pytest.approx(-23.3)


def test_dihedral_is_the_same_eagerly_and_inside_tf_data():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 1)).astype(np.float32)
    labels = {name: np.float32(v) for name, v in PARAMS.items()}
    for k in range(4):
        for flip in (False, True):
            eager = input_pipeline.dihedral(tf.constant(image), labels, k, flip)
            ds = tf.data.Dataset.from_tensors((image, labels)).map(
                lambda im, lab: input_pipeline.dihedral(im, lab, k, flip))
            graph = next(iter(ds))
            np.testing.assert_array_equal(eager[0].numpy(), graph[0].numpy())
            for name in labels:
                assert float(eager[1][name]) == float(graph[1][name])


def test_the_eight_transforms_are_distinct_and_a_group():
    image = tf.constant(np.arange(16, dtype=np.float32).reshape(4, 4, 1))
    seen = {input_pipeline.dihedral(image, {}, k, f)[0].numpy().tobytes()
            for k in range(4) for f in (False, True)}
    assert len(seen) == 8
    once = input_pipeline.dihedral(image, {"vortex_angle": tf.constant(3.0)}, 1, True)
    twice = input_pipeline.dihedral(*once, 3, False)
    flipped_back = input_pipeline.dihedral(*twice, 0, True)
    np.testing.assert_array_equal(flipped_back[0].numpy(), image.numpy())
    assert float(flipped_back[1]["vortex_angle"]) == pytest.approx(3.0, abs=1e-5)


def test_partners_of_oriented_targets_are_read():
    assert input_pipeline._partners(["lens_e1"]) == ["lens_e1", "lens_e2"]
    assert input_pipeline._partners(["log10_m_axion"]) == ["log10_m_axion"]


def test_epochs_are_deterministic_and_resumable(tiny_data):
    pipe = input_pipeline.Pipeline(tiny_data, DATASET, ["log10_m_axion"], seed=3)

    def batches(epoch, skip=0):
        return [(x.numpy(), y["log10_m_axion"].numpy())
                for x, y in pipe.train_epoch(4, epoch, skip_batches=skip)]

    first, again, other = batches(0), batches(0), batches(1)
    assert len(first) == 6
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    resumed = batches(0, skip=2)
    assert len(resumed) == 4
    for (xa, ya), (xb, yb) in zip(first[2:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_statistics_match_numpy(tiny_data):
    pipe = input_pipeline.Pipeline(tiny_data, DATASET, ["log10_m_axion", "theta_e"])
    stats = pipe.statistics("train")
    values = np.array([[y["log10_m_axion"], y["theta_e"]]
                       for _, y in pipe.eval_dataset("train", 5).unbatch().as_numpy_iterator()])
    np.testing.assert_allclose(stats.target_mean, values.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.target_std, values.std(0), rtol=1e-4)
    assert stats.num_examples == 24 and stats.pixel_std > 0 and stats.pixel_noise > 0


def test_evaluation_reads_every_example_once_in_file_order(tiny_data):
    pipe = input_pipeline.Pipeline(tiny_data, DATASET, ["log10_m_axion"])
    first = np.concatenate([y["log10_m_axion"].numpy() for _, y in pipe.eval_dataset("test", 3)])
    second = np.concatenate([y["log10_m_axion"].numpy() for _, y in pipe.eval_dataset("test", 8)])
    assert len(first) == 8
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("dataset, targets, words", [
    ("deeplense_lensing/euclid_cdm", ["log10_sigma_sub"], "euclid_axion_tiny"),
    ("euclid_axion_tiny", ["log10_m_axion"], "expected 'deeplense_lensing/CONFIG"),
    (DATASET, ["log10_m_wimp"], "accepted: .*log10_m_axion"),
    (DATASET + ":9.9.9", ["log10_m_axion"], "no complete build of version 9.9.9"),
])
def test_bad_requests_are_named(tiny_data, dataset, targets, words):
    with pytest.raises(input_pipeline.DataError, match=words):
        input_pipeline.Pipeline(tiny_data, dataset, targets)
