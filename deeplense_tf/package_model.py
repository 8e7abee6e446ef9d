r"""Packages a trained and evaluated run as a pre-trained model with a model card.

  python -m deeplense_tf.package_model --workdir=RUN --evaluation=EVAL --name=NAME

reads RUN (config.json, flags.cfg, summary.json, model.keras) and EVAL (metrics.json
from `python -m deeplense_tf.evaluate` on the test split), and writes NAME.keras (the
weights once, no optimizer), NAME.json (metadata) and NAME.md (the model card) into
`deeplense_tf/pretrained/` (or --output_dir). Every number on the card comes from those
files: nothing is typed by hand. A deep ensemble (`python -m deeplense_tf.ensemble`) is
packaged from its members' runs, in the ensemble's order:

  python -m deeplense_tf.package_model --workdir=RUN1,RUN2 --model=ENSEMBLE.keras \
      --evaluation=EVAL --name=NAME
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from absl import app, flags

from deeplense_tf import console


MAX_BYTES = 20 * 1024 * 1024
PLATEAU_NOTE = {
    "log10_m_axion": (
        "Above log10 m_a of about -22.6 the vortex is shorter than ~1.5 Euclid pixels and "
        "the image carries almost no information about m_a (noise-free Delta chi^2 < 5 "
        "against the m_a -> infinity limit, all of the vortex mass at the centre): "
        "predictions flatten there. The binned table shows where."),
    "log10_sigma_sub": (
        "Learned from point-mass subhalos, the limit in which Sigma_sub is visible at Euclid "
        "resolution: truncated-NFW subhalos of the same masses (`euclid_cdm`) leave a weaker "
        "imprint, and a model of this recipe is out of its domain on them "
        "(docs/dark_matter.md)."),
    "shmf_slope": (
        "One Euclid image constrains the mass-function slope only weakly (R^2 in the table "
        "above): per-lens answers stay near the prior's centre and the value of the "
        "prediction is in its covariance with Sigma_sub and in populations of lenses "
        "(`python -m deeplense_tf.population`)."),
}


def _read_json(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: train and evaluate the run first")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: expected one JSON object (the report file a command "
                             f"writes, e.g. calibrate's --output report), got: {e}") from None


def _test_section(metrics: dict) -> dict:
    """What a card keeps of an evaluation's metrics.json, per target."""
    out = {}
    for t, r in metrics["targets"].items():
        entry = {"model": r["model"], "constant_baseline": r["constant_baseline"]}
        if "gaussian" in r:
            entry["gaussian"] = {k: v for k, v in r["gaussian"].items() if k != "calibration"}
        if "tta" in r:
            entry["tta"] = r["tta"]["model"]
        if "reference" in r:
            ref = r["reference"]
            entry["floor"] = {k: ref[k] for k in ("count", "model_mae", "floor_mae",
                                                  "model_over_floor", "floor_coverage_68",
                                                  "floor_coverage_95") if k in ref}
            if "model_tta_mae" in ref:
                entry["floor"]["model_tta_mae"] = ref["model_tta_mae"]
        out[t] = entry
    return out


def _joint(metrics: dict) -> dict:
    """A full-covariance model's joint calibration, as its evaluation measured it."""
    return {"joint": metrics["joint"]} if "joint" in metrics else {}


def _extras(calibration_report: str | None, ood_report: str | None) -> dict:
    extras = {}
    if calibration_report:
        extras["calibration"] = _read_json(calibration_report)
    if ood_report:
        ood = _read_json(ood_report)
        extras["ood"] = {k: ood[k] for k in ("threshold", "quantile", "train_examples",
                                             "flagged", "test_examples")}
    return extras


def _save_model(model, output_dir, name) -> int:
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=output_dir, prefix=".tmp-")
    os.close(fd)
    try:
        model.save(tmp)
        size = os.path.getsize(tmp)
        if size > MAX_BYTES:
            raise ValueError(f"{name}: {size / 2**20:.1f} MB exceeds the 20 MB limit of shipped models")
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(output_dir, f"{name}.keras"))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return size


