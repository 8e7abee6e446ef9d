"""Deep ensembles as one model, and replacing a shipped model by its calibrated copy."""

import json

import keras
import numpy as np
import pytest

from deeplense_tf import calibration, ensemble, evaluate, models, ood, package_model, pretrained
from deeplense_tf import training
from deeplense_tf.models.layers import interval_half_width


def _tiny(seed, target_mean=-23.0, target_std=0.6):
    model = models.build_regressor("vit", variant="test", image_shape=(16, 16, 1),
                                   targets=["log10_m_axion"], target_mean=[target_mean],
                                   target_std=[target_std])
    dense = model.get_layer("head_dense")
    rng = np.random.default_rng(seed)
    dense.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in dense.get_weights()])
    return model


def test_ensemble_averages_means_and_mixes_variances():
    # Members trained on different target statistics still combine in physical units.
    a, b = _tiny(0), _tiny(1, target_mean=-22.9, target_std=0.5)
    x = np.random.default_rng(2).gamma(2.0, 1.0, (3, 16, 16, 1)).astype("float32")
    out, oa, ob = ensemble.build([a, b])(x), a(x), b(x)
    t = "log10_m_axion"
    np.testing.assert_allclose(out[t], (np.asarray(oa[t]) + np.asarray(ob[t])) / 2, rtol=1e-6)
    means = np.stack([oa[t], ob[t]])
    var = np.mean(np.stack([oa[t + "_std"], ob[t + "_std"]]) ** 2, 0) + np.var(means, 0)
    np.testing.assert_allclose(out[t + "_std"], np.sqrt(var), rtol=1e-5)
    assert models.target_names(ensemble.build([a, b])) == [t]
    other = models.build_regressor("vit", variant="test", image_shape=(16, 16, 1),
                                   targets=["einstein_radius"], target_mean=[1.2],
                                   target_std=[0.2])
    with pytest.raises(ValueError, match="same images and predict the same targets"):
        ensemble.build([a, other])
    with pytest.raises(ValueError, match="two or more members"):
        ensemble.build([a])


def test_an_ensemble_is_calibrated_scored_and_saved_like_one_model(tmp_path):
    a, b = _tiny(0), _tiny(1)
    t = "log10_m_axion"
    x = np.random.default_rng(2).gamma(2.0, 1.0, (3, 16, 16, 1)).astype("float32")
    e = ensemble.build([a, b])
    assert models.target_scaling(e) == models.target_scaling(a)
    # The OOD score reads the members' pooled features side by side.
    features = np.asarray(ood.feature_model(e)(x))
    np.testing.assert_allclose(features, np.concatenate(
        [np.asarray(ood.feature_model(m)(x)) for m in (a, b)], axis=1), rtol=1e-5)
    table = {"levels": [0.5, 0.6827, 0.96], "half_widths": [0.5, 1.5, 3.0]}
    calibrated = calibration.with_calibration(e, {t: table})
    out, raw = calibrated(x), e(x)
    np.testing.assert_allclose(out[t + "_std"], 1.5 * np.asarray(raw[t + "_std"]), rtol=1e-4)
    np.testing.assert_allclose(out[t + "_q84"] - out[t], np.asarray(raw[t + "_std"])
                               * interval_half_width(table, 0.68), rtol=1e-4)
    path = str(tmp_path / "e.keras")
    calibrated.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    for key, value in calibrated(x).items():
        np.testing.assert_allclose(np.asarray(loaded(x)[key]), np.asarray(value), rtol=1e-5)
    assert calibration.interval_calibration(loaded) == {t: calibration.interval_calibration(
        calibrated)[t]}
    full = models.build_regressor("vit", variant="test", image_shape=(16, 16, 1),
                                  targets=["log10_m_axion", "einstein_radius"],
                                  target_mean=[-23.0, 1.2], target_std=[0.6, 0.2],
                                  head="gaussian_full")
    with pytest.raises(ValueError, match="share a 'gaussian' or 'point' head"):
        ensemble.build([full, full])


