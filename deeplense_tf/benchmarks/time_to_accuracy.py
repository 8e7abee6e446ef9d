r"""Time to accuracy: a run's test metrics after each epoch against its training time.

  python -m deeplense_tf.train --flagfile=configs/CONFIG.cfg --data_dir=DATA --workdir=RUN \
      --keep_epoch_checkpoints
  python -m deeplense_tf.benchmarks.time_to_accuracy --workdir=RUN --data_dir=DATA \
      --output_dir=OUT [--split=test] [--epochs=1,2,4,8,16,24] [--checkpoint_dir=DIR]

Reads the epoch-boundary checkpoints of RUN (`RUN/epoch_checkpoints` by default; any
directory of the run's checkpoints works, e.g. copies of `RUN/checkpoints` taken during
training: those that fall on an epoch boundary are used), rebuilds the run's model from
its `config.json` and `statistics.json`, and evaluates each on `--split` of the run's
data set. The training time is what the checkpoint itself recorded (`train_seconds`:
wall-clock seconds of the run up to that checkpoint, each epoch's validation included,
summed over restarts), so the table says how long this machine took to reach each
accuracy. The
coverage is the network's own (before any post-hoc calibration). Prints a table and
writes `time_to_accuracy.json`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

from absl import app, flags

_VARIABLES = ("epoch", "step_in_epoch", "train_seconds")


def epoch_checkpoints(checkpoint_dir: str) -> list[dict]:
    """[{"path", "epoch", "train_seconds"}] of the checkpoints in `checkpoint_dir` that
    were written at the end of an epoch, one per epoch, in epoch order."""
    import tensorflow as tf

    found = {}
    for index in sorted(glob.glob(os.path.join(checkpoint_dir, "*.index"))):
        path = index[: -len(".index")]
        reader = tf.train.load_checkpoint(path)
        try:
            values = {name: reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")
                      for name in _VARIABLES}
        except (tf.errors.NotFoundError, ValueError):
            raise ValueError(f"--checkpoint_dir={checkpoint_dir}: {os.path.basename(path)} is "
                             "not a checkpoint of deeplense_tf.train (no epoch, step_in_epoch "
                             "or train_seconds)") from None
        if int(values["step_in_epoch"]) == 0 and int(values["epoch"]) >= 1:
            found.setdefault(int(values["epoch"]), {
                "path": path, "epoch": int(values["epoch"]),
                "train_seconds": float(values["train_seconds"])})
    return [found[k] for k in sorted(found)]


def measure(workdir: str, data_dir: str, split: str = "test", epochs=None,
            checkpoint_dir: str | None = None) -> dict:
    """Test metrics of each epoch checkpoint of the run in `workdir` (all of them, or
    those of `epochs`)."""
    import tensorflow as tf

    from deeplense_tf import evaluate, input_pipeline, training

    for name in ("config.json", "statistics.json"):
        if not os.path.exists(os.path.join(workdir, name)):
            raise FileNotFoundError(f"--workdir={workdir}: no {name}; not a training run")
    with open(os.path.join(workdir, "config.json")) as f:
        stored = json.load(f)
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    config = training.TrainConfig(**{k: v for k, v in stored.items() if k in fields})
    with open(os.path.join(workdir, "statistics.json")) as f:
        stats = input_pipeline.Statistics(**json.load(f))
    checkpoint_dir = checkpoint_dir or os.path.join(workdir, training.EPOCH_CHECKPOINTS)
    found = epoch_checkpoints(checkpoint_dir)
    if epochs:
        missing = sorted(set(epochs) - {c["epoch"] for c in found})
        if missing:
            raise ValueError(f"--epochs: no end-of-epoch checkpoint for epoch(s) {missing} in "
                             f"{checkpoint_dir} (it has {[c['epoch'] for c in found]})")
        found = [c for c in found if c["epoch"] in set(epochs)]
    if not found:
        raise ValueError(f"--checkpoint_dir={checkpoint_dir}: no end-of-epoch checkpoints (train "
                         "with --keep_epoch_checkpoints)")
    pipeline = input_pipeline.Pipeline(data_dir, config.dataset, config.targets, cache=False)
    model = training.build_model(config, stats, pipeline.image_shape)
    rows = []
    for entry in found:
        tf.train.Checkpoint(model=model).restore(entry["path"]).expect_partial()
        results = evaluate.evaluate(model, data_dir, config.dataset, split)
        row = {"epoch": entry["epoch"], "train_minutes": entry["train_seconds"] / 60.0}
        for target, report in results["targets"].items():
            row[target] = {"mae": report["model"]["mae"], "r2": report["model"]["r2"],
                           "coverage_68": (report.get("gaussian") or {}).get("coverage_68")}
        rows.append(row)
    return {"workdir": os.path.abspath(workdir), "dataset": config.dataset, "split": split,
            "targets": list(config.targets), "epochs_of_run": config.epochs,
            "machine": training.machine(), "rows": rows}


def table(result: dict) -> str:
    lines = []
    for target in result["targets"]:
        lines += [f"{target} ({result['dataset']}, {result['split']})", "",
                  "| epoch | training minutes | MAE | R² | 68% coverage |", "|---|---|---|---|---|"]
        for row in result["rows"]:
            r = row[target]
            coverage = "–" if r["coverage_68"] is None else f"{r['coverage_68']:.3f}"
            lines.append(f"| {row['epoch']} | {row['train_minutes']:.1f} | {r['mae']:.4f} | "
                         f"{r['r2']:.3f} | {coverage} |")
        lines.append("")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
    flags.DEFINE_string("data_dir", None, "TFDS data directory of the run's data set.",
                        required=True)
    flags.DEFINE_string("output_dir", None, "Where time_to_accuracy.json goes.", required=True)
    flags.DEFINE_string("split", "test", "Split to evaluate on.")
    flags.DEFINE_list("epochs", [], "Epochs to evaluate (default: every epoch checkpoint).")
    flags.DEFINE_string("checkpoint_dir", None,
                        "Checkpoints to read (default: WORKDIR/epoch_checkpoints).")


def main(argv):
    del argv
    try:
        epochs = [int(e) for e in FLAGS.epochs]
    except ValueError:
        raise app.UsageError(f"--epochs: expected integers, got {FLAGS.epochs}") from None
    result = measure(FLAGS.workdir, FLAGS.data_dir, FLAGS.split, epochs or None,
                     FLAGS.checkpoint_dir)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "time_to_accuracy.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    print(table(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
