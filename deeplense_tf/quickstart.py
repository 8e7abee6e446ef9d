r"""The main job on an embedded default, end to end, in minutes on a laptop CPU.

  python -m deeplense_tf.quickstart --workdir=quickstart_run

1. simulates a small DeepLense Model II axion data set (3,000 / 500 / 1,000 images),
2. trains a small ResNet with a Gaussian head on it (log10 m_a with uncertainties),

and prints where everything is. Every step is also a command of its own; the printed
lines say which. Re-running resumes or reuses what is already there.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from deeplense_tf import build_dataset, training

_WORKDIR = flags.DEFINE_string("workdir", "quickstart_run", "Where data, runs and reports go.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 3000, "Simulated training images.")
_EPOCHS = flags.DEFINE_integer("epochs", 6, "Training epochs.")

CONFIG = "model_ii_axion"


def default_train_config(data_dir: str, dataset: str, epochs: int) -> training.TrainConfig:
    """A ResNet-18 at width 16 with a stride-2 stem: small enough for a laptop CPU."""
    return training.TrainConfig(
        data_dir=data_dir, dataset=dataset, targets=["log10_m_axion"], model="resnet18",
        variant="S", model_overrides={"width": 16, "stem": "s2"}, loss="gaussian_nll",
        epochs=epochs, batch_size=64, learning_rate=2e-3, weight_decay=0.05, warmup_epochs=0.5,
        log_every_steps=10)


def run(workdir: str, train_size: int = 3000, epochs: int = 6) -> dict:
    data_dir = os.path.join(workdir, "data")
    t0 = time.perf_counter()
    builder = build_dataset.build(CONFIG, data_dir, train_size=train_size, validation_size=500,
                                  test_size=1000)
    dataset = f"deeplense_lensing/{builder.builder_config.name}"
    print(f"[1/2] data set: {json.dumps(build_dataset.summary(builder)['splits'])} in "
          f"{builder.data_dir} ({time.perf_counter() - t0:.0f} s)\n"
          f"      command: python -m deeplense_tf.build_dataset --config={CONFIG} "
          f"--data_dir={data_dir} --train_size={train_size} --validation_size=500 --test_size=1000")

    run_dir = os.path.join(workdir, "train")
    config = default_train_config(data_dir, dataset, epochs)
    t0 = time.perf_counter()
    summary = training.train_and_evaluate(config, run_dir)
    print(f"[2/2] trained {config.model} (width 16) for {summary['steps']} steps "
          f"({time.perf_counter() - t0:.0f} s): best validation loss "
          f"{summary['best_validation_loss']:.3f} at epoch {summary['best_epoch']}\n"
          f"      model: {os.path.join(run_dir, 'model.keras')}\n"
          f"      TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}\n"
          f"      command: {training.command_line(config, run_dir)}")
    return {"data": build_dataset.summary(builder), "train": summary}


def main(argv):
    del argv
    run(_WORKDIR.value, _TRAIN_SIZE.value, _EPOCHS.value)


if __name__ == "__main__":
    app.run(main)