def _write_card(meta, flagfile, metrics, output_dir):
    name = meta["name"]
    for suffix, text in ((".json", json.dumps(meta, indent=2)),
                         (".md", model_card(meta, flagfile, metrics))):
        tmp = os.path.join(output_dir, f".tmp-{name}{suffix}")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(output_dir, f"{name}{suffix}"))


def update_shipped(name: str, model_path: str | None, evaluation: str, *,
                   calibration_report: str | None = None, ood_report: str | None = None,
                   output_dir: str | None = None) -> dict:
    """Replaces a shipped model by `model_path` (the same network, calibrated and/or with
    an OOD score) and its card's numbers by `evaluation` (the test split), keeping what the
    card says of its training (the run itself is not needed).

    Without `model_path` the shipped network stays as it is and only its numbers are
    requoted (e.g. after a new reference run changed the floor they are compared with):
    the evaluation must then be of that network, i.e. reproduce its card's test metrics.
    """
    import keras

    import deeplense_tf.models  # noqa: F401
    from deeplense_tf import models, pretrained

    output_dir = output_dir or os.path.dirname(os.path.abspath(pretrained.__file__))
    meta = pretrained.info(name)
    card = pretrained.card(name)
    flagfile = card.split("```\n", 1)[1].split("```", 1)[0] if "```\n" in card else ""
    metrics = _read_json(os.path.join(evaluation, "metrics.json"))
    if metrics["split"] != "test":
        raise ValueError(f"{evaluation}: evaluated on {metrics['split']!r}; model cards quote "
                         "the test split")
    if metrics["dataset"].split(":")[0] != meta["dataset"].split(":")[0]:
        raise ValueError(f"{evaluation} evaluates {metrics['dataset']}, {name} was trained on "
                         f"{meta['dataset']}")
    extras = _extras(calibration_report, ood_report)  # a bad report fails before any file is written
    old = pretrained.load(name)
    if model_path is None:
        _check_same_evaluation(name, meta, metrics)
        model, size = old, None
    else:
        model = keras.saving.load_model(model_path, compile=False)
        if model.count_params() - sum(int(np.prod(w.shape)) for w in _ood_weights(model)) != \
                old.count_params() - sum(int(np.prod(w.shape)) for w in _ood_weights(old)):
            raise ValueError(f"{model_path}: not the network shipped as {name} (other "
                             "parameters)")
        size = _save_model(model, output_dir, name)
    if size is not None:
        meta["size_mb"] = round(size / 2**20, 2)
    meta.update(test=_test_section(metrics),
                num_test_examples=metrics["num_examples"], outputs=sorted(model.output),
                **extras, **_joint(metrics))
    meta["targets"] = models.target_names(model)
    _write_card(meta, flagfile, metrics, output_dir)
    pretrained.load.cache_clear()
    return meta


def _check_same_evaluation(name: str, meta: dict, metrics: dict) -> None:
    """An evaluation that requotes a shipped network must reproduce its card's metrics."""
    for target, entry in meta["test"].items():
        got = metrics["targets"].get(target, {}).get("model", {})
        for key in ("mae", "rmse", "count"):
            want = entry["model"].get(key)
            if want is None or not np.isclose(got.get(key, np.nan), want, rtol=1e-5, atol=0):
                raise ValueError(
                    f"evaluation of {metrics['dataset']}: {target} {key} = {got.get(key)}, "
                    f"the card of {name} says {want}: not an evaluation of the shipped network "
                    "on its test split (give --model to ship a new one)")
        if ("tta" in entry) != ("tta" in metrics["targets"][target]):
            raise ValueError(f"evaluation of {metrics['dataset']}: the card of {name} quotes "
                             f"{'a' if 'tta' in entry else 'no'} TTA result; evaluate "
                             f"{'with' if 'tta' in entry else 'without'} --tta")


def _ood_weights(model):
    try:
        return model.get_layer("ood_score").weights
    except ValueError:
        return []


