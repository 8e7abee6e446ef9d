"""The full-covariance (Cholesky) Gaussian head: positive definite for any input, the
prior when untrained, its NLL equal to scipy's multivariate normal, trainable end to
end, and evaluated by joint ellipsoid coverage."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from deeplense_tf import evaluate, training
from deeplense_tf.models.layers import RegressionOutput, target_pairs

TARGETS = ["a", "b", "c"]


def _layer(**kwargs):
    return RegressionOutput(TARGETS, [1.0, -2.0, 0.5], [2.0, 0.5, 1.5], head="gaussian_full",
                            **kwargs)


def _covariance(outputs):
    return evaluate.covariance_matrices({k: np.asarray(v) for k, v in outputs.items()}, TARGETS)


def test_untrained_head_predicts_the_prior_and_any_input_is_positive_definite():
    layer = _layer()
    assert layer.units == 3 + 3 + 3
    prior = layer(np.zeros((2, 9), np.float32))
    np.testing.assert_allclose(prior["a"], 1.0)
    np.testing.assert_allclose(prior["b_std"], 0.5, rtol=1e-6)
    for _, _, key in target_pairs(TARGETS):
        np.testing.assert_allclose(prior[key], 0.0, atol=1e-7)
    raw = np.random.default_rng(0).normal(0, 3, (500, 9)).astype(np.float32)
    cov = _covariance(layer(raw))
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    corr = np.stack([np.asarray(layer(raw)[k]) for _, _, k in target_pairs(TARGETS)])
    assert np.all(np.abs(corr) < 1)


def test_covariance_is_the_cholesky_product_of_the_raw_outputs():
    raw = np.array([[0, 0, 0, np.log(4.0), 0.0, np.log(0.25), 0.5, -1.0, 2.0]], np.float32)
    out = _layer(log_var_bound=1e4)(raw)  # tanh(x / 1e4) * 1e4 = x to 1e-9
    # diag(L) = (2, 1, 0.5); below it d_i * 10 tanh(raw / 10), in standardized units.
    off = lambda d, raw: d * 10 * np.tanh(raw / 10)  # noqa: E731
    chol = np.array([[2.0, 0, 0], [off(1.0, 0.5), 1.0, 0], [off(0.5, -1.0), off(0.5, 2.0), 0.5]])
    expected = chol @ chol.T * np.outer([2.0, 0.5, 1.5], [2.0, 0.5, 1.5])
    np.testing.assert_allclose(_covariance(out)[0], expected, rtol=1e-5)


def test_loss_is_the_multivariate_normal_nll():
    model = keras.Sequential([keras.Input((9,)), _layer(name="regression_output")])
    raw = np.random.default_rng(1).normal(0, 0.7, (6, 9)).astype(np.float32)
    outputs = model(raw)
    truth = {t: np.random.default_rng(2 + i).normal(0, 1, 6).astype(np.float32)
             for i, t in enumerate(TARGETS)}
    loss = training.loss_per_example("gaussian_full_nll", model, truth, outputs).numpy()
    cov = _covariance(outputs)
    scale = np.array([2.0, 0.5, 1.5])
    for n in range(6):
        x = np.array([truth[t][n] for t in TARGETS])
        mean = np.array([float(outputs[t][n]) for t in TARGETS])
        # In standardized units: the physical log-density plus log prod(std).
        logpdf = stats.multivariate_normal(mean, cov[n]).logpdf(x) + np.log(scale).sum()
        expected = -(logpdf + 1.5 * np.log(2 * np.pi)) / 3
        assert loss[n] == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_one_target_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="covariance of several targets"):
        RegressionOutput(["a"], [0.0], [1.0], head="gaussian_full")


def test_joint_metrics_cover_at_the_nominal_rate_for_a_calibrated_covariance():
    rng = np.random.default_rng(3)
    n = 4000
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    errors = rng.multivariate_normal([0, 0], cov, n)
    outputs = {"a": errors[:, 0], "b": errors[:, 1], "a_std": np.full(n, 1.0),
               "b_std": np.full(n, np.sqrt(0.5)), "corr__a__b": np.full(n, 0.6 / np.sqrt(0.5))}
    joint = evaluate.joint_metrics({"a": np.zeros(n), "b": np.zeros(n)}, outputs, ["a", "b"])
    assert joint["coverage_68"] == pytest.approx(0.68, abs=0.025)
    assert joint["coverage_95"] == pytest.approx(0.95, abs=0.012)
    pair = joint["correlations"]["a__b"]
    assert pair["of_the_errors"] == pytest.approx(pair["predicted_median"], abs=0.05)


def test_training_and_evaluating_a_joint_head(tiny_data, tmp_path):
    config = training.TrainConfig(
        data_dir=tiny_data, dataset="deeplense_lensing/euclid_axion_tiny",
        targets=["log10_m_axion", "theta_e"], model="resnet18", variant="test", epochs=1,
        batch_size=4, log_every_steps=1, warmup_epochs=0.0, train_steps=2,
        loss="gaussian_full_nll")
    training.train_and_evaluate(config, str(tmp_path / "run"))
    model = keras.saving.load_model(str(tmp_path / "run" / "model.keras"))
    assert "corr__log10_m_axion__theta_e" in model.output
    results = evaluate.run(str(tmp_path / "run" / "model.keras"), tiny_data,
                           "deeplense_lensing/euclid_axion_tiny", str(tmp_path / "report"))
    assert results["joint"]["count"] == 8
    assert "Joint (full covariance)" in (tmp_path / "report" / "report.md").read_text()
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert 0.0 <= saved["joint"]["coverage_95"] <= 1.0
    # An interval calibration widens the marginal `_std` outputs; the joint ellipses stay
    # the head's own Gaussian (the calibration is undone for them).
    from deeplense_tf import calibration

    tables = {t: {"levels": [0.5, calibration.ONE_SIGMA_LEVEL, 0.95],
                  "half_widths": [1.5, 3.0, 6.0]} for t in ("log10_m_axion", "theta_e")}
    widened = calibration.with_calibration(model, tables)
    again = evaluate.evaluate(widened, tiny_data, "deeplense_lensing/euclid_axion_tiny")
    assert again["joint"]["nll"] == pytest.approx(results["joint"]["nll"], rel=1e-5)
    assert again["targets"]["theta_e"]["gaussian"]["coverage_68"] >= \
        results["targets"]["theta_e"]["gaussian"]["coverage_68"]
    # SavedModel and predict tables carry the correlation, named.
    from deeplense_tf import export, predict

    version = export.export_saved_model(str(tmp_path / "run" / "model.keras"),
                                        str(tmp_path / "exports"), "joint")
    images = np.random.default_rng(0).normal(0.5, 0.2, (3, 64, 64)).astype(np.float32)
    table = predict.predict_images(images, predict.Predictor(version))
    corr = np.asarray(table["corr__log10_m_axion__theta_e"], float)
    assert corr.shape == (3,) and np.all(np.abs(corr) < 1)
    assert {"log10_m_axion_std", "theta_e_std"} <= set(table.colnames)
    with pytest.raises(ValueError, match="covariance head needs two or more"):
        training.TrainConfig(**dict(config.__dict__, targets=["theta_e"])).validate()
