"""Time to accuracy: every epoch's checkpoint kept, evaluated, timed by itself."""

import os

import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf import evaluate, training
from deeplense_tf.benchmarks import time_to_accuracy

DATASET = "deeplense_lensing/euclid_axion_tiny"


def test_each_epoch_evaluated_with_its_own_training_time(tiny_data, tmp_path):
    run = str(tmp_path / "run")
    config = training.TrainConfig(data_dir=tiny_data, dataset=DATASET, targets=["log10_m_axion"],
                                  model="resnet18", variant="test", epochs=3, batch_size=8,
                                  keep_epoch_checkpoints=True, checkpoint_every_steps=2)
    summary = training.train_and_evaluate(config, run)
    kept = time_to_accuracy.epoch_checkpoints(os.path.join(run, "epoch_checkpoints"))
    assert [c["epoch"] for c in kept] == [1, 2, 3]
    # The rolling checkpoints/ also holds mid-epoch saves: only epoch ends are taken.
    rolling = time_to_accuracy.epoch_checkpoints(os.path.join(run, "checkpoints"))
    assert [c["epoch"] for c in rolling] == [3]

    result = time_to_accuracy.measure(run, tiny_data)
    minutes = [r["train_minutes"] for r in result["rows"]]
    assert minutes == sorted(minutes) and minutes[0] > 0
    assert minutes[-1] == pytest.approx(summary["train_seconds"] / 60, abs=0.01)
    best = result["rows"][summary["best_epoch"]]["log10_m_axion"]
    shipped = evaluate.evaluate(tf.keras.models.load_model(os.path.join(run, "model.keras")),
                                tiny_data, DATASET)["targets"]["log10_m_axion"]
    np.testing.assert_allclose(best["mae"], shipped["model"]["mae"], rtol=1e-5)
    text = time_to_accuracy.table(result)
    assert "| 3 |" in text and f"{best['mae']:.4f}" in text

    only = time_to_accuracy.measure(run, tiny_data, epochs=[2])
    assert [r["epoch"] for r in only["rows"]] == [2]
    with pytest.raises(ValueError, match=r"no end-of-epoch checkpoint for epoch\(s\) \[7\]"):
        time_to_accuracy.measure(run, tiny_data, epochs=[7])


def test_what_is_not_a_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json; not a training run"):
        time_to_accuracy.measure(str(tmp_path), "DATA")
    foreign = tmp_path / "foreign"
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(foreign / "ckpt"))
    with pytest.raises(ValueError, match="ckpt is not a checkpoint of deeplense_tf.train"):
        time_to_accuracy.epoch_checkpoints(str(foreign))
