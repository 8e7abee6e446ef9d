r"""Calibrates a Gaussian regressor's intervals on the validation split.

  python -m deeplense_tf.calibrate --model=RUN/model.keras (or a shipped name) \
      --data_dir=DATA --dataset=deeplense_lensing/CONFIG --output=CALIBRATED.keras

Fits the quantiles of |y - mean| / sigma on `--split` (default validation; the test
split is refused) and writes a copy of the model that carries them (see
`deeplense_tf.calibration`), and beside it `<output>_calibration.json`: the coverage
before and the stored half-widths (what `package_model --calibration_report` puts on
the model card).
Evaluate the result on the test split with `python -m deeplense_tf.evaluate`.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from deeplense_tf import console


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model", None, "A .keras file, or the name of a shipped model.",
                        required=True)
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", required=True)
    flags.DEFINE_string("dataset", None, "'deeplense_lensing/CONFIG[:VERSION]' the model was "
                        "trained on.", required=True)
    flags.DEFINE_string("split", "validation", "Split the calibration is fitted on.")
    flags.DEFINE_string("output", None, "Where the calibrated .keras file goes.", required=True)
    flags.DEFINE_integer("batch_size", 256, "Prediction batch size.")


def load_model(model: str):
    """A .keras path or a shipped model's name (`pretrained.resolve`'s rule)."""
    from deeplense_tf import pretrained

    return pretrained.load_model(model)


def main(argv):
    del argv
    from deeplense_tf import calibration

    console.setup()
    if not FLAGS.output.endswith(".keras"):
        raise app.UsageError(f"--output={FLAGS.output}: expected a .keras file name")
    model = load_model(FLAGS.model)
    calibrated, report = calibration.calibrate(model, FLAGS.data_dir, FLAGS.dataset,
                                               FLAGS.split, FLAGS.batch_size)
    calibration.save_atomic(calibrated, FLAGS.output)
    report_path = os.path.splitext(FLAGS.output)[0] + "_calibration.json"
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    print(f"Report: {report_path}")
    print(f"Calibrated model: {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