def _run(workdir: str, metrics: dict, evaluation: str):
    """(config, summary, flag lines) of a completed training run."""
    config = _read_json(os.path.join(workdir, "config.json"))
    summary = _read_json(os.path.join(workdir, "summary.json"))
    if not summary.get("completed"):
        raise ValueError(f"{workdir}: training has not completed")
    if metrics["dataset"].split(":")[0] != config["dataset"].split(":")[0]:
        raise ValueError(f"{evaluation} evaluates {metrics['dataset']}, the run {workdir} "
                         f"trained on {config['dataset']}")
    with open(os.path.join(workdir, "flags.cfg")) as f:
        # The card names no local paths: the data directory is the reader's own.
        lines = [line for line in f.read().splitlines()
                 if line.startswith("--") and not line.startswith("--data_dir=")]
    return config, summary, lines


def _members_flags(flag_lines: list) -> tuple[str, list]:
    """The first member's flags, and per member its flags that not all members share."""
    shared = set.intersection(*(set(lines) for lines in flag_lines))
    return "\n".join(flag_lines[0]), [[line for line in lines if line not in shared]
                                       for lines in flag_lines]


def package(workdir, evaluation: str, name: str, output_dir: str | None = None, *,
            model_path: str | None = None, calibration_report: str | None = None,
            ood_report: str | None = None) -> dict:
    """Packages one training run (`workdir`), or a deep ensemble (`deeplense_tf.ensemble`)
    of several (`workdir` a list or comma-separated, `model_path` the ensemble, its
    members in the same order)."""
    import keras

    import deeplense_tf.models  # noqa: F401
    from deeplense_tf import input_pipeline, models
    from deeplense_tf.ensemble import COMBINE_LAYER
    from deeplense_tf.simulation import instruments, recipes

    output_dir = output_dir or os.path.dirname(os.path.abspath(__import__(
        "deeplense_tf.pretrained", fromlist=["_"]).__file__))
    workdirs = workdir.split(",") if isinstance(workdir, str) else list(workdir)
    metrics = _read_json(os.path.join(evaluation, "metrics.json"))
    if metrics["split"] != "test":
        raise ValueError(f"{evaluation}: evaluated on {metrics['split']!r}; model cards quote "
                         "the test split")
    runs = [_run(w, metrics, evaluation) for w in workdirs]
    config = runs[0][0]
    if len(runs) > 1 and not model_path:
        raise ValueError(f"--workdir={','.join(workdirs)}: several runs are a deep ensemble; "
                         "give --model=ENSEMBLE.keras (python -m deeplense_tf.ensemble)")
    model = keras.saving.load_model(model_path or os.path.join(workdirs[0], "model.keras"),
                                    compile=False)
    try:
        members = len(model.get_layer(COMBINE_LAYER).member_target_mean)
    except ValueError:
        members = 1
    if members != len(runs):
        raise ValueError(f"--model={model_path}: a model of {members} member(s), but "
                         f"--workdir names {len(runs)} run(s); give one run per member")
    from deeplense_tf import training
    from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as dl

    config_name = config["dataset"].split("/")[1].split(":")[0].split("__")[0]
    builder_config = dl.Builder.builder_configs.get(config_name)
    if builder_config is None or not builder_config.recipe:
        raise ValueError(f"{config['dataset']}: not a simulation config; model cards describe "
                         "models trained on simulated data sets")
    recipe = recipes.get(builder_config.recipe)
    instrument = instruments.get(recipe.instrument)
    data_path = input_pipeline.dataset_path(config["data_dir"], config["dataset"])
    cost = models.count_params_and_flops(model)
    flagfile, differences = _members_flags([lines for _, _, lines in runs])
    extras = _extras(calibration_report, ood_report)  # a bad report fails before any file is written

    size = _save_model(model, output_dir, name)

    summaries = [summary for _, summary, _ in runs]
    meta = {
        "name": name,
        "targets": models.target_names(model),
        "head": training.HEAD_OF_LOSS[config["loss"]],
        "image_shape": list(model.input_shape[1:]),
        "instrument": instrument.name,
        "instrument_description": instrument.description,
        "pixel_scale_arcsec": instrument.pixel_scale_arcsec,
        "dataset": config["dataset"],
        "dataset_version": data_path.name,
        "recipe": recipe.description,
        "model": config["model"], "variant": config["variant"] or models.default_variant(config["model"]),
        "model_overrides": config["model_overrides"], "normalization": config["normalization"],
        **({"macro_twin": builder_config.recipe} if config.get("macro_twin") else {}),
        "parameters": cost.params, "flops_per_image": cost.flops_per_image,
        "size_mb": round(size / 2**20, 2),
        "train_seconds": (sum(s.get("train_seconds") or 0 for s in summaries)
                          if len(runs) > 1 else summaries[0].get("train_seconds")),
        "machine": summaries[0].get("machine"),
        "steps": sum(s["steps"] for s in summaries), "best_epoch": summaries[0]["best_epoch"],
        "test": _test_section(metrics),
        **_joint(metrics),
        "num_test_examples": metrics["num_examples"],
        "outputs": sorted(model.output),
        **extras,
    }
    if len(runs) > 1:
        meta["ensemble_members"] = [
            {"model": c["model"], "variant": c["variant"] or models.default_variant(c["model"]),
             "steps": s["steps"], "best_epoch": s["best_epoch"],
             "train_seconds": s.get("train_seconds"), "flags_differing": d}
            for (c, s, _), d in zip(runs, differences)]
    parent = os.path.join(workdirs[0], "parent.json")
    if os.path.exists(parent):  # a fine-tuned run (train --init_from)
        meta["parent"] = _read_json(parent)
    _write_card(meta, flagfile, metrics, output_dir)
    return meta


