"""Runs the reference estimator over a split: chunked, on all cores, resumable.

Layout of an output directory:

    run.json            what is being computed (data set, split, recipe, settings, images)
    chunks/chunk_SSSSSS_EEEEEE.npz   finished chunks, written whole (temporary name, then
                        renamed): a killed run loses at most the chunks in flight
    posteriors.npz      every image's posterior and summaries, once all chunks are done
    reference.json      the floor: metrics of the posterior medians and means, interval
                        coverage, binned like `evaluate`; CPU time per image
    report.md, *.png    the same for people

Images are identified by their position in the split's file order (the order
`evaluate` reads them in), with their stored target kept beside them so that a join
with a model's predictions can be checked value for value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zipfile

import numpy as np
from scipy import stats

from deeplense_tf.reference import quadrature
from deeplense_tf.reference.vortex import Settings, VortexReference

TARGET = "log10_m_axion"
# The stored nuisance parameters that, with the target, fix the likelihood's true slice.
NUISANCES = ("vortex_angle", "source_center_x", "source_center_y")
# The quadrature "missed the mode" of an image when the true (m, angle) slice beats the
# best slice it found by more than this (nats).
MODE_GAP_NATS = 5.0
# Stored posterior nodes per image (padded with NaN; compressed on disk). Chunks written
# with fewer are padded on reading. The doubled quadrature with several teeth needs > 512.
MAX_NODES = 2048
NOMINAL = np.round(np.linspace(0.05, 0.95, 19), 3)  # central-interval levels, as `evaluate`
BIN_EDGES = np.linspace(-24.0, -22.0, 11)  # the prior range in ten bins
# Per-image arrays of a chunk and of posteriors.npz.
_FIELDS = ("index", "truth", "median", "mean", "std", "q025", "q16", "q84", "q975", "pit",
           "map_log10_m", "map_angle", "map_center_x", "map_center_y", "evaluations",
           "cpu_seconds", "num_nodes", "nodes", "log_density")


class ReferenceError(ValueError):
    """A reference run that cannot go on; the message says what to do."""


def summarize(posterior, truth: float, index: int) -> dict:
    """The stored record of one image's posterior."""
    q = posterior.quantile([0.025, 0.16, 0.5, 0.84, 0.975])
    mean, std = posterior.mean_and_std()
    n = len(posterior.log10_m)
    if n > MAX_NODES:
        raise ReferenceError(f"image {index}: {n} posterior nodes exceed the {MAX_NODES} stored")
    nodes = np.full(MAX_NODES, np.nan)
    logs = np.full(MAX_NODES, np.nan)
    nodes[:n], logs[:n] = posterior.log10_m, posterior.log_density
    return {"index": index, "truth": truth, "median": q[2], "mean": mean, "std": std,
            "q025": q[0], "q16": q[1], "q84": q[3], "q975": q[4],
            "pit": float(posterior.cdf(truth)[0]), "map_log10_m": posterior.map_log10_m,
            "map_angle": posterior.map_angle, "map_center_x": posterior.map_source_center[0],
            "map_center_y": posterior.map_source_center[1],
            "evaluations": posterior.evaluations, "cpu_seconds": posterior.cpu_seconds,
            "num_nodes": n, "nodes": nodes, "log_density": logs}


def stack(records: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in _FIELDS}


# ------------------------------------------------------------------------ workers

_WORKER = None


def _init_worker(recipe, settings):
    global _WORKER
    _WORKER = VortexReference(recipe, settings)


def _posterior_chunk(task):
    start, images, truths = task
    records = []
    for offset, (image, truth) in enumerate(zip(images, truths)):
        posterior = _WORKER.posterior(image)
        records.append(summarize(posterior, float(truth), start + offset))
    return start, stack(records)


# ------------------------------------------------------------------------- chunks


def _chunk_path(output_dir, start, stop):
    return os.path.join(output_dir, "chunks", f"chunk_{start:06d}_{stop:06d}.npz")


