r"""Evaluates a trained regressor on a whole split, with the numbers reviewers ask for.

  python -m deeplense_tf.evaluate --workdir=RUN (or --model=PATH.keras) \
      --data_dir=DATA --dataset=deeplense_lensing/CONFIG [--split=test] \
      [--tta] --output_dir=OUT

Writes OUT/metrics.json, OUT/report.md with PNG figures, and the same scalars and
figures to OUT/tensorboard. Every metric is computed on every example of the split,
once (never on a resample), with the model file given (the training run's `model.keras`
holds its best weights by validation loss). Beside each metric stands the same metric
for the constant predictor that always answers the training-split mean (the value the
model carries for de-scaling): a model is only as good as its margin over that.

For Gaussian heads: mean negative log-likelihood, coverage of the central 68% and 95%
intervals, a calibration curve (empirical against nominal coverage of central
intervals), and whether the model is over- or under-confident. Dihedral test-time
augmentation (`--tta`) averages the 8 rotations/flips of each image (for rotation-
invariant targets only); the report gives the metrics with and without it.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import app, flags

from deeplense_tf import console


_BINS = 10
WITHIN_THRESHOLDS = (0.25, 0.5, 1.0)
_NOMINAL = np.linspace(0.05, 0.95, 19)


# ---------------------------------------------------------------------------- metrics


def point_metrics(y_true, y_pred) -> dict:
    error = np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64)
    y_true = np.asarray(y_true, np.float64)
    ss_tot = np.sum((y_true - y_true.mean()) ** 2)
    return {
        "count": int(len(error)),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "median_absolute_error": float(np.median(np.abs(error))),
        "bias": float(np.mean(error)),
        "r2": float(1 - np.sum(error**2) / ss_tot) if ss_tot > 0 else float("nan"),
        # Shares of examples within 0.25, 0.5 and 1 target unit (dex for log10 targets):
        # how classification-style results (e.g. "within an order of magnitude") compare.
        "fraction_within": {f"{d:g}": float(np.mean(np.abs(error) <= d))
                            for d in WITHIN_THRESHOLDS},
    }


def _normal_quantile(p):
    from scipy.stats import norm

    return norm.ppf(p)


def half_widths(levels, table=None) -> np.ndarray:
    """Half-width of the central interval of each level, in units of the head's sigma:
    Gaussian quantiles, or a calibrated model's table (`deeplense_tf.calibration`)."""
    levels = np.asarray(levels, np.float64)
    if table is None:
        return _normal_quantile(0.5 + levels / 2)
    from deeplense_tf.models.layers import interval_half_width

    return np.array([interval_half_width(table, p) for p in levels])


def gaussian_metrics(y_true, mean, sigma, table=None) -> dict:
    """Interval metrics. `sigma` is the head's own sigma; with a calibration `table` the
    interval of level p is mean +- k(p) sigma, else the Gaussian one."""
    z = (np.asarray(y_true, np.float64) - mean) / sigma
    k = half_widths(np.concatenate([_NOMINAL, [0.682689, 0.95]]), table)
    empirical = [float(np.mean(np.abs(z) <= w)) for w in k[:-2]]
    coverage_68 = float(np.mean(np.abs(z) <= k[-2]))
    coverage_95 = float(np.mean(np.abs(z) <= k[-1]))
    # Binomial spread of the 68% coverage on this many examples, for the verdict.
    tolerance = 2 * math.sqrt(0.68 * 0.32 / len(z))
    if coverage_68 < 0.6827 - tolerance:
        verdict = "over-confident: the 68% intervals hold fewer of the truths (too narrow)"
    elif coverage_68 > 0.6827 + tolerance:
        verdict = "under-confident: the 68% intervals hold more of the truths (too wide)"
    else:
        verdict = "calibrated at 68% within the binomial spread of this split"
    return {
        # NLL of the head's Gaussian (a calibration table changes intervals, not this).
        "nll": float(np.mean(np.log(sigma) + 0.5 * z**2 + 0.5 * math.log(2 * math.pi))),
        "coverage_68": coverage_68,
        "coverage_95": coverage_95,
        "z_std": float(np.std(z)),
        "mean_sigma": float(np.mean(sigma * k[-2])),
        "calibrated": table is not None,
        "calibration": {"nominal": _NOMINAL.round(3).tolist(), "empirical": empirical},
        "max_calibration_deviation": float(np.max(np.abs(np.asarray(empirical) - _NOMINAL))),
        "verdict": verdict,
    }


