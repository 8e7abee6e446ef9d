"""Post-hoc interval calibration: the fit, the layer that carries it, evaluation, export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf import calibration, evaluate, models
from deeplense_tf.models.layers import RegressionOutput


def _model(head="gaussian"):
    model = models.build_regressor("vit", variant="test", image_shape=(16, 16, 1),
                                   targets=["log10_m_axion"], head=head, target_mean=[-23.0],
                                   target_std=[0.6])
    dense = model.get_layer("head_dense")
    rng = np.random.default_rng(0)
    dense.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in dense.get_weights()])
    return model


def _images(n=4):
    return np.random.default_rng(1).gamma(2.0, 1.0, (n, 16, 16, 1)).astype("float32")


def test_fit_recovers_the_quantiles_of_heavy_tailed_errors():
    """Laplace-distributed errors with a Gaussian sigma: Gaussian intervals are too wide at
    68% and too narrow at 99%; the fitted table makes every level right."""
    rng = np.random.default_rng(0)
    n = 20000
    truth = rng.uniform(-24, -22, n)
    sigma = rng.uniform(0.05, 0.3, n)
    mean = truth + sigma * rng.laplace(0, 1 / np.sqrt(2), n)
    table = calibration.fit(truth[: n // 2], mean[: n // 2], sigma[: n // 2])
    gaussian = evaluate.gaussian_metrics(truth[n // 2:], mean[n // 2:], sigma[n // 2:])
    calibrated = evaluate.gaussian_metrics(truth[n // 2:], mean[n // 2:], sigma[n // 2:], table)
    assert gaussian["max_calibration_deviation"] > 0.04
    assert calibrated["max_calibration_deviation"] < 0.02
    assert calibrated["coverage_68"] == pytest.approx(0.6827, abs=0.015)
    assert calibrated["coverage_95"] == pytest.approx(0.95, abs=0.01)
    assert np.all(np.diff(table["half_widths"]) >= 0)


def test_calibrated_model_outputs_intervals_and_survives_saving(tmp_path):
    model = _model()
    table = {"levels": [0.3, 0.682689, 0.9, 0.95, 0.99], "half_widths": [0.4, 1.1, 1.7, 2.0, 2.9]}
    calibrated = calibration.with_calibration(model, {"log10_m_axion": table})
    x = _images()
    raw, out = model(x), calibrated(x)
    assert sorted(out) == sorted(["log10_m_axion", "log10_m_axion_std", "log10_m_axion_q16",
                                  "log10_m_axion_q84", "log10_m_axion_q025", "log10_m_axion_q975"])
    np.testing.assert_allclose(out["log10_m_axion"], raw["log10_m_axion"], rtol=1e-6)
    np.testing.assert_allclose(out["log10_m_axion_std"], 1.1 * raw["log10_m_axion_std"], rtol=1e-5)
    k68 = np.interp(0.68, [0, 0.3, 0.682689], [0, 0.4, 1.1])
    np.testing.assert_allclose(out["log10_m_axion_q84"] - out["log10_m_axion"],
                               k68 * raw["log10_m_axion_std"], rtol=1e-4)
    np.testing.assert_allclose(out["log10_m_axion"] - out["log10_m_axion_q025"],
                               2.0 * raw["log10_m_axion_std"], rtol=1e-4)
    path = str(tmp_path / "m.keras")
    calibration.save_atomic(calibrated, path)
    reloaded = keras.saving.load_model(path, compile=False)
    for key, value in reloaded(x).items():
        np.testing.assert_allclose(value, out[key], rtol=1e-6, err_msg=key)
    assert calibration.interval_calibration(reloaded)["log10_m_axion"]["levels"] == table["levels"]
    plain = calibration.with_calibration(reloaded, None)
    np.testing.assert_allclose(plain(x)["log10_m_axion_std"], raw["log10_m_axion_std"], rtol=1e-6)
    sigma = calibration.raw_sigma(reloaded, {k: v.numpy() for k, v in out.items()},
                                  "log10_m_axion")
    np.testing.assert_allclose(sigma, raw["log10_m_axion_std"], rtol=1e-5)


def test_export_carries_the_calibrated_outputs(tmp_path):
    from deeplense_tf import export

    calibrated = calibration.with_calibration(_model(), {"log10_m_axion": {
        "levels": [0.5, 0.682689, 0.95], "half_widths": [0.7, 1.0, 2.1]}})
    path = tmp_path / "m.keras"
    calibration.save_atomic(calibrated, str(path))
    version_dir = export.export_saved_model(str(path), str(tmp_path / "exports"), "axion")
    served = tf.saved_model.load(version_dir).signatures["serving_default"]
    out = served(image=tf.constant(_images(2)))
    for key, value in calibrated(_images(2)).items():
        np.testing.assert_allclose(out[key].numpy(), np.asarray(value), rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("table, words", [
    ({"levels": [0.5, 0.4, 0.95], "half_widths": [1, 1, 2]}, "increasing levels"),
    ({"levels": [0.5, 0.68, 0.95], "half_widths": [1, 0.9, 2]}, "non-decreasing"),
    ({"levels": [0.5, 0.68], "half_widths": [1, 1.2]}, "must reach 0.95"),
])
def test_bad_tables_are_refused(table, words):
    with pytest.raises(ValueError, match=words):
        RegressionOutput(["t"], [0.0], [1.0], interval_calibration={"t": table})
    with pytest.raises(ValueError, match="not a target"):
        RegressionOutput(["t"], [0.0], [1.0], interval_calibration={"u": {
            "levels": [0.5, 0.95], "half_widths": [1, 2]}})


def test_calibrating_on_the_test_split_or_a_point_head_is_refused(tiny_data):
    dataset = "deeplense_lensing/euclid_axion_tiny"
    with pytest.raises(ValueError, match="--split=test"):
        calibration.calibrate(_model(), tiny_data, dataset, split="test")
    with pytest.raises(ValueError, match="point head"):
        calibration.calibrate(_model("point"), tiny_data, dataset)
    with pytest.raises(ValueError, match="at least 20 examples"):
        calibration.fit([0.0], [0.0], [1.0])
