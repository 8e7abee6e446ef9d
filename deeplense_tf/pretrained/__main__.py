r"""Prints the results table of the shipped models, from their own metadata.

  python -m deeplense_tf.pretrained

Every number comes from the model's `.json`, which `deeplense_tf.package_model` wrote
from the run's summary and the evaluation of the whole test split; nothing is typed in.
"""

from __future__ import annotations

from deeplense_tf import pretrained


def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def results_table(names=None) -> str:
    """A markdown table: model, data set, test MAE (and with dihedral TTA), RMSE, R²,
    the constant predictor's MAE, 68%/95% coverage, the model's MAE against the
    information floor's on the test images that have a reference posterior, training
    time and machine."""
    rows = ["| model | data set | target | test MAE (TTA) | RMSE | R² | constant MAE | "
            "68% / 95% coverage | MAE against the floor (images) | test images | training | "
            "machine |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names or pretrained.list():
        meta = pretrained.info(name)
        for target in meta["targets"]:
            test = meta["test"][target]
            model, constant = test["model"], test["constant_baseline"]
            tta = test.get("tta", {}).get("mae")
            gaussian = test.get("gaussian")
            coverage = ("–" if not gaussian else
                        f"{gaussian['coverage_68']:.3f} / {gaussian['coverage_95']:.3f}")
            mae = _fmt(model["mae"], 4) + (f" ({tta:.4f})" if tta is not None else "")
            floor = test.get("floor")
            against = ("–" if not floor else f"{floor['model_mae']:.4f} vs {floor['floor_mae']:.4f}"
                                              f" ({floor['count']})")
            rows.append(
                f"| `{name}` | `{meta['dataset']}` {meta['dataset_version']} | {target} | {mae} "
                f"| {_fmt(model['rmse'])} | {_fmt(model['r2'])} | {_fmt(constant['mae'], 4)} "
                f"| {coverage} | {against} | {model['count']} | {meta['train_seconds'] / 3600:.2f} h, "
                f"{meta['steps']} steps | {meta['machine']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(results_table())
