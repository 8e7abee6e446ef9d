r"""Post-hoc calibration of a Gaussian head's intervals, fitted on a validation split.

  python -m deeplense_tf.calibrate --model=RUN/model.keras --data_dir=DATA \
      --dataset=deeplense_lensing/CONFIG --output=RUN/model_calibrated.keras

A single Gaussian cannot express the flat, bounded posterior of a plateau: on the
shipped axion models the +-1 sigma intervals held 63-66% of the test truths and the
+-1.96 sigma ones 97%, too narrow and too wide at once. No single scale of sigma mends
both. This module measures, on the validation split (never the test split), the
distribution of |y - mean| / sigma and stores its quantiles in the model's
`regression_output` layer: the central interval of level p becomes
mean +- sigma * k(p), with k(p) the validation quantile of |z| at p (Kuleshov et al.
2018's recalibration, for symmetric intervals). The calibrated model outputs
`<target>_std` = sigma * k(0.6827) and the interval ends `_q16`, `_q84`, `_q025`,
`_q975`; SavedModel exports and `pretrained.predict` return them with no side file.
"""

from __future__ import annotations

import numpy as np

from deeplense_tf.models.layers import ONE_SIGMA_LEVEL

# Levels of the stored table: every percent, plus the +-1 and +-2 sigma levels.
LEVELS = np.unique(np.round(np.concatenate([np.arange(0.01, 1.0, 0.01),
                                            [ONE_SIGMA_LEVEL, 0.9545]]), 6))
OUTPUT_LAYER = "regression_output"


def fit(y_true, mean, sigma, levels=LEVELS) -> dict:
    """The table {levels, half_widths}: half_widths[j] is the `levels[j]` quantile of
    |y_true - mean| / sigma over the examples given."""
    y_true, mean, sigma = (np.asarray(a, np.float64).ravel() for a in (y_true, mean, sigma))
    if not (len(y_true) == len(mean) == len(sigma)) or len(y_true) < 20:
        raise ValueError(f"calibration: need at least 20 examples of equal length, got "
                         f"{len(y_true)}, {len(mean)}, {len(sigma)}")
    if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(mean))
            and np.all(np.isfinite(sigma) & (sigma > 0))):
        raise ValueError("calibration: non-finite values or a non-positive sigma")
    z = np.abs(y_true - mean) / sigma
    widths = np.maximum.accumulate(np.maximum(np.quantile(z, levels), 1e-6))
    return {"levels": [float(p) for p in levels], "half_widths": [float(k) for k in widths]}


def interval_calibration(model) -> dict | None:
    """The calibration tables a model carries ({target: table}), or None."""
    try:
        return model.get_layer(OUTPUT_LAYER).interval_calibration
    except ValueError:
        return None


def with_calibration(model, calibration: dict | None):
    """A copy of `model` (same weights) whose output layer carries `calibration`."""
    import keras

    from deeplense_tf.models.layers import RegressionOutput

    try:
        layer = model.get_layer(OUTPUT_LAYER)
    except ValueError:
        raise ValueError(f"model has no {OUTPUT_LAYER!r} layer: not a deeplense_tf "
                         "regressor") from None
    # A new output layer on the same graph (the other layers, and so the weights, are
    # shared): the calibrated outputs are new keys of the model's output dict.
    config = dict(layer.get_config(), interval_calibration=calibration)
    outputs = RegressionOutput.from_config(config)(layer.input)
    return keras.Model(model.input, outputs, name=model.name)


def raw_sigma(model, outputs: dict, target: str) -> np.ndarray:
    """The head's own sigma for `target` from a model's outputs (undoing calibration)."""
    from deeplense_tf.models.layers import interval_half_width

    table = (interval_calibration(model) or {}).get(target)
    sigma = np.asarray(outputs[target + "_std"], np.float64)
    return sigma if table is None else sigma / interval_half_width(table, ONE_SIGMA_LEVEL)


def calibrate(model, data_dir: str, dataset: str, split: str = "validation",
              batch_size: int = 256):
    """(calibrated model, report): tables fitted on `split` for every Gaussian target."""
    from deeplense_tf import input_pipeline, models, training

    if split.split("[")[0] == "test":
        raise ValueError("--split=test: calibrating on the test split would make its coverage "
                         "meaningless; fit on the validation split")
    targets = models.target_names(model)
    layer = model.get_layer(OUTPUT_LAYER)
    if layer.head == "point":
        raise ValueError("calibration: the model has a point head; there are no intervals")
    pipeline = input_pipeline.Pipeline(data_dir, dataset, targets, cache=False)
    if tuple(pipeline.image_shape) != tuple(model.input_shape[1:]):
        raise ValueError(f"--dataset={dataset}: images of shape {pipeline.image_shape}, but "
                         f"the model takes {tuple(model.input_shape[1:])}")
    labels, outputs = training.predict_split(model, pipeline, split, batch_size)
    tables, report = {}, {"dataset": dataset, "split": split, "targets": {}}
    for target in targets:
        sigma = raw_sigma(model, outputs, target)
        tables[target] = fit(labels[target], outputs[target], sigma)
        z = np.abs(labels[target] - outputs[target]) / sigma
        report["targets"][target] = {
            "examples": int(len(z)),
            "uncalibrated_coverage_68": float(np.mean(z <= 1.0)),
            "uncalibrated_coverage_95": float(np.mean(z <= 1.959964)),
            "half_width_68_in_sigma": float(np.interp(0.68, tables[target]["levels"],
                                                      tables[target]["half_widths"])),
            "half_width_95_in_sigma": float(np.interp(0.95, tables[target]["levels"],
                                                      tables[target]["half_widths"])),
        }
    return with_calibration(model, tables), report


def save_atomic(model, path: str) -> None:
    """Saves a .keras file whole or not at all (`training.save_model_atomic`)."""
    from deeplense_tf import training

    training.save_model_atomic(model, path)