def model_card(meta: dict, flagfile: str, metrics: dict) -> str:
    hours = (meta["train_seconds"] or 0) / 3600
    lines = [
        f"# Model card: `{meta['name']}`", "",
        f"{meta['model']} ({meta['variant']}, overrides {meta['model_overrides'] or 'none'}) "
        f"regressing {', '.join(meta['targets'])} with a {meta['head']} head "
        f"({meta['parameters']:,} parameters, {meta['flops_per_image'] / 1e9:.2f} GFLOPs per "
        f"image, {meta['size_mb']} MB).", "",
        "## Data", "",
        f"- Data set: `{meta['dataset']}`, version {meta['dataset_version']}: {meta['recipe']}",
        f"- Instrument: {meta['instrument']} — {meta['instrument_description']} Input: raw "
        f"{meta['image_shape'][0]}x{meta['image_shape'][1]} images in the simulation's units; "
        f"image normalization ({meta['normalization']}) and target scaling are inside the model.",
        "", "## Training", "",
        *([f"- A deep ensemble of {len(meta['ensemble_members'])} members trained separately "
           "(`python -m deeplense_tf.ensemble`): the mean is the members' average, the "
           "variance the mixture's; calibration and the OOD flag are fitted on the ensemble. "
           f"{hours:.2f} h of training in all on {meta['machine']}; each member's steps, best "
           "epoch (the weights used) and time:", ""]
          + [f"  {i}. {m['model']} ({m['variant']}): {m['steps']} steps, epoch "
             f"{m['best_epoch'] + 1}, {(m['train_seconds'] or 0) / 3600:.2f} h"
             + (f"; its flags not shared by all members: "
                f"{', '.join('`' + f + '`' for f in m['flags_differing'])}"
                if m["flags_differing"] else "")
             for i, m in enumerate(meta["ensemble_members"], 1)] + [""]
          if "ensemble_members" in meta else
          [f"- {meta['steps']} steps, best validation loss at epoch {meta['best_epoch'] + 1} (the "
           f"weights shipped), {hours:.2f} h on {meta['machine']}."]),
        *([f"- Started from `{meta['parent'].get('shipped_name') or meta['parent']['file']}` "
           f"(sha256 {meta['parent']['sha256'][:12]}..., trained on "
           f"`{meta['parent']['dataset']}`); the time above is this run's alone."]
          if "parent" in meta else []),
        f"- Flags{' of the first member' if 'ensemble_members' in meta else ''} (replay with "
        "`python -m deeplense_tf.train --flagfile=<this block> --data_dir=DATA "
        "--workdir=RUN`):", "", "```", flagfile.strip(), "```", "",
        f"## Test metrics ({meta['num_test_examples']} examples, the whole test split)", "",
        "| target | predictor | MAE | RMSE | R^2 | bias |", "|---|---|---|---|---|---|"]
    for target, r in meta["test"].items():
        for label, m in (("model", r["model"]), ("model + dihedral TTA", r.get("tta")),
                         ("constant (training mean)", r["constant_baseline"])):
            if m:
                lines.append(f"| {target} | {label} | {m['mae']:.4f} | {m['rmse']:.4f} | "
                             f"{m['r2']:.3f} | {m['bias']:+.4f} |")
    lines.append("")
    for target, r in meta["test"].items():
        if "gaussian" in r:
            g = r["gaussian"]
            how = ("intervals calibrated on the validation split (below)" if g.get("calibrated")
                   else "Gaussian intervals")
            lines += [f"Uncertainty ({target}, {how}): 68% interval coverage "
                      f"{g['coverage_68']:.3f}, 95% coverage {g['coverage_95']:.3f}"
                      + (f", largest deviation of the calibration curve from the diagonal "
                         f"{g['max_calibration_deviation']:.3f}"
                         if "max_calibration_deviation" in g else "")
                      + f"; mean NLL of the head's Gaussian {g['nll']:.3f}.", ""]
    if "joint" in meta:
        j = meta["joint"]
        lines += [f"Joint uncertainty ({', '.join(j['targets'])}, the head's full covariance, "
                  "before the marginal interval calibration: its sigmas are `_std / k(0.68)` "
                  "with k below): the "
                  f"truth lies inside the predicted 68% ellipse for {j['coverage_68']:.3f} of the "
                  f"test lenses and inside the 95% one for {j['coverage_95']:.3f}; mean joint "
                  f"NLL {j['nll']:.3f}. Predicted correlations against those of the errors: "
                  + "; ".join(f"{pair.replace('__', ' and ')} {c['predicted_median']:+.2f} "
                              f"(median) against {c['of_the_errors']:+.2f}"
                              for pair, c in j["correlations"].items()) + ".", ""]
    for target, r in meta["test"].items():
        if "floor" in r:
            f = r["floor"]
            lines += [f"Against the information floor ({target}): on {f['count']} test images "
                      "with an exact-likelihood reference posterior (`python -m "
                      f"deeplense_tf.reference`), MAE {f['model_mae']:.4f}"
                      + (f" ({f['model_tta_mae']:.4f} with TTA)" if "model_tta_mae" in f else "")
                      + f" against the floor's {f['floor_mae']:.4f}: "
                      f"{f['model_over_floor']:.2f}x the floor.", ""]
    lines += ["Error across the target range (test split):", "",
              "| true value bin | count | MAE | constant MAE | median prediction | 68% coverage |",
              "|---|---|---|---|---|---|"]
    for target, r in metrics["targets"].items():
        for b in r["binned"]:
            if b["count"]:
                lines.append(f"| {target} [{b['low']:.2f}, {b['high']:.2f}) | {b['count']} | "
                             f"{b['mae']:.3f} | {b['constant_mae']:.3f} | "
                             f"{b['median_prediction']:.3f} | {b.get('coverage_68', float('nan')):.2f} |")
    if "calibration" in meta:
        lines += ["", "## Interval calibration", "",
                  f"Fitted on the `{meta['calibration']['split']}` split of "
                  f"`{meta['calibration']['dataset']}` (`python -m deeplense_tf.calibrate`): the "
                  "central interval of level p is mean +- k(p) sigma, k the validation quantile "
                  "of |error| / sigma, stored in the model (`_std`, `_q16`, `_q84`, `_q025`, "
                  "`_q975` outputs).", "", "| target | validation coverage before (68% / 95%) | "
                  "k(0.68) | k(0.95) |", "|---|---|---|---|"]
        for target, c in meta["calibration"]["targets"].items():
            lines.append(f"| {target} | {c['uncalibrated_coverage_68']:.3f} / "
                         f"{c['uncalibrated_coverage_95']:.3f} | {c['half_width_68_in_sigma']:.3f} "
                         f"| {c['half_width_95_in_sigma']:.3f} |")
    if "ood" in meta:
        o = meta["ood"]
        lines += ["", "## Out-of-distribution flag", "",
                  f"`ood_flag` = 1 when `ood_score` > {o['threshold']:.3f}, the "
                  f"{o['quantile']:.2f} quantile of the score on the validation split (`python -m "
                  "deeplense_tf.ood`; feature and pixel-statistic Mahalanobis distances to "
                  f"{o['train_examples']} training images). Fraction flagged:", "",
                  "| images | flagged |", "|---|---|"]
        for what, rate in o["flagged"].items():
            lines.append(f"| {what} | {rate:.1%} |")
    lines += ["", "## Known limits", ""]
    if meta.get("macro_twin"):
        lines.append(
            f"- Reads each image beside its residual from the `{meta['macro_twin']}` macro-model "
            "twin (the recipe's fixed lens with the vortex's mass at the centre, the source "
            "centre fitted inside the model): for images of that recipe only, in the "
            "simulator's orientation (no test-time augmentation). A lens that is not this "
            "recipe's leaves a residual the network has never seen.")
    for target in meta["targets"]:
        if target in PLATEAU_NOTE:
            lines.append(f"- {PLATEAU_NOTE[target]}")
        worse = [b for b in metrics["targets"][target]["binned"]
                 if b["count"] and b["mae"] > b["constant_mae"]]
        if worse:
            lines.append(
                f"- {target}: where the model does worse than the constant predictor (MAE "
                "against the constant's): "
                + ", ".join(f"[{b['low']:.2f}, {b['high']:.2f}): {b['mae']:.2f} against "
                            f"{b['constant_mae']:.2f}" for b in worse)
                + "; there it pulls the predictions toward neighbouring values.")
        miscalibrated = [b for b in metrics["targets"][target]["binned"]
                         if b["count"] and abs(b.get("coverage_68", 0.68) - 0.68) > 0.15]
        if miscalibrated:
            lines.append(
                f"- {target}: the coverage of the 68% intervals varies across the range ("
                + ", ".join(f"[{b['low']:.2f}, {b['high']:.2f}): {b['coverage_68']:.2f}"
                            for b in miscalibrated) + ").")
    lines += [
        "- Trained on simulations only (Sersic sources, SIE + shear lenses, a DeepLense vortex): "
        "real lenses with complex sources, lens light or other substructure are out of "
        "distribution.",
        f"- Only for {meta['instrument']} images of exactly this size, pixel scale and units.",
        "", f"Use: `deeplense_tf.pretrained.predict({meta['name']!r}, images)`.", ""]
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("workdir", None, "Training run directory, or the members' runs of an "
                        "ensemble, comma-separated (or give --update_shipped).")
    flags.DEFINE_bool("update_shipped", False, "Replace the shipped model --name by --model "
                      "(calibrated / with OOD outputs), keeping its card's training facts; "
                      "without --model, requote the shipped network's numbers from "
                      "--evaluation (which must reproduce its test metrics).")
    flags.DEFINE_string("model", None, "The .keras file to ship (default RUN/model.keras).")
    flags.DEFINE_string("evaluation", None, "Evaluation output directory (test split).",
                        required=True)
    flags.DEFINE_string("name", None, "Name of the shipped model.", required=True)
    flags.DEFINE_string("calibration_report", None, "JSON printed by deeplense_tf.calibrate.")
    flags.DEFINE_string("ood_report", None, "ood.json written by deeplense_tf.ood.")
    flags.DEFINE_string("output_dir", None, "Default: the package's pretrained/ folder.")


def main(argv):
    del argv
    console.setup()
    if FLAGS.update_shipped:
        meta = update_shipped(FLAGS.name, FLAGS.model, FLAGS.evaluation,
                              calibration_report=FLAGS.calibration_report,
                              ood_report=FLAGS.ood_report, output_dir=FLAGS.output_dir)
    elif not FLAGS.workdir:
        raise app.UsageError("give --workdir (a training run) or --update_shipped")
    else:
        meta = package(FLAGS.workdir, FLAGS.evaluation, FLAGS.name, FLAGS.output_dir,
                       model_path=FLAGS.model, calibration_report=FLAGS.calibration_report,
                       ood_report=FLAGS.ood_report)
    print(json.dumps({k: meta[k] for k in ("name", "size_mb", "test")}, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