def binned_metrics(y_true, y_pred, sigma, constant, edges) -> list[dict]:
    index = np.clip(np.digitize(y_true, edges) - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        sel = index == b
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(sel.sum())}
        if sel.any():
            error = y_pred[sel] - y_true[sel]
            row.update(mae=float(np.mean(np.abs(error))), bias=float(np.mean(error)),
                       rmse=float(np.sqrt(np.mean(error**2))),
                       constant_mae=float(np.mean(np.abs(constant - y_true[sel]))),
                       median_prediction=float(np.median(y_pred[sel])),
                       prediction_16=float(np.quantile(y_pred[sel], 0.16)),
                       prediction_84=float(np.quantile(y_pred[sel], 0.84)))
            if sigma is not None:
                row.update(coverage_68=float(np.mean(np.abs(error) <= sigma[sel])),
                           mean_sigma=float(np.mean(sigma[sel])))
        rows.append(row)
    return rows


def target_report(name, y_true, outputs, constant, table=None) -> dict:
    """Metrics of one target. `table`: the model's interval calibration for it, if any
    (then `outputs[name + "_std"]` is the calibrated 68.27% half-width)."""
    # Real cut-outs may lack a label (NaN): metrics cover the labelled examples only.
    known = np.isfinite(np.asarray(y_true, np.float64))
    if not known.any():
        raise ValueError(f"{name}: no example of the split has a known value")
    y_true = np.asarray(y_true)[known]
    y_pred = np.asarray(outputs[name])[known]
    sigma = outputs.get(name + "_std")
    sigma = None if sigma is None else np.asarray(sigma)[known]
    outputs = {k: np.asarray(v)[known] for k, v in outputs.items()}
    edges = np.linspace(np.min(y_true), np.max(y_true), _BINS + 1)
    report = {
        "unlabelled_examples": int((~known).sum()),
        "model": point_metrics(y_true, y_pred),
        "constant_baseline": dict(point_metrics(y_true, np.full_like(y_true, constant)),
                                  value=float(constant)),
        "binned": binned_metrics(y_true, y_pred, sigma, constant, edges),
    }
    if sigma is not None:
        raw = sigma / half_widths([0.682689], table)[0] if table is not None else sigma
        report["gaussian"] = gaussian_metrics(y_true, y_pred, raw, table)
    return report


