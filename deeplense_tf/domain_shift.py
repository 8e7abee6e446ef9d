r"""The domain-shift matrix: models trained on parametric lenses, tested on realistic ones.

    python -m deeplense_tf.domain_shift --data_dir=DATA --output_dir=docs/domain_shift \
        [--models=resnet18_euclid_axion,hybrid_euclid_axion] [--test_size=2000] [--seed=1] \
        [--configs=euclid_axion,euclid_axion_lens_light,...]

For every config (the in-domain one first, then one per realism effect, then all of
them) a test split of `--test_size` fresh images is built (or found) with the given seed;
each model (a shipped name, `pretrained:NAME` or a `.keras` path) predicts it, and the
table gives, side by side with the in-domain row: MAE and its ratio to in-domain, bias,
the coverage of the model's (calibrated) 68% and 95% intervals, and the share of images
its out-of-distribution score flags. Writes `domain_shift.json`, `domain_shift.md` and
`domain_shift.png` (and its log) to `--output_dir`.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from deeplense_tf import console

DEFAULT_CONFIGS = ("euclid_axion", "euclid_axion_lens_light", "euclid_axion_psf",
                   "euclid_axion_correlated_noise", "euclid_axion_real_sources",
                   "euclid_axion_realistic")


def test_split(config: str, data_dir: str, test_size: int, seed: int) -> str:
    """Builds (or finds) `test_size` test images of `config`; returns the dataset name."""
    from deeplense_tf import build_dataset

    builder = build_dataset.build(config, data_dir, train_size=0, validation_size=0,
                                  test_size=test_size, seed=seed, progress=True)
    return f"deeplense_lensing/{builder.builder_config.name}"


def model_row(model, data_dir: str, dataset: str, batch_size: int = 256) -> dict:
    """MAE, bias, interval coverage and OOD flag rate of `model` on `dataset`'s test split."""
    from deeplense_tf import calibration, evaluate, input_pipeline, models, training

    targets = models.target_names(model)
    if len(targets) != 1:
        raise ValueError(f"the matrix reports one target per model; this model has {targets}")
    target = targets[0]
    pipeline = input_pipeline.Pipeline(data_dir, dataset, targets, cache=False)
    if tuple(pipeline.image_shape) != tuple(model.input_shape[1:]):
        raise ValueError(f"{dataset}: images of shape {pipeline.image_shape}, the model takes "
                         f"{tuple(model.input_shape[1:])}")
    labels, outputs = training.predict_split(model, pipeline, "test", batch_size)
    means, _ = models.target_scaling(model)
    table = (calibration.interval_calibration(model) or {}).get(target)
    report = evaluate.target_report(target, labels[target], outputs, float(means[0]), table)
    row = {"dataset": dataset, "target": target, "count": report["model"]["count"],
           "mae": report["model"]["mae"], "bias": report["model"]["bias"],
           "constant_mae": report["constant_baseline"]["mae"]}
    if "gaussian" in report:
        row.update(coverage_68=report["gaussian"]["coverage_68"],
                   coverage_95=report["gaussian"]["coverage_95"])
    if "ood_flag" in outputs:
        row["ood_flag_rate"] = float(np.mean(np.asarray(outputs["ood_flag"]) > 0.5))
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | test set | MAE | vs in-domain | bias | 68% cov. | 95% cov. | OOD flagged |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        def fmt(key, spec):
            return format(row[key], spec) if key in row else "—"
        lines.append(f"| {row['model']} | {row['config']} | {row['mae']:.3f} | "
                     f"{row['mae_ratio']:.2f}x | {row['bias']:+.3f} | {fmt('coverage_68', '.3f')} | "
                     f"{fmt('coverage_95', '.3f')} | "
                     + (f"{100 * row['ood_flag_rate']:.1f}%" if "ood_flag_rate" in row else "—")
                     + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models_ = list(dict.fromkeys(r["model"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(configs) + 1.6), sharey=True)
    height = 0.8 / len(models_)
    for m, name in enumerate(models_):
        sel = {r["config"]: r for r in rows if r["model"] == name}
        y = np.arange(len(configs)) + m * height
        axes[0].barh(y, [sel[c]["mae"] for c in configs], height, label=name)
        axes[1].barh(y, [sel[c].get("coverage_68", np.nan) for c in configs], height)
    axes[0].set_yticks(np.arange(len(configs)) + 0.4 - height / 2, configs)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("test MAE (dex)")
    axes[0].legend(fontsize=8)
    axes[1].axvline(0.6827, color="k", lw=0.8, ls="--")
    axes[1].set_xlabel("68% interval coverage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(models_: list[str], configs: list[str], data_dir: str, output_dir: str,
        test_size: int = 2000, seed: int = 1, batch_size: int = 256) -> list[dict]:
    from deeplense_tf import pretrained

    if not configs:
        raise ValueError("--configs: name at least the in-domain config")
    loaded = {name: pretrained.load_model(name) for name in models_}  # refuses unknown names
    datasets = {config: test_split(config, data_dir, test_size, seed) for config in configs}
    rows = []
    for name, model in loaded.items():
        for config in configs:
            row = model_row(model, data_dir, datasets[config], batch_size)
            row.update(model=name, config=config)
            rows.append(row)
        in_domain = next(r for r in rows if r["model"] == name and r["config"] == configs[0])
        for row in rows:
            if row["model"] == name:
                row["mae_ratio"] = row["mae"] / in_domain["mae"]
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "domain_shift.json"), "w") as f:
        json.dump({"models": models_, "configs": configs, "test_size": test_size, "seed": seed,
                   "in_domain": configs[0], "rows": rows}, f, indent=2)
    with open(os.path.join(output_dir, "domain_shift.md"), "w") as f:
        f.write(markdown(rows))
    figure(rows, os.path.join(output_dir, "domain_shift.png"))
    return rows


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    console.setup(log_file=os.path.join(FLAGS.output_dir, "domain_shift.log"))
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # one bar per split from the builder instead of TFDS's nested ones
    rows = run(FLAGS.models, FLAGS.configs, FLAGS.data_dir, FLAGS.output_dir, FLAGS.test_size,
               FLAGS.seed, FLAGS.batch_size)
    print(markdown(rows))


if __name__ == "__main__":
    flags.DEFINE_string("data_dir", None, "TFDS data directory (test splits are built there).",
                        required=True)
    flags.DEFINE_string("output_dir", None, "Where the table, JSON and figure go.", required=True)
    flags.DEFINE_list("models", ["resnet18_euclid_axion", "hybrid_euclid_axion"],
                      "Models: shipped names, pretrained:NAME or .keras paths.")
    flags.DEFINE_list("configs", list(DEFAULT_CONFIGS), "Test configs; the first is in-domain.")
    flags.DEFINE_integer("test_size", 2000, "Test images per config.")
    flags.DEFINE_integer("seed", 1, "Seed of the test splits (the shipped models' own sets used 0).")
    flags.DEFINE_integer("batch_size", 256, "Prediction batch size.")
    app.run(main)
