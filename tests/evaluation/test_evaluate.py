"""Evaluation: metric definitions, calibration verdicts, TTA, the report end to end."""

import json

import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf import evaluate, training

DATASET = "deeplense_lensing/euclid_axion_tiny"


def test_point_metrics_match_their_definitions():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    p = np.array([0.5, 1.0, 1.0, 3.5])
    m = evaluate.point_metrics(y, p)
    assert m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 0.25) / 4))
    assert m["median_absolute_error"] == pytest.approx(0.5)
    errors = np.abs(np.asarray(p, float) - np.asarray(y, float))
    for d, share in m["fraction_within"].items():
        assert share == pytest.approx(np.mean(errors <= float(d)))
    assert m["bias"] == pytest.approx(0.0)
    assert m["r2"] == pytest.approx(1 - 1.5 / 5.0)


@pytest.mark.parametrize("scale, words", [(1.0, "calibrated"), (0.5, "over-confident"),
                                          (2.0, "under-confident")])
def test_calibration_verdicts(scale, words):
    rng = np.random.default_rng(0)
    truth = rng.uniform(-24, -22, 20000)
    sigma = np.full_like(truth, 0.2)
    mean = truth + rng.normal(0, 0.2, truth.shape)
    g = evaluate.gaussian_metrics(truth, mean, sigma * scale)
    assert g["verdict"].startswith(words)
    if scale == 1.0:
        assert g["coverage_68"] == pytest.approx(0.6827, abs=0.01)
        assert g["coverage_95"] == pytest.approx(0.95, abs=0.01)
        np.testing.assert_allclose(g["calibration"]["empirical"], g["calibration"]["nominal"],
                                   atol=0.015)


def test_tta_averages_the_eight_views_and_mixes_the_variances():
    def model(images, training=False):
        corner = images[:, 0, 0, 0]  # not rotation invariant: a different pixel per view
        return {"t": corner, "t_std": tf.ones_like(corner)}

    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = evaluate._tta_predict(model)(tf.constant(image))
    corners = [0.0, 3.0, 12.0, 15.0]  # each corner is seen twice over the 8 views
    assert float(out["t"][0]) == pytest.approx(np.mean(corners))
    assert float(out["t_std"][0]) == pytest.approx(np.sqrt(1 + np.var(corners)))


def test_report_on_the_whole_split(tiny_data, tmp_path):
    config = training.TrainConfig(data_dir=tiny_data, dataset=DATASET, targets=["log10_m_axion"],
                                  model="resnet18", variant="test", train_steps=2, batch_size=4)
    training.train_and_evaluate(config, str(tmp_path / "run"))
    results = evaluate.run(str(tmp_path / "run" / "model.keras"), tiny_data, DATASET,
                           str(tmp_path / "eval"), tta=True)
    stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    report = stored["targets"]["log10_m_axion"]
    assert stored["num_examples"] == 8 and report["model"]["count"] == 8
    assert sum(r["count"] for r in report["binned"]) == 8
    assert {"coverage_68", "nll", "calibration"} <= set(report["gaussian"])
    assert "tta" in report
    text = (tmp_path / "eval" / "report.md").read_text()
    for figure in ("predicted_vs_true", "residual_vs_true", "binned_mae", "calibration"):
        assert (tmp_path / "eval" / f"log10_m_axion_{figure}.png").exists()
        assert f"log10_m_axion_{figure}.png" in text
    assert "constant" in evaluate.headline(results)
    assert any((tmp_path / "eval" / "tensorboard").iterdir())


def test_missing_model_and_wrong_image_size_are_named(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.keras: neither an existing .keras file or SavedModel directory nor a shipped model"):
        evaluate.run(str(tmp_path / "nowhere.keras"), tiny_data, DATASET, str(tmp_path / "o"))
    from deeplense_tf import models

    model = models.build_regressor("vit", variant="test", image_shape=(32, 32, 1),
                                   targets=["log10_m_axion"], target_mean=[-23], target_std=[0.6])
    with pytest.raises(ValueError, match=r"images of shape \(64, 64, 1\), but the model takes "
                                         r"\(32, 32, 1\)"):
        evaluate.evaluate(model, tiny_data, DATASET)
