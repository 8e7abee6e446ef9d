"""`train --init_from`: a fine-tuned run starts as its parent's exact function, records its
parent, can freeze the backbone, and refuses a parent that does not fit, before any work."""

import dataclasses
import json
import os

import numpy as np
import pytest

from deeplense_tf import training, transfer

DATASET = "deeplense_lensing/euclid_axion_tiny"


def _config(data_dir, **kwargs):
    base = dict(data_dir=data_dir, dataset=DATASET, targets=["log10_m_axion"], model="resnet18",
                variant="test", epochs=1, batch_size=4, log_every_steps=1, warmup_epochs=0.0)
    base.update(kwargs)
    return training.TrainConfig(**base)


@pytest.fixture(scope="module")
def parent_run(tiny_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("parent")
    training.train_and_evaluate(_config(tiny_data, train_steps=2, learning_rate=3e-3), str(workdir))
    return str(workdir / "model.keras")


def test_the_child_starts_as_the_parents_exact_function(tiny_data, parent_run):
    from deeplense_tf import input_pipeline

    parent = transfer.describe_parent(parent_run)
    assert parent.dataset == DATASET and parent.instrument == "euclid"
    assert parent.targets == ["log10_m_axion"] and parent.image_shape == (64, 64, 1)
    pipeline = input_pipeline.Pipeline(tiny_data, DATASET, ["log10_m_axion"])
    config = _config(tiny_data)
    child = training.build_model(config, transfer.parent_statistics(parent, 24), pipeline.image_shape)
    assert transfer.transfer_weights(parent, child) == len(child.weights)
    images = np.random.default_rng(0).normal(0.1, 0.05, (4, 64, 64, 1)).astype("float32")
    want, got = parent.model(images), child(images)
    for key in ("log10_m_axion", "log10_m_axion_std"):
        np.testing.assert_array_equal(np.asarray(want[key]), np.asarray(got[key]))


def test_fine_tuning_records_its_parent_and_freezes_the_backbone(tiny_data, parent_run, tmp_path):
    summary = training.train_and_evaluate(
        _config(tiny_data, train_steps=2, init_from=parent_run, freeze="backbone",
                learning_rate=1e-2), str(tmp_path))
    assert summary["completed"]
    record = json.loads((tmp_path / "parent.json").read_text())
    assert record["file"] == "model.keras" and record["dataset"] == DATASET
    assert len(record["sha256"]) == 64
    flagfile = (tmp_path / "flags.cfg").read_text()
    assert f"--init_from={parent_run}" in flagfile and "--freeze=backbone" in flagfile
    assert f"# Parent model (--init_from): model.keras, sha256 {record['sha256']}" in flagfile
    parent = transfer.describe_parent(parent_run).model
    child = transfer.describe_parent(str(tmp_path / "model.keras")).model
    before = {w.path: np.asarray(w) for w in parent.weights}
    after = {w.path: np.asarray(w) for w in child.weights}
    backbone = [w.path for w in child.get_layer("backbone").weights]
    assert backbone and all(np.array_equal(before[p], after[p]) for p in backbone)
    assert not np.array_equal(before["head_dense/kernel"], after["head_dense/kernel"])


def test_a_parent_that_does_not_fit_is_refused_before_any_work(tiny_data, parent_run, tmp_path):
    with pytest.raises(ValueError, match=r"the model predicts \['log10_m_axion'\], this run's "
                                         r"--targets are \['theta_e'\]"):
        training.train_and_evaluate(_config(tiny_data, init_from=parent_run, targets=["theta_e"]),
                                    str(tmp_path))
    assert not os.path.exists(tmp_path / "flags.cfg")
    with pytest.raises(ValueError, match=r"is not the parent's: .* weights missing"):
        training.train_and_evaluate(_config(tiny_data, init_from=parent_run, model="vit"),
                                    str(tmp_path / "vit"))
    with pytest.raises(FileNotFoundError, match=r"--init_from=nowhere.keras: neither"):
        training.train_and_evaluate(_config(tiny_data, init_from="nowhere.keras"), str(tmp_path))
    with pytest.raises(ValueError, match=r"--freeze=backbone needs --init_from"):
        training.train_and_evaluate(_config(tiny_data, freeze="backbone"), str(tmp_path))


def test_shape_and_instrument_mismatches_are_named(parent_run):
    parent = transfer.describe_parent(parent_run)
    with pytest.raises(ValueError, match=r"takes images of shape \(64, 64, 1\), the data set "
                                         r".* has \(150, 150, 1\)"):
        transfer.check_compatible(parent, (150, 150, 1), DATASET, ["log10_m_axion"])
    hst = dataclasses.replace(parent, instrument="hst")
    with pytest.raises(ValueError, match=r"trained on 'hst' images, the data set "
                                         r"deeplense_lensing/euclid_axion_tiny holds 'euclid'"):
        transfer.check_compatible(hst, (64, 64, 1), DATASET, ["log10_m_axion"])


def test_a_shipped_model_is_a_parent_by_name():
    from deeplense_tf import pretrained

    name = next(n for n in pretrained.list() if "euclid" in n)
    parent = transfer.describe_parent(f"pretrained:{name}")
    assert parent.shipped_name == name and parent.instrument == "euclid"
    assert parent.dataset == pretrained.info(name)["dataset"]


def test_new_targets_start_from_the_parents_backbone_with_a_new_head(tiny_data, parent_run,
                                                                      tmp_path):
    """--init_scope=backbone: the parent's normalization and backbone, copied exactly; a
    head at the prior of the new targets, scaled by the new data's statistics."""
    import keras

    from deeplense_tf import input_pipeline

    config = _config(tiny_data, init_from=parent_run, init_scope="backbone",
                     targets=["theta_e", "log10_m_axion"], train_steps=1, learning_rate=1e-9,
                     weight_decay=0.0)
    training.train_and_evaluate(config, str(tmp_path))
    parent = transfer.describe_parent(parent_run).model
    child = keras.saving.load_model(str(tmp_path / "model.keras"), compile=False)
    before = {w.path: np.asarray(w) for w in parent.weights}
    # Trainable weights moved by at most the 1e-9 learning rate (moving statistics of
    # normalization layers do move in a training step).
    copied = child.get_layer("backbone").trainable_weights
    assert copied
    for w in copied:
        np.testing.assert_allclose(np.asarray(w), before[w.path], atol=1e-6)
    assert child.get_layer("image_normalization").get_config()["asinh_scale"] == \
        parent.get_layer("image_normalization").get_config()["asinh_scale"]
    out = child.get_layer("regression_output")
    own = input_pipeline.Pipeline(tiny_data, DATASET, ["theta_e", "log10_m_axion"]).statistics()
    np.testing.assert_allclose(out.target_mean, own.target_mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(child.get_layer("head_dense").kernel), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"--init_scope=backbone needs --init_from"):
        _config(tiny_data, init_scope="backbone").validate()


def _hybrid(image_shape, **kwargs):
    from deeplense_tf import models

    base = dict(image_shape=image_shape, targets=["theta_e"], variant="test",
                normalization="asinh", asinh_scale=1.0, target_mean=[1.0], target_std=[0.2])
    base.update(kwargs)
    return models.build_regressor("hybrid", **base)


def test_position_embeddings_are_resampled_smoothly():
    """A linear ramp over a 4x4 grid stays (nearly) the same ramp on an 8x8 one, and a grid
    of the same size comes back unchanged."""
    side = 4
    y, x = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    ramp = np.stack([x.ravel(), y.ravel()], -1).astype(np.float32) / (side - 1)
    out = transfer.resample_position_embedding(ramp, 64)
    assert out.shape == (64, 2)
    grid = out.reshape(8, 8, 2)
    assert np.all(np.diff(grid[..., 0], axis=1) >= -1e-6)   # increasing in x, flat in y
    np.testing.assert_allclose(np.diff(grid[..., 0], axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(grid[..., 0].mean(), ramp[:, 0].mean(), atol=0.02)
    np.testing.assert_array_equal(transfer.resample_position_embedding(ramp, 16), ramp)
    with pytest.raises(ValueError, match=r"12 tokens cannot be resampled to 64: both grids"):
        transfer.resample_position_embedding(ramp[:12], 64)


def test_features_scope_carries_the_backbone_to_another_image_size(tmp_path):
    """--init_scope=features: every backbone weight of a 64 px parent copied into a 32 px
    model, the position embeddings resampled from its 16x16 token grid to 8x8; the head
    is new. Without the scope the size is refused, naming the scope."""
    parent_model = _hybrid((64, 64, 1))
    for w in parent_model.weights:
        w.assign(np.random.default_rng(len(w.path)).normal(0, 0.1, w.shape).astype("float32"))
    parent_model.save(tmp_path / "parent.keras")
    parent = transfer.describe_parent(str(tmp_path / "parent.keras"))
    with pytest.raises(ValueError, match=r"\(64, 64, 1\), the data set D has \(32, 32, 1\) "
                                         r"\(--init_scope=features carries"):
        transfer.check_compatible(parent, (32, 32, 1), "D", ["theta_e"], scope="backbone")
    transfer.check_compatible(parent, (32, 32, 1), "D", ["log10_sigma_sub"], scope="features")
    with pytest.raises(ValueError, match=r"takes 1-channel images, the data set D has 2"):
        transfer.check_compatible(parent, (32, 32, 2), "D", ["theta_e"], scope="features")
    child = _hybrid((32, 32, 1), targets=["log10_sigma_sub"], target_mean=[-1.5])
    with pytest.raises(ValueError, match=r"position_embedding/embedding \(64, 16\) vs parent "
                                         r"\(256, 16\)"):
        transfer.transfer_weights(parent, child, scope="backbone")
    head_before = np.asarray(child.get_layer("head_dense").kernel).copy()
    copied = transfer.transfer_weights(parent, child, scope="features")
    source = {w.path: np.asarray(w) for w in parent.model.weights}
    backbone = child.get_layer("backbone").weights
    assert copied == len(backbone) > 10
    for w in backbone:
        if w.path.endswith("position_embedding/embedding"):
            assert w.shape == (64, 16)
            np.testing.assert_allclose(
                np.asarray(w), transfer.resample_position_embedding(source[w.path], 64))
        else:
            np.testing.assert_array_equal(np.asarray(w), source[w.path])
    np.testing.assert_array_equal(np.asarray(child.get_layer("head_dense").kernel), head_before)


def test_features_scope_trains_with_the_datas_own_normalization(tiny_data, tmp_path):
    """Carried to another domain, the run normalizes by its own data's statistics, not the
    parent's (here a parent built for pixels 100x brighter)."""
    from deeplense_tf import input_pipeline

    parent = _hybrid((64, 64, 1), targets=["log10_m_axion"], target_mean=[-23.0],
                     asinh_scale=100.0)
    parent.save(tmp_path / "parent.keras")
    config = _config(tiny_data, model="hybrid", init_from=str(tmp_path / "parent.keras"),
                     init_scope="features", targets=["theta_e"], train_steps=1,
                     normalization="asinh")
    training.train_and_evaluate(config, str(tmp_path / "run"))
    child = transfer.describe_parent(str(tmp_path / "run" / "model.keras")).model
    own = input_pipeline.Pipeline(tiny_data, DATASET, ["theta_e"]).statistics()
    scale = child.get_layer("image_normalization").get_config()["asinh_scale"]
    np.testing.assert_allclose(scale, own.pixel_noise, rtol=1e-6)
    assert "--init_scope=features" in (tmp_path / "run" / "flags.cfg").read_text()
