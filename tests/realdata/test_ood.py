"""The out-of-distribution score: its arithmetic, its place in the model, its fit, and the
perturbations it is measured on."""

import math

import keras
import numpy as np
import pytest

from deeplense_tf import models, ood
from deeplense_tf.models.ood import OODScore, pixel_statistics
from deeplense_tf.simulation import instruments, perturbations, recipes


def _model():
    model = models.build_regressor("resnet18", variant="test", image_shape=(64, 64, 1),
                                   targets=["log10_m_axion"], target_mean=[-23.0],
                                   target_std=[0.6], normalization="asinh", asinh_scale=0.01)
    return model


def test_score_is_the_larger_scaled_mahalanobis_distance():
    rng = np.random.default_rng(0)
    f, images = rng.normal(size=(5, 3)), rng.normal(0.1, 0.01, (5, 16, 16, 1))
    layer = OODScore(3, asinh_scale=0.01, frame=2, feature_median=2.0, pixel_median=3.0,
                     threshold=1.5)
    layer([f, images])
    a = rng.normal(size=(3, 3))
    precision = a @ a.T + np.eye(3)
    b = rng.normal(size=(4, 4))
    pix_precision = b @ b.T + np.eye(4)
    mean, pix_mean = rng.normal(size=3), rng.normal(size=4)
    layer.set_statistics(mean, np.linalg.cholesky(precision), pix_mean,
                         np.linalg.cholesky(pix_precision))
    out = {k: np.asarray(v) for k, v in layer([f, images]).items()}
    d_f = np.einsum("bi,ij,bj->b", f - mean, precision, f - mean)
    stats = np.asarray(pixel_statistics(images, 0.01, 2)) - pix_mean
    d_p = np.einsum("bi,ij,bj->b", stats, pix_precision, stats)
    np.testing.assert_allclose(out["ood_score"], np.maximum(d_f / 2.0, d_p / 3.0), rtol=1e-4)
    np.testing.assert_array_equal(out["ood_flag"], (out["ood_score"] > 1.5).astype(np.float32))
    with pytest.raises(ValueError, match="threshold: must be finite and positive"):
        OODScore(3, threshold=0.0)


def test_fit_flags_the_validation_quantile_and_survives_saving(tiny_data, tmp_path):
    scored, report = ood.fit(_model(), tiny_data, "deeplense_lensing/euclid_axion_tiny",
                             train_examples=24, quantile=0.75)
    assert report["train_examples"] == 24 and report["test_examples"] == 8
    assert report["flagged"]["validation (in distribution)"] == pytest.approx(0.25, abs=0.13)
    assert sorted(scored.output) == ["log10_m_axion", "log10_m_axion_std", "ood_flag",
                                     "ood_score"]
    path = str(tmp_path / "m.keras")
    scored.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    x = np.random.default_rng(1).normal(0.05, 0.01, (3, 64, 64, 1)).astype(np.float32)
    for key, value in scored(x).items():
        np.testing.assert_allclose(np.asarray(reloaded(x)[key]), np.asarray(value), rtol=1e-5)
    assert reloaded.get_layer("ood_score").threshold == pytest.approx(report["threshold"])
    again, _ = ood.fit(reloaded, tiny_data, "deeplense_lensing/euclid_axion_tiny",
                       train_examples=24)  # the old score is replaced, not stacked
    assert sorted(again.output) == sorted(scored.output)
    rates = ood.shifted_flag_rates(scored, "euclid_axion", count=2)
    assert set(rates) == {"lens_light", "wider_psf", "neighbours", "cosmic_rays",
                          "other instrument (hst_axion)"}


def test_perturbations_do_what_they_say():
    euclid = instruments.get("euclid")
    recipe = recipes.get("model_ii_axion")
    sim = recipe.simulator(noise=False)
    from deeplense_tf.simulation.simulator import example_rng

    lens = sim.simulate(example_rng(0, 2, 0), keep_noiseless=True)
    light = perturbations.lens_light(euclid, lens.params, np.random.default_rng(0), magnitude=19.0,
                                     r_eff_over_theta_e=0.2, n=2.0)
    # Total flux of a magnitude-19 galaxy at the zero point (a compact one: little of it
    # falls off the 6.5" field).
    expected = 10 ** (-0.4 * (19.0 - euclid.magnitude_zero_point))
    assert 0.95 * expected < light.sum() <= expected
    assert np.unravel_index(np.argmax(light), light.shape) in [(31, 31), (31, 32), (32, 31), (32, 32)]
    wide = perturbations.wider_psf(lens.noiseless, euclid, factor=2.0)
    assert wide.sum() == pytest.approx(lens.noiseless.sum(), rel=1e-3)
    assert wide.max() < lens.noiseless.max()
    rays = perturbations.cosmic_rays(np.zeros((64, 64)), 0.01, np.random.default_rng(2), count=2)
    assert rays.max() >= 0.5 and (rays > 0).sum() >= 3
    for kind in perturbations.KINDS:
        a, params = perturbations.perturbed(recipe, kind, 1, 5)
        b, _ = perturbations.perturbed(recipe, kind, 1, 5)
        assert a.shape == (64, 64) and np.array_equal(a, b) and math.isfinite(params["theta_e"])
    with pytest.raises(ValueError, match="kind: expected one of"):
        perturbations.perturbed(recipe, "fog", 1, 5)
    with pytest.raises(ValueError, match="factor >= 1"):
        perturbations.wider_psf(lens.noiseless, euclid, factor=0.5)