def reference_comparison(reference_dir: str, dataset: str, split: str, target: str, y_true,
                         y_pred, y_pred_tta=None) -> dict:
    """The model beside the information floor (`python -m deeplense_tf.reference`) on the
    images the reference run covered, bin by bin, and each bin's share of the gap.

    The reference identifies its images by their position in the split's file order
    (the order read here) and keeps their stored targets: they must match exactly."""
    from deeplense_tf.reference import runner

    summary, arrays = runner.load(reference_dir)
    if (summary["dataset"].split(":")[0] != dataset.split(":")[0]
            or summary["split"] != split or summary["target"] != target):
        raise ValueError(f"--reference={reference_dir}: computed for {summary['target']} on "
                         f"{summary['dataset']} {summary['split']!r}, not {target} on {dataset} "
                         f"{split!r}")
    index = arrays["index"].astype(int)
    y_true = np.asarray(y_true, np.float32)
    if index.max() >= len(y_true) or not np.array_equal(y_true[index],
                                                        arrays["truth"].astype(np.float32)):
        raise ValueError(f"--reference={reference_dir}: its images' targets differ from those "
                         f"of {dataset} {split!r} at the same positions: the data set was "
                         "rebuilt or is another one; run the reference again on this one")
    truth = y_true[index].astype(np.float64)
    floor = arrays["median"]
    model = np.asarray(y_pred, np.float64)[index]
    tta = None if y_pred_tta is None else np.asarray(y_pred_tta, np.float64)[index]
    edges = runner.BIN_EDGES
    bins = np.clip(np.digitize(truth, edges) - 1, 0, len(edges) - 2)
    model_error, floor_error = np.abs(model - truth), np.abs(floor - truth)
    total_gap = float(np.sum(model_error - floor_error))
    rows = []
    for b in range(len(edges) - 1):
        sel = bins == b
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(sel.sum())}
        if sel.any():
            gap = float(np.sum(model_error[sel] - floor_error[sel]))
            row.update(model_mae=float(model_error[sel].mean()), floor_mae=float(floor_error[sel].mean()),
                       gap_share=gap / total_gap if total_gap else float("nan"))
            if tta is not None:
                row["model_tta_mae"] = float(np.abs(tta[sel] - truth[sel]).mean())
        rows.append(row)
    out = {"reference": os.path.abspath(reference_dir), "count": int(len(index)),
           "model_mae": float(model_error.mean()), "floor_mae": float(floor_error.mean()),
           "floor_coverage_68": summary["coverage_68"], "floor_coverage_95": summary["coverage_95"],
           "binned": rows}
    out["model_over_floor"] = out["model_mae"] / out["floor_mae"]
    if tta is not None:
        out["model_tta_mae"] = float(np.abs(tta - truth).mean())
    return out


def covariance_matrices(outputs: dict, targets) -> np.ndarray | None:
    """(N, K, K) covariances in physical units from a full-covariance head's outputs
    (`<target>_std` and `corr__<a>__<b>`), or None for other heads."""
    from deeplense_tf.models.layers import target_pairs

    pairs = target_pairs(list(targets))
    if len(targets) < 2 or not all(key in outputs for _, _, key in pairs):
        return None
    sigma = np.stack([np.asarray(outputs[t + "_std"], np.float64) for t in targets], axis=-1)
    corr = np.broadcast_to(np.eye(len(targets)), sigma.shape + (len(targets),)).copy()
    for i, j, key in pairs:
        corr[:, i, j] = corr[:, j, i] = np.asarray(outputs[key], np.float64)
    return corr * sigma[:, :, None] * sigma[:, None, :]


def joint_metrics(labels: dict, outputs: dict, targets) -> dict | None:
    """Joint calibration of a full-covariance head: the share of examples whose truth lies
    inside the predicted 68% and 95% ellipsoids (squared Mahalanobis distance below the
    chi^2_K quantile), the mean joint NLL, and the predicted correlations against the
    correlation of the errors."""
    from scipy.stats import chi2

    from deeplense_tf.models.layers import CORR_PREFIX, target_pairs

    covariance = covariance_matrices(outputs, targets)
    if covariance is None:
        return None
    truth = np.stack([np.asarray(labels[t], np.float64) for t in targets], axis=-1)
    mean = np.stack([np.asarray(outputs[t], np.float64) for t in targets], axis=-1)
    known = np.isfinite(truth).all(axis=1)
    error, covariance = (mean - truth)[known], covariance[known]
    k = len(targets)
    chol = np.linalg.cholesky(covariance + 1e-12 * np.eye(k))
    white = np.linalg.solve(chol, error[..., None])[..., 0]
    d2 = (white**2).sum(axis=1)
    nll = (np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1) + 0.5 * d2
           + 0.5 * k * math.log(2 * math.pi))
    out = {"targets": list(targets), "count": int(known.sum()),
           "coverage_68": float(np.mean(d2 <= chi2.ppf(0.68, k))),
           "coverage_95": float(np.mean(d2 <= chi2.ppf(0.95, k))),
           "nll": float(nll.mean()), "correlations": {}}
    for i, j, key in target_pairs(list(targets)):
        predicted = covariance[:, i, j] / np.sqrt(covariance[:, i, i] * covariance[:, j, j])
        out["correlations"][key[len(CORR_PREFIX):]] = {
            "predicted_median": float(np.median(predicted)),
            "of_the_errors": float(np.corrcoef(error[:, i], error[:, j])[0, 1])}
    return out