def _write_npz(path, arrays):
    """Written under a temporary name and renamed: a file under `path` is always whole."""
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def read_chunk(path, start, stop, truths) -> dict[str, np.ndarray]:
    """A finished chunk, checked against the images it claims to cover."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in _FIELDS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise ReferenceError(
            f"{path}: a corrupt or incomplete chunk file ({type(error).__name__}: {error}). "
            "Delete this file to compute its images again; the other chunks are kept.") from None
    expected = np.arange(start, stop)
    if not np.array_equal(arrays["index"], expected) or not np.array_equal(
            arrays["truth"].astype(np.float32), np.asarray(truths, np.float32)):
        raise ReferenceError(
            f"{path}: holds images {arrays['index'][:3]}... with other truths than the split's "
            f"images {start}..{stop - 1}; it belongs to another run. Delete it to recompute.")
    for key in ("nodes", "log_density"):
        width = arrays[key].shape[1]
        if width < MAX_NODES:
            arrays[key] = np.pad(arrays[key], ((0, 0), (0, MAX_NODES - width)),
                                 constant_values=np.nan)
    return arrays


# --------------------------------------------------------------------------- run


@dataclasses.dataclass
class RunSpec:
    dataset: str
    split: str
    recipe: str
    num_images: int
    chunk_size: int
    settings: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def run(recipe, images: np.ndarray, truths: np.ndarray, output_dir: str, *, dataset: str,
        split: str, settings: Settings = Settings(), chunk_size: int = 25,
        num_workers: int = 1, log=print, nuisances: dict | None = None) -> dict:
    """Posteriors for `images` (N, H, W[, 1]) with true targets `truths`, written into
    `output_dir` chunk by chunk; chunks already there are kept. Returns the summary.
    With the images' true `nuisances` ({name: (N,)} for `NUISANCES`) the summary also
    says for how many the quadrature missed the likelihood's mode (`mode_gaps`)."""
    from deeplense_tf.simulation import parallel

    reference = VortexReference(recipe, settings)  # fails now, not in a worker, if bad
    images = np.asarray(images, np.float32)
    truths = np.asarray(truths, np.float32)
    if len(images) != len(truths) or len(images) == 0:
        raise ReferenceError(f"images and truths: need the same, non-zero length, got "
                             f"{len(images)} and {len(truths)}")
    if chunk_size < 1:
        raise ReferenceError(f"chunk_size: must be >= 1, got {chunk_size}")
    spec = RunSpec(dataset, split, recipe.name, len(images), chunk_size,
                   dataclasses.asdict(settings))
    os.makedirs(os.path.join(output_dir, "chunks"), exist_ok=True)
    spec_path = os.path.join(output_dir, "run.json")
    if os.path.exists(spec_path):
        with open(spec_path) as f:
            stored = json.load(f)
        if stored != spec.to_json():
            differ = sorted(k for k in spec.to_json() if stored.get(k) != spec.to_json()[k])
            raise ReferenceError(
                f"{output_dir}: holds a run of other {differ} ({ {k: stored.get(k) for k in differ} }"
                f"); use another --output_dir, or the same flags to resume it")
    else:
        tmp = spec_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(spec.to_json(), f, indent=2)
        os.replace(tmp, spec_path)

    bounds = [(s, min(s + chunk_size, len(images))) for s in range(0, len(images), chunk_size)]
    done = {}
    for start, stop in bounds:
        path = _chunk_path(output_dir, start, stop)
        if os.path.exists(path):
            done[start] = read_chunk(path, start, stop, truths[start:stop])
    todo = [(s, e) for s, e in bounds if s not in done]
    log(f"reference: {len(images)} images of {dataset} {split} in {len(bounds)} chunks; "
        f"{len(done)} done before, {len(todo)} to go on {num_workers} worker(s)")
    tasks = [(s, images[s:e], truths[s:e]) for s, e in todo]
    wall0 = time.time()
    finished = 0

    def store(start, arrays):
        nonlocal finished
        stop = start + len(arrays["index"])
        _write_npz(_chunk_path(output_dir, start, stop), arrays)
        done[start] = arrays
        finished += len(arrays["index"])
        elapsed = time.time() - wall0
        remaining = sum(e - s for s, e in todo) - finished
        log(f"reference: chunk {start}-{stop - 1} written ({np.mean(arrays['cpu_seconds']):.1f} s "
            f"CPU/image); {len(done)}/{len(bounds)} chunks, about "
            f"{remaining * elapsed / max(finished, 1) / 60:.0f} min to go")

    if tasks and (num_workers <= 1 or len(tasks) == 1):
        _init_worker(recipe, settings)
        for task in tasks:
            store(*_posterior_chunk(task))
    elif tasks:
        with parallel.spawn_pool(min(num_workers, len(tasks)), _init_worker,
                                 (recipe, settings)) as pool:
            for start, arrays in pool.imap_unordered(_posterior_chunk, tasks):
                store(start, arrays)

    merged = {k: np.concatenate([done[s][k] for s, _ in bounds]) for k in _FIELDS}
    if nuisances is not None:
        merged["mode_gap"] = mode_gaps(reference, images, truths, nuisances, merged)
    _write_npz(os.path.join(output_dir, "posteriors.npz"), merged)
    summary = metrics(merged)
    summary.update(spec.to_json())
    summary.pop("settings")
    summary["settings"] = spec.settings
    _write_json(os.path.join(output_dir, "reference.json"), summary)
    write_report(summary, merged, output_dir)
    return summary


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ------------------------------------------------------------------------ metrics


