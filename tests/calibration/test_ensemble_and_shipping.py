"""Deep ensembles as one model, and replacing a shipped model by its calibrated copy."""

import json

import numpy as np
import pytest

from deeplense_tf import ensemble, models, package_model, pretrained


def _tiny(seed):
    model = models.build_regressor("vit", variant="test", image_shape=(16, 16, 1),
                                   targets=["log10_m_axion"], target_mean=[-23.0],
                                   target_std=[0.6])
    dense = model.get_layer("head_dense")
    rng = np.random.default_rng(seed)
    dense.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in dense.get_weights()])
    return model


def test_ensemble_averages_means_and_mixes_variances():
    a, b = _tiny(0), _tiny(1)
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