# ------------------------------------------------------------------------ predictions


def _tta_predict(model):
    """Averages the 8 dihedral views; a Gaussian mixture's mean and variance for `_std`."""
    import tensorflow as tf

    @tf.function
    def predict(images):
        views = []
        for flip in (False, True):
            flipped = tf.image.flip_left_right(images) if flip else images
            for k in range(4):
                views.append(model(tf.image.rot90(flipped, k), training=False))
        out = {}
        for key in views[0]:
            if key.endswith("_std"):
                continue
            means = tf.stack([v[key] for v in views])
            out[key] = tf.reduce_mean(means, axis=0)
            if key + "_std" in views[0]:
                variances = tf.stack([tf.square(v[key + "_std"]) for v in views])
                total = tf.reduce_mean(variances, 0) + tf.math.reduce_variance(means, 0)
                out[key + "_std"] = tf.sqrt(total)
        return out

    return predict


def evaluate(model, data_dir: str, dataset: str, split: str = "test", tta: bool = False,
             batch_size: int = 256, reference: str | None = None) -> dict:
    """Metrics of `model` on the whole `split` (and with TTA if asked); with `reference`
    (a `python -m deeplense_tf.reference` output directory) also the model beside the
    information floor on the images it covers."""
    from deeplense_tf import input_pipeline, models, training

    targets = models.target_names(model)
    pipeline = input_pipeline.Pipeline(data_dir, dataset, targets, cache=False)
    expected = tuple(model.input_shape[1:])
    if tuple(pipeline.image_shape) != expected:
        raise ValueError(f"--dataset={dataset}: images of shape {pipeline.image_shape}, but the "
                         f"model takes {expected}")
    if tta:
        oriented = [t for t in targets if t in sum(map(list, input_pipeline.POSITION_PAIRS
                                                       + input_pipeline.SPIN2_PAIRS), [])
                    + list(input_pipeline.AXIS_ANGLES)]
        if oriented:
            raise ValueError(f"--tta: targets {oriented} change under rotation; averaging "
                             "rotated predictions would be wrong")
        from deeplense_tf.models import twin

        recipe = twin.macro_twin_recipe(model)
        if recipe:
            raise ValueError(f"--tta: the model subtracts the {recipe!r} "
                             "macro-model twin in the simulator's orientation; rotated images "
                             "do not match it (evaluate without --tta)")
    from deeplense_tf import calibration

    means, _ = models.target_scaling(model)
    tables = calibration.interval_calibration(model) or {}
    batches = -(-pipeline.num_examples(split) // batch_size)
    with console.Progress(total=batches, desc=f"evaluate {split}", unit="batch") as bar:
        labels, outputs = training.predict_split(model, pipeline, split, batch_size, progress=bar)
    results = {"dataset": dataset, "split": split, "num_examples": int(len(labels[targets[0]])),
               "targets": {}}
    tta_outputs = None
    if tta:
        with console.Progress(total=batches, desc=f"evaluate {split}, 8-fold TTA",
                              unit="batch") as bar:
            _, tta_outputs = training.predict_split(model, pipeline, split, batch_size,
                                                    _tta_predict(model), progress=bar)
    for name, constant in zip(targets, means.tolist()):
        table = tables.get(name)
        results["targets"][name] = target_report(name, labels[name], outputs, constant, table)
        if tta_outputs is not None:
            results["targets"][name]["tta"] = target_report(name, labels[name], tta_outputs,
                                                            constant, table)
        if reference:
            results["targets"][name]["reference"] = reference_comparison(
                reference, dataset, split, name, labels[name], outputs[name],
                None if tta_outputs is None else tta_outputs[name])
    # The joint ellipses are the head's own Gaussian: a stored interval calibration widens
    # each marginal `_std` to its 68% half-width, which is not a covariance; undone here.
    head = dict(outputs)
    for name in targets:
        if name + "_std" in outputs:
            head[name + "_std"] = calibration.raw_sigma(model, outputs, name)
    joint = joint_metrics(labels, head, targets)
    if joint is not None:
        results["joint"] = joint
    results["_arrays"] = {"labels": labels, "outputs": outputs, "tta_outputs": tta_outputs}
    return results


# ---------------------------------------------------------------------------- report


def _figures(name, y_true, outputs, report, output_dir) -> dict[str, str]:
    from deeplense_tf import plots
    import matplotlib.pyplot as plt

    paths = {}

    def save(fig, key):
        path = os.path.join(output_dir, f"{name}_{key}.png")
        with open(path, "wb") as f:
            f.write(plots.to_png(fig))
        paths[key] = os.path.basename(path)

    y_pred = outputs[name]
    save(plots.predicted_vs_true(y_true, y_pred, name), "predicted_vs_true")

    fig, ax = plt.subplots(figsize=(4.6, 3.6), dpi=100)
    residual = y_pred - y_true
    ax.scatter(y_true, residual, s=2, alpha=0.3, color="grey")
    rows = [r for r in report["binned"] if r["count"]]
    centres = [(r["low"] + r["high"]) / 2 for r in rows]
    ax.plot(centres, [r["bias"] for r in rows], color="tab:red", label="binned bias")
    ax.axhline(0, color="k", lw=1)
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel("predicted - true")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "residual_vs_true")

    fig, ax = plt.subplots(figsize=(4.6, 3.6), dpi=100)
    ax.plot(centres, [r["mae"] for r in rows], "o-", label="model")
    ax.plot(centres, [r["constant_mae"] for r in rows], "s--", color="grey",
            label="constant (training mean)")
    if rows and "mean_sigma" in rows[0]:
        ax.plot(centres, [r["mean_sigma"] for r in rows], ":", color="tab:green",
                label="mean predicted sigma")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel("mean absolute error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "binned_mae")

    if "reference" in report:
        ref = [r for r in report["reference"]["binned"] if r["count"]]
        mid = [(r["low"] + r["high"]) / 2 for r in ref]
        fig, ax = plt.subplots(figsize=(4.6, 3.6), dpi=100)
        ax.plot(mid, [r["model_mae"] for r in ref], "o-", label="model")
        if ref and "model_tta_mae" in ref[0]:
            ax.plot(mid, [r["model_tta_mae"] for r in ref], "^:", label="model + TTA")
        ax.plot(mid, [r["floor_mae"] for r in ref], "s-", color="k",
                label="floor (exact posterior median)")
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel("mean absolute error")
        ax.set_title(f"{report['reference']['count']} images with a reference posterior",
                     fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, "floor")

    if "gaussian" in report:
        cal = report["gaussian"]["calibration"]
        fig, ax = plt.subplots(figsize=(3.8, 3.6), dpi=100)
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot(cal["nominal"], cal["empirical"], "o-", label="model")
        ax.set_xlabel("nominal coverage of central interval")
        ax.set_ylabel("fraction of truths inside")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, "calibration")
    return paths