def mode_gaps(reference: VortexReference, images, truths, nuisances: dict, arrays) -> np.ndarray:
    """Per image, ln of the source-marginal likelihood at the true (m, angle) minus at the
    posterior's MAP (nats; source-centre fits started from the true and the MAP centre).

    Well below zero where the quadrature found the likelihood's highest region. Above
    `MODE_GAP_NATS` it did not: for long vortices (light axions) ln L in (m, angle) is a
    comb of spikes narrower than any grid, and the posterior the quadrature integrated
    sits on a lesser spike, so that image's median and intervals are not the exact
    posterior's (its median error is then an upper bound of the exact one)."""
    missing = [k for k in NUISANCES if k not in nuisances]
    if missing:
        raise ReferenceError(f"mode check: the true {missing} of the images are needed")
    gaps = np.empty(len(arrays["index"]))
    for row, i in enumerate(arrays["index"]):
        image = reference._image(images[i])
        true_c = np.array([nuisances["source_center_x"][i], nuisances["source_center_y"][i]])
        map_c = np.array([arrays["map_center_x"][row], arrays["map_center_y"][row]])
        at_truth, _ = reference.source_marginal(
            image, reference.rays(float(truths[i]), float(nuisances["vortex_angle"][i])), true_c)
        at_map, _ = reference.source_marginal(
            image, reference.rays(float(arrays["map_log10_m"][row]),
                                  float(arrays["map_angle"][row])), map_c)
        gaps[row] = at_truth - at_map
    return gaps


def _binned(values, row) -> list[dict]:
    """Per bin of `values` over BIN_EDGES: its edges, count and, if not empty, row(selection)."""
    index = np.clip(np.digitize(values, BIN_EDGES) - 1, 0, len(BIN_EDGES) - 2)
    out = []
    for b in range(len(BIN_EDGES) - 1):
        sel = index == b
        out.append({"low": float(BIN_EDGES[b]), "high": float(BIN_EDGES[b + 1]),
                    "count": int(sel.sum()), **(row(sel) if sel.any() else {})})
    return out


def metrics(arrays) -> dict:
    """The floor and the posterior's own calibration, over all images of a run."""
    truth = arrays["truth"].astype(np.float64)
    median, mean = arrays["median"], arrays["mean"]
    pit = arrays["pit"]
    central = np.abs(pit - 0.5)  # truth inside the central interval of level p iff <= p / 2
    empirical = [float(np.mean(central <= p / 2)) for p in NOMINAL]
    missed = arrays["mode_gap"] > MODE_GAP_NATS if "mode_gap" in arrays else None

    def truth_bin(sel):
        row = dict(mae=float(np.mean(np.abs(median[sel] - truth[sel]))),
                   bias=float(np.mean(median[sel] - truth[sel])),
                   rmse_of_mean=float(np.sqrt(np.mean((mean[sel] - truth[sel]) ** 2))),
                   coverage_68=float(np.mean(central[sel] <= 0.34)),
                   mean_posterior_std=float(np.mean(arrays["std"][sel])))
        if missed is not None:
            row["mode_missed"] = float(np.mean(missed[sel]))
        return row

    def median_bin(sel):
        return dict(coverage_68=float(np.mean(central[sel] <= 0.34)),
                    coverage_95=float(np.mean(central[sel] <= 0.475)),
                    binomial_2sigma_68=float(2 * math.sqrt(0.68 * 0.32 / sel.sum())))

    # Binned by the truth, coverage need not be nominal even for the exact posterior (a
    # flat posterior's central interval misses truths near its ends, so bins at the ends of
    # a plateau fall short and bins in its middle exceed). Binned by the posterior median,
    # a function of the image alone, it must be: the exact posterior covers at its nominal
    # rate given every image, hence in any set of images chosen by the images alone.
    binned = _binned(truth, truth_bin)
    by_median = _binned(median, median_bin)
    n = len(truth)
    cpu = arrays["cpu_seconds"]
    mode = {} if missed is None else {
        "mode_missed": float(np.mean(missed)),
        "mode_gap_nats": {"threshold": MODE_GAP_NATS,
                          "median_where_missed": float(np.median(arrays["mode_gap"][missed]))
                          if missed.any() else None},
        # The exact posterior's error cannot be below zero: with the images whose mode was
        # missed counted as exact, the floor is at least this.
        "floor_mae_lower_bound": float(np.mean(np.where(missed, 0.0, np.abs(median - truth)))),
        "coverage_68_mode_found": float(np.mean(central[~missed] <= 0.34))
        if (~missed).any() else None,
        "coverage_95_mode_found": float(np.mean(central[~missed] <= 0.475))
        if (~missed).any() else None,
    }
    return {
        "target": TARGET,
        "count": int(n),
        "floor_mae": float(np.mean(np.abs(median - truth))),
        "floor_mae_standard_error": float(np.std(np.abs(median - truth)) / math.sqrt(n)),
        "rmse_of_mean": float(np.sqrt(np.mean((mean - truth) ** 2))),
        "median_absolute_error": float(np.median(np.abs(median - truth))),
        "coverage_68": float(np.mean(central <= 0.34)),
        "coverage_95": float(np.mean(central <= 0.475)),
        "coverage_binomial_2sigma_68": float(2 * math.sqrt(0.68 * 0.32 / n)),
        "coverage_binomial_2sigma_95": float(2 * math.sqrt(0.95 * 0.05 / n)),
        # The exact posterior's PIT (its CDF at the truth) is uniform over images drawn
        # from the prior: the counts in ten equal bins, and the KS test's p-value.
        "pit_histogram": np.histogram(pit, bins=10, range=(0.0, 1.0))[0].tolist(),
        "pit_ks_pvalue": float(stats.kstest(pit, "uniform").pvalue),
        "calibration": {"nominal": NOMINAL.tolist(), "empirical": empirical},
        "binned": binned,
        "coverage_by_posterior_median": by_median,
        "cpu_seconds_per_image": {"median": float(np.median(cpu)), "mean": float(np.mean(cpu)),
                                  "p90": float(np.quantile(cpu, 0.9))},
        "evaluations_per_image": {"median": float(np.median(arrays["evaluations"])),
                                  "mean": float(np.mean(arrays["evaluations"]))},
        **mode,
    }