def test_package_an_ensemble_of_two_runs(tiny_data, tmp_path):
    dataset = "deeplense_lensing/euclid_axion_tiny"
    runs = []
    for seed in (0, 1):
        config = training.TrainConfig(data_dir=tiny_data, dataset=dataset,
                                      targets=["log10_m_axion"], model="resnet18",
                                      variant="test", train_steps=2, batch_size=4, seed=seed)
        training.train_and_evaluate(config, str(tmp_path / f"run{seed}"))
        runs.append(str(tmp_path / f"run{seed}"))
    members = [keras.saving.load_model(f"{r}/model.keras", compile=False) for r in runs]
    scored, report = ood.fit(ensemble.build(members), tiny_data, dataset, train_examples=24)
    assert report["feature_dim"] == 2 * members[0].get_layer("head_pool").output.shape[-1]
    path = str(tmp_path / "ensemble.keras")
    calibration.save_atomic(scored, path)
    evaluate.run(path, tiny_data, dataset, str(tmp_path / "ev"))
    out = tmp_path / "shipped"
    out.mkdir()
    meta = package_model.package(",".join(runs), str(tmp_path / "ev"), "tiny_x2", str(out),
                                 model_path=path)
    assert [m["flags_differing"] for m in meta["ensemble_members"]] == [["--seed=0"],
                                                                        ["--seed=1"]]
    assert meta["steps"] == 4 and "ood_score" in meta["outputs"]
    card = (out / "tiny_x2.md").read_text()
    assert "A deep ensemble of 2 members" in card and "`--seed=1`" in card
    assert "--seed=0" in card.split("```")[1] and tiny_data not in card
    with pytest.raises(ValueError, match="a model of 2 member"):
        package_model.package(runs[0], str(tmp_path / "ev"), "x", str(out), model_path=path)
    with pytest.raises(ValueError, match="give --model=ENSEMBLE.keras"):
        package_model.package(",".join(runs), str(tmp_path / "ev"), "x", str(out))


def test_update_shipped_keeps_training_facts_and_requotes_the_card(tmp_path):
    name = "hybrid_model_ii_axion"
    meta = pretrained.info(name)
    metrics = {"dataset": meta["dataset"], "split": "test", "num_examples": 5000, "targets": {
        "log10_m_axion": {
            "model": dict(meta["test"]["log10_m_axion"]["model"], mae=0.1234),
            "constant_baseline": meta["test"]["log10_m_axion"]["constant_baseline"],
            "binned": []}}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    model_path = str(tmp_path / "m.keras")
    pretrained.load(name).save(model_path)
    out = tmp_path / "shipped"
    out.mkdir()
    new = package_model.update_shipped(name, model_path, str(tmp_path / "eval"),
                                       output_dir=str(out))
    assert new["train_seconds"] == meta["train_seconds"] and new["steps"] == meta["steps"]
    card = (out / f"{name}.md").read_text()
    assert "0.1234" in card and "--model=hybrid" in card
    with pytest.raises(ValueError, match="not the network shipped"):
        _tiny(0).save(str(tmp_path / "other.keras"))
        package_model.update_shipped(name, str(tmp_path / "other.keras"), str(tmp_path / "eval"),
                                     output_dir=str(out))


def test_update_shipped_without_a_model_requotes_only_an_evaluation_of_that_network(tmp_path):
    """A new floor for a shipped network: its card's numbers are requoted from an
    evaluation that reproduces its test metrics; any other evaluation is refused."""
    name = "hybrid_twin_model_ii_axion"
    meta = pretrained.info(name)
    entry = meta["test"]["log10_m_axion"]
    floor = dict(entry["floor"], floor_mae=0.0631, model_over_floor=entry["floor"]["model_mae"] / 0.0631)
    metrics = {"dataset": meta["dataset"], "split": "test", "num_examples": 5000, "targets": {
        "log10_m_axion": {"model": entry["model"], "constant_baseline": entry["constant_baseline"],
                          "gaussian": entry["gaussian"], "reference": floor, "binned": []}}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "shipped"
    out.mkdir()
    new = package_model.update_shipped(name, None, str(tmp_path / "eval"), output_dir=str(out))
    assert new["test"]["log10_m_axion"]["floor"]["floor_mae"] == 0.0631
    assert new["size_mb"] == meta["size_mb"] and new["steps"] == meta["steps"]
    assert not (out / f"{name}.keras").exists()  # the network itself is untouched
    assert "0.0631" in (out / f"{name}.md").read_text()
    metrics["targets"]["log10_m_axion"]["model"] = dict(entry["model"], mae=entry["model"]["mae"] + 1e-3)
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="not an evaluation of the shipped network"):
        package_model.update_shipped(name, None, str(tmp_path / "eval"), output_dir=str(out))
    metrics["targets"]["log10_m_axion"]["model"] = entry["model"]
    metrics["targets"]["log10_m_axion"]["tta"] = {"model": entry["model"]}
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="evaluate without --tta"):
        package_model.update_shipped(name, None, str(tmp_path / "eval"), output_dir=str(out))