def _row(label, m):
    return (f"| {label} | {m['mae']:.4f} | {m['rmse']:.4f} | {m['median_absolute_error']:.4f} | "
            f"{m['r2']:.3f} | {m['bias']:+.4f} |")


def write_report(results: dict, output_dir: str, model_path: str = "") -> dict:
    """metrics.json, report.md + PNGs, and TensorBoard summaries in `output_dir`."""
    import tensorflow as tf

    os.makedirs(output_dir, exist_ok=True)
    arrays = results.pop("_arrays")
    lines = [f"# Evaluation: {results['dataset']}, split `{results['split']}`", "",
             f"Model: `{model_path}`. {results['num_examples']} examples, every one used once.", ""]
    writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))
    for name, report in results["targets"].items():
        known = np.isfinite(np.asarray(arrays["labels"][name], np.float64))
        figures = _figures(name, np.asarray(arrays["labels"][name])[known],
                           {k: np.asarray(v)[known] for k, v in arrays["outputs"].items()},
                           report, output_dir)
        report["figures"] = figures
        lines += [f"## {name}", "",
                  "| predictor | MAE | RMSE | median AE | R^2 | bias |", "|---|---|---|---|---|---|",
                  _row("model", report["model"])]
        if "tta" in report:
            lines.append(_row("model + dihedral TTA", report["tta"]["model"]))
        lines += [_row(f"constant {report['constant_baseline']['value']:.3f}",
                       report["constant_baseline"]), ""]
        if "gaussian" in report:
            g = report["gaussian"]
            lines += [f"Uncertainty: mean NLL {g['nll']:.3f}, 68% coverage {g['coverage_68']:.3f}, "
                      f"95% coverage {g['coverage_95']:.3f}, std of z-scores {g['z_std']:.3f}. "
                      f"The model is {g['verdict']}.", ""]
            if "tta" in report:
                t = report["tta"]["gaussian"]
                lines += [f"With TTA: NLL {t['nll']:.3f}, 68% coverage {t['coverage_68']:.3f}.", ""]
        lines += ["Across the target range (bins of the true value):", "",
                  "| bin | count | MAE | constant MAE | bias | median prediction | 16-84% "
                  "| 68% coverage |", "|---|---|---|---|---|---|---|---|"]
        for r in report["binned"]:
            if r["count"]:
                lines.append(
                    f"| [{r['low']:.2f}, {r['high']:.2f}) | {r['count']} | {r['mae']:.3f} | "
                    f"{r['constant_mae']:.3f} | {r['bias']:+.3f} | {r['median_prediction']:.3f} | "
                    f"{r['prediction_16']:.2f} to {r['prediction_84']:.2f} | "
                    f"{r.get('coverage_68', float('nan')):.2f} |")
        lines.append("")
        if "reference" in report:
            ref = report["reference"]
            lines += [f"Against the information floor (the exact posterior's median, "
                      f"`{ref['reference']}`), on the {ref['count']} images it covers: model MAE "
                      f"{ref['model_mae']:.4f}"
                      + (f" ({ref['model_tta_mae']:.4f} with TTA)" if "model_tta_mae" in ref else "")
                      + f", floor {ref['floor_mae']:.4f}: {ref['model_over_floor']:.2f}x the floor.",
                      "", "| bin | count | model MAE | floor MAE | share of the gap |",
                      "|---|---|---|---|---|"]
            for r in ref["binned"]:
                if r["count"]:
                    lines.append(f"| [{r['low']:.1f}, {r['high']:.1f}) | {r['count']} | "
                                 f"{r['model_mae']:.3f} | {r['floor_mae']:.3f} | "
                                 f"{r['gap_share']:.0%} |")
            lines.append("")
        captions = {"predicted_vs_true": "Predicted against true: 2-D histogram, binned median "
                                         "and 16-84% band",
                    "residual_vs_true": "Residual against true, with the binned bias",
                    "binned_mae": "MAE across the target range, against the constant predictor",
                    "calibration": "Calibration of the central intervals",
                    "floor": "MAE across the target range, against the information floor"}
        for key, file in figures.items():
            lines += [f"![{captions[key]}]({file})", f"*{captions[key]}.*", ""]
        with writer.as_default(step=0):
            for group in ("model", "constant_baseline"):
                for metric in ("mae", "rmse", "median_absolute_error", "r2", "bias"):
                    tf.summary.scalar(f"{name}/{group}/{metric}", report[group][metric])
            if "gaussian" in report:
                for metric in ("nll", "coverage_68", "coverage_95", "z_std"):
                    tf.summary.scalar(f"{name}/gaussian/{metric}", report["gaussian"][metric])
            for key, file in figures.items():
                png = open(os.path.join(output_dir, file), "rb").read()
                tf.summary.image(f"{name}/{key}", tf.image.decode_png(png)[None])
    if "joint" in results:
        j = results["joint"]
        lines += ["## Joint (full covariance)", "",
                  f"Targets {', '.join(j['targets'])} (the head's own covariance; a stored "
                  "interval calibration of the marginals is not applied to it): the truth lies "
                  "inside the predicted 68% "
                  f"ellipsoid for {j['coverage_68']:.3f} of the {j['count']} examples and inside "
                  f"the 95% one for {j['coverage_95']:.3f}; mean joint NLL {j['nll']:.3f}.", "",
                  "| pair | predicted correlation (median) | correlation of the errors |",
                  "|---|---|---|"]
        for pair, c in j["correlations"].items():
            lines.append(f"| {pair.replace('__', ', ')} | {c['predicted_median']:+.3f} | "
                         f"{c['of_the_errors']:+.3f} |")
        lines.append("")
        with writer.as_default(step=0):
            for metric in ("coverage_68", "coverage_95", "nll"):
                tf.summary.scalar(f"joint/{metric}", j[metric])
    writer.flush()
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def run(model_path: str, data_dir: str, dataset: str, output_dir: str, split: str = "test",
        tta: bool = False, batch_size: int = 256, reference: str | None = None) -> dict:
    from deeplense_tf import pretrained

    model = pretrained.load_model(model_path)
    model_path = pretrained.resolve(model_path)
    results = evaluate(model, data_dir, dataset, split, tta, batch_size, reference)
    return write_report(results, output_dir, model_path)