def load(output_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(reference.json, posteriors.npz arrays) of a finished run."""
    summary_path = os.path.join(output_dir, "reference.json")
    arrays_path = os.path.join(output_dir, "posteriors.npz")
    for path in (summary_path, arrays_path):
        if not os.path.exists(path):
            raise ReferenceError(f"--reference={output_dir}: no {os.path.basename(path)}; the "
                                 "reference run is not finished (run `python -m "
                                 "deeplense_tf.reference` with the same flags to complete it)")
    with open(summary_path) as f:
        summary = json.load(f)
    with np.load(arrays_path) as data:
        arrays = {k: data[k] for k in data.files}
    return summary, arrays


def posterior_of(arrays, i: int):
    """(nodes, normalized ln density) of image i of a run."""
    n = int(arrays["num_nodes"][i])
    return arrays["nodes"][i, :n], arrays["log_density"][i, :n]


# ------------------------------------------------------------------------- report


def write_report(summary: dict, arrays: dict, output_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deeplense_tf import plots

    truth, median = arrays["truth"], arrays["median"]
    rows = [r for r in summary["binned"] if r["count"]]
    centres = [(r["low"] + r["high"]) / 2 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    ax = axes[0]
    ax.scatter(truth, median, s=3, alpha=0.4)
    ax.errorbar(truth[:200], median[:200], yerr=[median[:200] - arrays["q16"][:200],
                                                  arrays["q84"][:200] - median[:200]],
                fmt="none", lw=0.5, alpha=0.4, color="grey")
    ax.plot([-24, -22], [-24, -22], "k--", lw=1)
    ax.set_xlabel(f"true {TARGET}")
    ax.set_ylabel("posterior median")
    ax = axes[1]
    ax.plot(centres, [r["mae"] for r in rows], "o-", label="posterior median (floor)")
    ax.plot(centres, [r["mean_posterior_std"] for r in rows], ":", label="mean posterior std")
    ax.set_xlabel(f"true {TARGET}")
    ax.set_ylabel("mean absolute error")
    ax.legend(fontsize=7)
    ax = axes[2]
    cal = summary["calibration"]
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(cal["nominal"], cal["empirical"], "o-")
    ax.set_xlabel("nominal coverage of central interval")
    ax.set_ylabel("fraction of truths inside")
    fig.tight_layout()
    with open(os.path.join(output_dir, "reference.png"), "wb") as f:
        f.write(plots.to_png(fig))
    lines = [
        f"# Reference posterior: {summary['dataset']}, split `{summary['split']}`", "",
        f"{summary['count']} images (the first in the split's file order), recipe "
        f"`{summary['recipe']}`; exact likelihood with the angle and source centre "
        "marginalized (`deeplense_tf.reference`).", "",
        "| quantity | value |", "|---|---|",
        f"| floor: MAE of the posterior median | {summary['floor_mae']:.4f} ± "
        f"{summary['floor_mae_standard_error']:.4f} |",
        f"| RMSE of the posterior mean | {summary['rmse_of_mean']:.4f} |",
        f"| coverage of the central 68% / 95% intervals | {summary['coverage_68']:.3f} / "
        f"{summary['coverage_95']:.3f} |",
        f"| PIT counts in ten equal bins (uniform for the exact posterior); KS p-value | "
        f"{' '.join(str(c) for c in summary['pit_histogram'])}; {summary['pit_ks_pvalue']:.3g} |",
        f"| CPU seconds per image (median / mean / 90%) | "
        f"{summary['cpu_seconds_per_image']['median']:.1f} / "
        f"{summary['cpu_seconds_per_image']['mean']:.1f} / "
        f"{summary['cpu_seconds_per_image']['p90']:.1f} |", "",
        "| bin | count | floor MAE | bias | RMSE of mean | 68% coverage | mean posterior std |",
        "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| [{r['low']:.1f}, {r['high']:.1f}) | {r['count']} | {r['mae']:.4f} | "
                     f"{r['bias']:+.4f} | {r['rmse_of_mean']:.4f} | {r['coverage_68']:.2f} | "
                     f"{r['mean_posterior_std']:.4f} |")
    lines += ["", "Coverage binned by the posterior median (a choice of images by the images "
              "alone, where the exact posterior must cover at the nominal rate; binned by "
              "the truth it need not):", "",
              "| posterior-median bin | count | 68% coverage | 95% coverage | 2σ at 68% |",
              "|---|---|---|---|---|"]
    for r in summary.get("coverage_by_posterior_median", []):
        if r["count"]:
            lines.append(f"| [{r['low']:.1f}, {r['high']:.1f}) | {r['count']} | "
                         f"{r['coverage_68']:.2f} | {r['coverage_95']:.2f} | "
                         f"±{r['binomial_2sigma_68']:.2f} |")
    lines += ["", "![posterior median against truth, binned floor, calibration](reference.png)", ""]
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def recipe_of_config(config_name: str) -> str:
    """Recipe name of a `deeplense_lensing` config name (sized or `_tiny` variants too)."""
    base = config_name.split("__")[0]
    return base[: -len("_tiny")] if base.endswith("_tiny") else base


def quantiles_of(arrays, i, q):
    nodes, logs = posterior_of(arrays, i)
    return quadrature.quantile(nodes, logs, q)


# ------------------------------------------------- simulation-based calibration

def restrict_prior(recipe, low: float, high: float):
    """`recipe` with its target drawn from U(low, high), a part of its own uniform prior.

    The reference takes its prior from the recipe, so images simulated from the
    restricted recipe and their posteriors under it make an exact calibration test of
    that part of the range (a plateau, the light end) for a fraction of the cost of the
    whole prior."""
    from deeplense_tf.simulation import priors
    from deeplense_tf.reference.vortex import nuisance_check

    full = nuisance_check(recipe)["m_range"]
    if not (math.isfinite(low) and math.isfinite(high) and full[0] <= low < high <= full[1]):
        raise ReferenceError(f"prior [{low}, {high}]: expected low < high inside the prior of "
                             f"{TARGET} of recipe {recipe.name!r}, [{full[0]}, {full[1]}]")
    (name, vortex), = recipe.substructures.items()
    return dataclasses.replace(recipe, substructures={
        name: dataclasses.replace(vortex, log10_m_axion=priors.Uniform(low, high))})


def simulate_images(recipe, count: int, seed: int, num_workers: int = 1):
    """(images, truths, nuisances) of `count` fresh images of `recipe`: its simulator's
    test-split stream of data-set seed `seed` (seed 0 repeats the test images of a data
    set built with seed 0, in index order; any other seed gives images no model was
    selected on)."""
    from deeplense_tf.simulation import parallel

    if count < 1:
        raise ReferenceError(f"count: need at least one image to simulate, got {count}")
    images, truths = [], []
    nuisances = {k: [] for k in NUISANCES}
    for _, lens in parallel.simulate_split(recipe, seed, 2, count, num_workers=num_workers):
        images.append(lens.image)
        truths.append(lens.params[TARGET])
        for k in NUISANCES:
            nuisances[k].append(lens.params[k])
    return (np.stack(images), np.asarray(truths, np.float32),
            {k: np.asarray(v, np.float64) for k, v in nuisances.items()})