def headline(results: dict) -> str:
    """One line per target: model against the constant predictor."""
    lines = []
    for name, r in results["targets"].items():
        m, c = r["model"], r["constant_baseline"]
        line = (f"{name}: MAE {m['mae']:.3f} (constant {c['mae']:.3f}), RMSE {m['rmse']:.3f} "
                f"(constant {c['rmse']:.3f}), R^2 {m['r2']:.3f}, within 0.5/1: "
                f"{m['fraction_within']['0.5']:.3f}/{m['fraction_within']['1']:.3f} (constant "
                f"{c['fraction_within']['0.5']:.3f}/{c['fraction_within']['1']:.3f})")
        if "gaussian" in r:
            line += (f", 68%/95% coverage {r['gaussian']['coverage_68']:.3f}/"
                     f"{r['gaussian']['coverage_95']:.3f}")
        if "reference" in r:
            ref = r["reference"]
            line += (f"; on the {ref['count']} images with a reference posterior: MAE "
                     f"{ref['model_mae']:.4f} against the floor's {ref['floor_mae']:.4f}")
        lines.append(line)
    if "joint" in results:
        j = results["joint"]
        lines.append(f"joint ({', '.join(j['targets'])}): 68%/95% ellipsoid coverage "
                     f"{j['coverage_68']:.3f}/{j['coverage_95']:.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model", None, "A .keras model file or a shipped model's name (or give --workdir).")
    flags.DEFINE_string("workdir", None, "A training run directory: evaluates its model.keras.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", required=True)
    flags.DEFINE_string("dataset", None, "'deeplense_lensing/CONFIG[:VERSION]'.", required=True)
    flags.DEFINE_string("split", "test", "Split to evaluate.")
    flags.DEFINE_string("output_dir", None, "Where the report goes.", required=True)
    flags.DEFINE_bool("tta", False, "Also evaluate with dihedral test-time augmentation.")
    flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
    flags.DEFINE_string("reference", None, "Output directory of `python -m "
                        "deeplense_tf.reference` on this split: report the model beside the "
                        "information floor.")


def main(argv):
    del argv
    if bool(FLAGS.model) == bool(FLAGS.workdir):
        raise app.UsageError("give exactly one of --model and --workdir")
    console.setup(log_file=os.path.join(FLAGS.output_dir, "evaluate.log"))
    model_path = FLAGS.model or os.path.join(FLAGS.workdir, "model.keras")
    results = run(model_path, FLAGS.data_dir, FLAGS.dataset, FLAGS.output_dir, FLAGS.split,
                  FLAGS.tta, FLAGS.batch_size, FLAGS.reference)
    print(headline(results))
    print(f"Report: {os.path.join(FLAGS.output_dir, 'report.md')}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
