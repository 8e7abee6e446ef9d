r"""Exploratory data analysis of a prepared `deeplense_lensing` data set.

  python -m deeplense_tf.eda --data_dir=DIR --dataset=deeplense_lensing/CONFIG \
      --output_dir=OUT [--split=train --max_examples=N --departure_samples=N]

Writes into OUT: sample grids (per class and per target bin), pixel and per-image
statistics, target and parameter histograms, mean and standard-deviation images,
the departure of each image from its no-substructure limit, `summary.json` with the
numbers behind them, and `report.md` that shows the figures.

Reading needs only the prepared TFDS directory (`tfds.builder_from_directory`), never
the simulator. The departure study (`--departure_samples`, 0 disables it) does import
the simulator: the data set does not store the no-substructure twin of an image, so
it renders one, noiseless, from the stored parameters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import numpy as np
from absl import app, flags

from deeplense_tf import console


_NOT_TARGETS = ("image", "substructure", "params", "source_file", "name", "ra", "dec",
                "pixel_scale_in", "flux_scale", "noise_sigma")
_BORDER_PIX = 4  # Border width (pixels) used to estimate the background noise.
_GRID_COLUMNS = 6
_TARGET_BINS = 5
_STRETCH = ("asinh stretch: asinh(I / sigma_bg) with sigma_bg the background noise rms, "
            "one colour scale per figure from -3 to the 99.9th percentile")


# --------------------------------------------------------------------------- reading


def dataset_path(data_dir: str, dataset: str) -> str:
    """DIR/deeplense_lensing/CONFIG/VERSION for `dataset` = 'deeplense_lensing/CONFIG[:VERSION]'.

    Without a version, the highest prepared one (a folder with dataset_info.json)."""
    match = re.fullmatch(r"(?P<name>[\w]+)/(?P<config>[\w]+)(:(?P<version>\d+\.\d+\.\d+))?", dataset)
    if not match:
        raise ValueError(f"--dataset: expected 'deeplense_lensing/CONFIG[:VERSION]', got {dataset!r}")
    config_dir = os.path.join(data_dir, match["name"], match["config"])
    if match["version"]:
        versions = [match["version"]]
    else:  # Version folders only: TFDS builds into "incomplete.*" folders first.
        found = os.listdir(config_dir) if os.path.isdir(config_dir) else []
        versions = sorted((v for v in found if re.fullmatch(r"\d+\.\d+\.\d+", v)),
                          key=lambda v: tuple(map(int, v.split("."))))
    prepared = [v for v in versions if os.path.exists(os.path.join(config_dir, v, "dataset_info.json"))]
    if not prepared:
        raise FileNotFoundError(
            f"--dataset={dataset}: no prepared data set in {config_dir} (expected VERSION/"
            "dataset_info.json; build it with python -m deeplense_tf.build_dataset)")
    return os.path.join(config_dir, prepared[-1])


@dataclasses.dataclass
class Examples:
    """Examples of one split as numpy arrays (images may be absent)."""

    labels: np.ndarray  # int64 (N,)
    targets: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    images: np.ndarray | None = None  # float32 (N, H, W)


def read_examples(builder, split: str, max_examples: int | None = None,
                  with_images: bool = True) -> Examples:
    """The first `max_examples` of `split` in file order (TFDS shuffles at write time,
    so this is a random subset). Without images the ZLIB payload is never inflated."""
    import tensorflow_datasets as tfds

    decoders = None if with_images else {"image": tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(try_autocache=False))
    if max_examples is not None:
        ds = ds.take(max_examples)
    batches = list(tfds.as_numpy(ds.batch(1024)))
    if not batches:
        raise ValueError(f"split {split!r} of {builder.info.full_name} is empty")

    def cat(key, sub=None):
        return np.concatenate([b[key] if sub is None else b[key][sub] for b in batches])

    targets = [k for k in builder.info.features if k not in _NOT_TARGETS]
    params = list(builder.info.features["params"]) if "params" in builder.info.features else []
    labels = cat("substructure")
    # -1 is TFDS's "unknown label" (real cut-outs): the class after the named ones.
    labels = np.where(labels < 0, len(builder.info.features["substructure"].names), labels)
    return Examples(labels=labels,
                    targets={k: cat(k).astype(np.float64) for k in targets},
                    params={k: cat("params", k).astype(np.float64) for k in params},
                    images=cat("image")[..., 0] if with_images else None)


# --------------------------------------------------------------------------- statistics


def _describe(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0}
    return {"count": int(values.size), "min": float(values.min()), "max": float(values.max()),
            "mean": float(values.mean()), "std": float(values.std())}


def _percentiles(values, qs=(0.1, 1, 5, 50, 95, 99, 99.9)) -> dict:
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(values, qs))}


def background_sigma(images: np.ndarray) -> np.ndarray:
    """Per-image noise rms from the border pixels (median absolute deviation x 1.4826):
    the arcs rarely reach the border, so it measures the background noise."""
    b = _BORDER_PIX
    border = np.concatenate([images[:, :b].reshape(len(images), -1),
                             images[:, -b:].reshape(len(images), -1),
                             images[:, b:-b, :b].reshape(len(images), -1),
                             images[:, b:-b, -b:].reshape(len(images), -1)], axis=1)
    med = np.median(border, axis=1, keepdims=True)
    return 1.4826 * np.median(np.abs(border - med), axis=1)


def _flux_radius(images):
    """Flux-weighted mean distance from the image centre, in pixels (ring-size proxy)."""
    n = images.shape[-1]
    c = np.arange(n) + 0.5 - n / 2
    radius = np.hypot(*np.meshgrid(c, c))
    weights = np.clip(images, 0, None)
    return (weights * radius).sum(axis=(1, 2)) / np.maximum(weights.sum(axis=(1, 2)), 1e-30)


def image_statistics(images: np.ndarray, labels: np.ndarray, class_names, sigma: float) -> dict:
    """What a researcher choosing a normalization wants to know about the pixels."""
    flat = images.reshape(-1).astype(np.float64)
    per_max, per_min = images.max(axis=(1, 2)), images.min(axis=(1, 2))
    flux, per_std = images.sum(axis=(1, 2), dtype=np.float64), images.std(axis=(1, 2))
    noise = background_sigma(images)
    positive_max = per_max[per_max > 0]
    stretched = np.arcsinh(flat / sigma)
    per_class = {}
    for label in np.unique(labels):
        mask = labels == label
        per_class[class_names[label]] = {
            "count": int(mask.sum()),
            "median_image_max": float(np.median(per_max[mask])),
            "median_total_flux": float(np.median(flux[mask])),
            "pixel_mean": float(images[mask].mean()), "pixel_std": float(images[mask].std())}
    return {
        "pixels": {**_describe(flat), **_percentiles(flat),
                   "fraction_negative": float((flat < 0).mean()),
                   "fraction_above_5_sigma_bg": float((flat > 5 * sigma).mean())},
        "per_image": {
            "max": {**_describe(per_max), **_percentiles(per_max, (5, 50, 95))},
            "min": {**_describe(per_min), **_percentiles(per_min, (5, 50, 95))},
            "total_flux": {**_describe(flux), **_percentiles(flux, (5, 50, 95))},
            "std": {**_describe(per_std), **_percentiles(per_std, (5, 50, 95))},
            "max_spread_dex_p5_to_p95": float(np.log10(
                np.percentile(positive_max, 95) / np.percentile(positive_max, 5)))
            if positive_max.size else None,
            "peak_snr_median": float(np.median(per_max / np.maximum(noise, 1e-30))),
        },
        "background": {"sigma_bg_used_for_stretch": float(sigma),
                       "border_noise_rms_median": float(np.median(noise)),
                       "border_noise_rms_p5_p95": [float(np.percentile(noise, 5)),
                                                   float(np.percentile(noise, 95))]},
        "normalization": {
            "global_mean": float(flat.mean()), "global_std": float(flat.std()),
            "global_p99_9": float(np.percentile(flat, 99.9)),
            "asinh_over_sigma_bg": _percentiles(stretched, (0.1, 50, 99.9)),
            "note": "A global scale keeps relative brightness (which carries information, "
                    "e.g. the source magnitude); per-image min-max scaling divides by a "
                    "maximum that spreads over max_spread_dex_p5_to_p95 dex, so the noise "
                    "level differs from image to image after it."},
        "per_class": per_class,
    }


def target_correlations(images, targets) -> dict:
    """Spearman correlation of each target with simple image statistics: a strong one is
    a shortcut a network may learn instead of the substructure (e.g. the ring size when
    the macro model is fixed)."""
    from scipy import stats

    features = {"total_flux": images.sum(axis=(1, 2), dtype=np.float64),
                "image_max": images.max(axis=(1, 2)),
                "flux_weighted_radius_pix": _flux_radius(images)}
    out = {}
    for name, values in targets.items():
        finite = np.isfinite(values)
        if finite.sum() < 3:
            continue
        out[name] = {}
        for feature, x in features.items():
            if np.ptp(values[finite]) == 0 or np.ptp(x[finite]) == 0:
                out[name][feature] = None  # Undefined for a constant.
                continue
            out[name][feature] = float(stats.spearmanr(values[finite], x[finite]).statistic)
    return out


def parameter_statistics(params: dict[str, np.ndarray]) -> dict:
    out = {}
    for name, values in params.items():
        desc = _describe(values)
        desc["constant"] = bool(desc["count"] and desc["min"] == desc["max"])
        out[name] = desc
    return out


# --------------------------------------------------------------------------- departure


def _recipe_for(config_name: str):
    """The simulation recipe of a config name ('euclid_axion', 'euclid_axion_tiny',
    'euclid_axion__2000_500_500_seed0'); None for imported data (npy configs)."""
    from deeplense_tf.simulation import recipes

    base = config_name.split("__")[0]
    for name in (base, base.removesuffix("_tiny")):
        if name in recipes.RECIPES:
            return recipes.RECIPES[name]
    return None


def _stored_macro_and_source(p):
    from deeplense_tf.simulation.components import MainDeflector, SersicSource
    from deeplense_tf.simulation.priors import Fixed

    deflector = MainDeflector(
        theta_e=Fixed(p["theta_e"]), e1=Fixed(p["lens_e1"]), e2=Fixed(p["lens_e2"]),
        gamma1=Fixed(p["shear_gamma1"]), gamma2=Fixed(p["shear_gamma2"]),
        center_x=Fixed(p["lens_center_x"]), center_y=Fixed(p["lens_center_y"]))
    magnitude = p.get("source_magnitude", math.nan)
    brightness = (dict(magnitude=Fixed(magnitude), amplitude=None) if math.isfinite(magnitude)
                  else dict(magnitude=None, amplitude=Fixed(p["source_amplitude"])))
    source = SersicSource(
        **brightness, r_sersic=Fixed(p["source_r_sersic"]), n_sersic=Fixed(p["source_n_sersic"]),
        e1=Fixed(p["source_e1"]), e2=Fixed(p["source_e2"]),
        center_x=Fixed(p["source_center_x"]), center_y=Fixed(p["source_center_y"]))
    return deflector, source


def _stored_vortex(p, compact: bool = False):
    """The stored vortex rendered from its stored geometry (length, angle, point count,
    mass, centred on the lens), which is exactly the realization in the image.
    `compact=True`: the same mass at the centre, the m_a -> infinity limit."""
    from deeplense_tf.simulation import substructure

    class StoredVortex(substructure.Substructure):
        name = "axion"

        def draw(self, rng, geometry, center=(0.0, 0.0), ray_spacing_arcsec=0.05):
            n = 1 if compact else int(p["vortex_n_points"])
            length = 0.0 if compact else p["vortex_length"]
            theta_e2 = float(geometry.point_mass_theta_e(p["vortex_mass"] / n) ** 2)
            return substructure.Realization(self.name, {}, lambda x, y: (
                substructure.collinear_point_mass_deflection(
                    x, y, center[0], center[1], p["vortex_angle"], length, n, theta_e2)))

    return StoredVortex()


# Priors of a substructure model that `_redrawn` fixes to the stored value.
_TARGET_PRIORS = ("log10_sigma_sub", "log10_m_axion", "log10_m_hm", "log10_sigma_over_m",
                  "slope")
_STORED_AS = {"slope": "shmf_slope"}  # a prior's stored parameter, where the names differ


def _redrawn(model, p):
    """The recipe's model with its target prior fixed to the stored value: the stored
    positions (CDM) or random field (FDM) are not in the data set, so this is a fresh
    realization with the same parameters."""
    from deeplense_tf.simulation.priors import Fixed

    fixed = {f.name: Fixed(p[_STORED_AS.get(f.name, f.name)]) for f in dataclasses.fields(model)
             if f.name in _TARGET_PRIORS
             and math.isfinite(p.get(_STORED_AS.get(f.name, f.name), math.nan))}
    return dataclasses.replace(model, **fixed) if fixed else model


def _bin_variable(class_name, params):
    for name in {"axion": ("log10_m_axion",), "fdm": ("log10_m_axion",),
                 "cdm": ("log10_sigma_sub",), "wdm": ("log10_m_hm",),
                 "sidm": ("log10_sigma_over_m",)}.get(class_name, ()):
        if name in params and np.isfinite(params[name]).any():
            return name
    return None


def departure(examples: Examples, class_names, config_name: str, num_samples: int,
              seed: int = 0, num_bins: int = 8) -> tuple[dict, dict]:
    """Delta chi^2 (in units of the noise variance) between each sampled image, rendered
    noiseless from its stored parameters, and its no-substructure twin; for the axion
    also against its m_a -> infinity limit (the vortex mass at the centre).

    The rendering is checked against the stored noisy image: `reproduction_chi2_per_pixel`
    is ~1 when the stored realization is reproduced exactly (axion: rendered from the
    stored geometry; no_sub), larger for redrawn CDM/FDM realizations.

    Returns the results (JSON-ready) and, per sampled example index, its residual maps
    (rendered minus twin, in noise standard deviations) for `residual_figure`."""
    from deeplense_tf.simulation import substructure
    from deeplense_tf.simulation.simulator import LensSimulator

    recipe = _recipe_for(config_name)
    if recipe is None or not examples.params:
        return {"skipped": f"{config_name}: no simulation recipe or stored parameters"}, {}
    candidates = np.flatnonzero(np.array([class_names[l] != "no_sub" for l in examples.labels]))
    if candidates.size == 0:
        return {"skipped": "no example with substructure"}, {}
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=min(num_samples, candidates.size), replace=False))
    rows, residuals = [], {}
    for k, i in enumerate(chosen):
        p = {name: float(v[i]) for name, v in examples.params.items()}
        name = class_names[examples.labels[i]]
        if name == "axion":
            twins = {"stored": _stored_vortex(p), "compact_limit": _stored_vortex(p, compact=True)}
        else:
            twins = {"stored": _redrawn(recipe.substructures[name], p)}
        deflector, source = _stored_macro_and_source(p)
        rendered = {}
        for twin, model in [("no_sub", substructure.NoSubstructure())] + list(twins.items()):
            sim = LensSimulator(recipe.instrument, deflector, source, {model.name: model},
                                supersampling=int(p["supersampling"]), noise=False)
            rendered[twin] = sim.simulate(np.random.default_rng([seed, k])).image.astype(np.float64)
        variance = sim.noise_variance(rendered["no_sub"], p["exposure_time"])
        residuals[int(i)] = {twin: ((rendered["stored"] - image) / np.sqrt(variance)).astype(np.float32)
                             for twin, image in rendered.items() if twin != "stored"}
        stored = examples.images[i].astype(np.float64) if examples.images is not None else None
        row = {"index": int(i), "class": name,
               "delta_chi2_vs_no_sub": float(((rendered["stored"] - rendered["no_sub"]) ** 2
                                              / variance).sum()),
               "realization": "stored" if name == "axion" else "redrawn"}
        if "compact_limit" in rendered:
            row["delta_chi2_vs_compact_limit"] = float(
                ((rendered["stored"] - rendered["compact_limit"]) ** 2 / variance).sum())
        if stored is not None:
            row["reproduction_chi2_per_pixel"] = float(np.mean(
                (stored - rendered["stored"]) ** 2
                / sim.noise_variance(rendered["stored"], p["exposure_time"])))
        variable = _bin_variable(name, examples.params)
        if variable:
            row[variable] = p[variable]
        rows.append(row)
    return {"samples": rows, "per_class": _bin_departure(rows, num_bins),
            "units": "Delta chi^2 summed over pixels, in units of the per-pixel noise variance "
                     "of the no-substructure image (background + Poisson)"}, residuals


def _bin_departure(rows, num_bins):
    out = {}
    for name in sorted({r["class"] for r in rows}):
        mine = [r for r in rows if r["class"] == name]
        variable = next((k for k in ("log10_m_axion", "log10_sigma_sub", "log10_m_hm",
                                     "log10_sigma_over_m") if k in mine[0]), None)
        entry = {"count": len(mine), "realization": mine[0]["realization"], "variable": variable}
        if "reproduction_chi2_per_pixel" in mine[0]:
            entry["reproduction_chi2_per_pixel_median"] = float(
                np.median([r["reproduction_chi2_per_pixel"] for r in mine]))
        for key in ("delta_chi2_vs_no_sub", "delta_chi2_vs_compact_limit"):
            if key not in mine[0]:
                continue
            values = np.array([r[key] for r in mine])
            entry[key] = {"median": float(np.median(values)),
                          "fraction_above_100": float((values > 100).mean())}
            if variable:
                x = np.array([r[variable] for r in mine])
                edges = np.linspace(x.min(), x.max(), num_bins + 1) if x.max() > x.min() else \
                    np.array([x.min() - 0.5, x.max() + 0.5])
                which = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
                entry[key]["bins"] = [
                    {"low": float(edges[b]), "high": float(edges[b + 1]),
                     "count": int((which == b).sum()),
                     **({"median": float(np.median(values[which == b])),
                         "p16": float(np.percentile(values[which == b], 16)),
                         "p84": float(np.percentile(values[which == b], 84))}
                        if (which == b).any() else {})}
                    for b in range(len(edges) - 1)]
        out[name] = entry
    return out


# --------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stretch(images, sigma):
    return np.arcsinh(np.asarray(images, dtype=np.float64) / sigma)


def _save(fig, output_dir, name):
    """Saves a small PNG: 80 dpi, quantized to a 64-colour palette (noise pixels make
    true-colour PNGs of image grids large)."""
    from PIL import Image

    path = os.path.join(output_dir, name)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    _pyplot().close(fig)
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=64)
    palette.save(path, optimize=True)
    return name


def _grid(output_dir, name, rows, sigma):
    """rows: [(row label, [(image, caption), ...]), ...]"""
    plt = _pyplot()
    shown = [_stretch(img, sigma) for _, cells in rows for img, _ in cells]
    if not shown:
        return None
    vmax = float(np.percentile(np.concatenate([s.ravel() for s in shown]), 99.9))
    ncols = max(len(cells) for _, cells in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.3 * ncols, 1.45 * len(rows)),
                             squeeze=False)
    for r, (label, cells) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(cells):
                ax.imshow(_stretch(cells[c][0], sigma), origin="lower", cmap="magma",
                          vmin=-3, vmax=vmax)
                ax.set_title(cells[c][1], fontsize=7)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return _save(fig, output_dir, name)


def sample_grids(output_dir, ex: Examples, class_names, sigma) -> list[tuple[str, str]]:
    figures = []
    present = [l for l in range(len(class_names)) if (ex.labels == l).any()]
    # The first target known for some images (real cut-outs may know none).
    target = next((t for t, v in ex.targets.items() if np.isfinite(v).any()), None)
    rows = []
    for l in present:
        idx = np.flatnonzero(ex.labels == l)[:_GRID_COLUMNS]
        rows.append((class_names[l], [(ex.images[i], _caption(ex, i, class_names, target))
                                      for i in idx]))
    figures.append((_grid(output_dir, "samples_by_class.png", rows, sigma),
                    f"The first {_GRID_COLUMNS} images of each class, titled by "
                    f"{target or 'class'} ({_STRETCH})."))
    if target is not None:
        values = ex.targets[target]
        edges = np.linspace(np.nanmin(values), np.nanmax(values), _TARGET_BINS + 1)
        rows = []
        for b in range(_TARGET_BINS):
            idx = np.flatnonzero((values >= edges[b]) & (values <= edges[b + 1]))[:_GRID_COLUMNS]
            idx = idx[np.argsort(values[idx])]
            if idx.size:
                rows.append((f"{target}\n[{edges[b]:.2f}, {edges[b + 1]:.2f}]",
                             [(ex.images[i], _caption(ex, i, class_names, target)) for i in idx]))
        figures.append((_grid(output_dir, "samples_by_target.png", rows, sigma),
                        f"Images in {_TARGET_BINS} equal-width bins of {target} (panel titles), "
                        f"sorted by it within a row ({_STRETCH})."))
    return figures


def _caption(ex, i, class_names, target):
    if target is not None and np.isfinite(ex.targets[target][i]):
        return f"{ex.targets[target][i]:.2f}"
    return class_names[ex.labels[i]]


def pixel_histograms(output_dir, ex: Examples, class_names, sigma):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    present = [l for l in range(len(class_names)) if (ex.labels == l).any()]
    for l in present:
        values = ex.images[ex.labels == l].ravel()
        axes[0].hist(values, bins=200, histtype="step", label=class_names[l])
        axes[1].hist(values / sigma, bins=np.linspace(-8, 8, 161), histtype="step",
                     density=True, label=class_names[l])
    z = np.linspace(-8, 8, 400)
    axes[1].plot(z, np.exp(-z**2 / 2) / math.sqrt(2 * math.pi), "k:", label="N(0, 1)")
    axes[0].set(yscale="log", xlabel="pixel value (image units)", ylabel="pixels",
                title="all pixels")
    axes[1].set(yscale="log", xlabel="pixel value / sigma_bg", ylabel="density",
                title="near the background", ylim=(1e-5, 1))
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, output_dir, "pixel_histograms.png")


def per_image_histograms(output_dir, ex: Examples, class_names):
    plt = _pyplot()
    stats = {"image max": ex.images.max(axis=(1, 2)),
             "total flux": ex.images.sum(axis=(1, 2), dtype=np.float64),
             "image std": ex.images.std(axis=(1, 2)),
             "fraction of negative pixels": (ex.images < 0).mean(axis=(1, 2))}
    fig, axes = plt.subplots(1, len(stats), figsize=(3.2 * len(stats), 3))
    for ax, (name, values) in zip(axes, stats.items()):
        log = bool((values > 0).all()) and name != "fraction of negative pixels"
        bins = np.geomspace(values.min(), values.max(), 50) if log and values.max() > values.min() \
            else 50
        for l in np.unique(ex.labels):
            ax.hist(values[ex.labels == l], bins=bins, histtype="step", label=class_names[l])
        ax.set(xscale="log" if log else "linear", yscale="log", xlabel=name, ylabel="images")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, output_dir, "per_image_statistics.png")


def target_histograms(output_dir, by_split: dict[str, Examples]):
    plt = _pyplot()
    targets = list(next(iter(by_split.values())).targets)
    if not targets:
        return None
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for split, ex in by_split.items():
            values = ex.targets[target][np.isfinite(ex.targets[target])]
            ax.hist(values, bins=30, histtype="step", density=True, label=f"{split} ({values.size})")
        ax.set(xlabel=target, ylabel="density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, output_dir, "target_histograms.png")


def mean_images(output_dir, ex: Examples, class_names, sigma):
    plt = _pyplot()
    groups = [("all", np.ones(len(ex.labels), bool))]
    groups += [(class_names[l], ex.labels == l) for l in np.unique(ex.labels)] \
        if len(np.unique(ex.labels)) > 1 else []
    fig, axes = plt.subplots(2, len(groups), figsize=(2.6 * len(groups) + 0.8, 5), squeeze=False)
    for c, (name, mask) in enumerate(groups):
        for r, (what, image) in enumerate((("mean", ex.images[mask].mean(axis=0)),
                                           ("std", ex.images[mask].std(axis=0)))):
            ax = axes[r][c]
            shown = ax.imshow(_stretch(image, sigma), origin="lower", cmap="magma")
            ax.set_title(f"{what}, {name} ({int(mask.sum())})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, output_dir, "mean_images.png")


def parameter_histograms(output_dir, ex: Examples, class_names, stats):
    plt = _pyplot()
    varying = sorted(k for k, s in stats.items() if s.get("count") and not s["constant"])
    if not varying:
        return None
    ncols = 5
    nrows = math.ceil(len(varying) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 2.3 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), varying):
        for l in np.unique(ex.labels):
            values = ex.params[name][ex.labels == l]
            values = values[np.isfinite(values)]
            if values.size:
                ax.hist(values, bins=30, histtype="step", label=class_names[l])
        ax.set_xlabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(varying):]:
        ax.axis("off")
    if len(np.unique(ex.labels)) > 1:
        axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, output_dir, "parameter_histograms.png")


def departure_figure(output_dir, result):
    plt = _pyplot()
    panels = [(name, e) for name, e in result.get("per_class", {}).items() if e["variable"]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, entry) in zip(axes[0], panels):
        rows = [r for r in result["samples"] if r["class"] == name]
        x = np.array([r[entry["variable"]] for r in rows])
        for key, label, colour in (("delta_chi2_vs_no_sub", "vs no substructure", "C0"),
                                   ("delta_chi2_vs_compact_limit",
                                    "vs same mass at the centre (m_a -> inf)", "C1")):
            if key not in entry:
                continue
            y = np.maximum([r[key] for r in rows], 1e-3)
            ax.scatter(x, y, s=6, alpha=0.35, color=colour)
            bins = [b for b in entry[key]["bins"] if b["count"]]
            centres = [(b["low"] + b["high"]) / 2 for b in bins]
            ax.plot(centres, [max(b["median"], 1e-3) for b in bins], "-o", ms=3, color=colour,
                    label=f"{label} (median)")
            ax.fill_between(centres, [max(b["p16"], 1e-3) for b in bins],
                            [max(b["p84"], 1e-3) for b in bins], color=colour, alpha=0.2)
        ax.axhline(100, color="k", ls=":", lw=1, label="Delta chi^2 = 100")
        ax.set(yscale="log", xlabel=entry["variable"], ylabel="Delta chi^2 (noise variances)",
               title=f"{name} ({entry['realization']} realization, {entry['count']} images)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, output_dir, "departure.png")


def residual_figure(output_dir, result, residuals, images, sigma, columns=_GRID_COLUMNS):
    """For images spread over the target range: the image, and the rendered image minus
    its no-substructure twin (and minus the m_a -> infinity limit) in noise sigmas."""
    plt = _pyplot()
    panels = [(name, e) for name, e in result.get("per_class", {}).items() if e["variable"]]
    if not panels:
        return None
    name, entry = next((p for p in panels if p[0] == "axion"), panels[0])
    rows = sorted((r for r in result["samples"] if r["class"] == name),
                  key=lambda r: r[entry["variable"]])
    shown = [rows[int(round(j))] for j in np.linspace(0, len(rows) - 1, min(columns, len(rows)))]
    twins = [t for t in ("no_sub", "compact_limit") if t in residuals[shown[0]["index"]]]
    labels = {"no_sub": "minus no substructure", "compact_limit": "minus same mass\nat the centre"}
    fig, axes = plt.subplots(1 + len(twins), len(shown), squeeze=False,
                             figsize=(1.5 * len(shown) + 0.5, 1.55 * (1 + len(twins))))
    for c, row in enumerate(shown):
        axes[0][c].imshow(_stretch(images[row["index"]], sigma), origin="lower", cmap="magma",
                          vmin=-3)
        axes[0][c].set_title(f"{row[entry['variable']]:.2f}", fontsize=7)
        for r, twin in enumerate(twins, start=1):
            residual = residuals[row["index"]][twin]
            limit = max(float(np.abs(residual).max()), 1e-6)
            axes[r][c].imshow(residual, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
            axes[r][c].set_title(f"max {limit:.3g} sigma", fontsize=6)
    for r, label in enumerate(["image"] + [labels[t] for t in twins]):
        axes[r][0].set_ylabel(label, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, output_dir, "departure_residuals.png"), name, entry["variable"]


# --------------------------------------------------------------------------- report


def run(data_dir: str, dataset: str, output_dir: str, split: str = "train",
        max_examples: int | None = 5000, departure_samples: int = 200, seed: int = 0) -> dict:
    """Writes the EDA report of `dataset` into `output_dir`; returns the summary."""
    import tensorflow_datasets as tfds

    path = dataset_path(data_dir, dataset)
    builder = tfds.builder_from_directory(path)
    info = builder.info
    if split not in info.splits:
        raise ValueError(f"--split: {split!r} is not in {dataset}; expected one of {list(info.splits)}")
    os.makedirs(output_dir, exist_ok=True)
    class_names = list(info.features["substructure"].names) + ["unknown"]

    by_split = {s: read_examples(builder, s, with_images=False) for s in info.splits}
    ex = read_examples(builder, split, max_examples)
    sigma = (float(np.nanmedian(ex.params["background_rms"])) if "background_rms" in ex.params
             else float(np.median(background_sigma(ex.images))))
    sigma = sigma if sigma > 0 else float(ex.images.std())

    summary = {
        "dataset": f"{info.name}/{info.config_name}", "version": str(info.version),
        "description": info.config_description, "image_shape": list(info.features["image"].shape),
        "class_names": list(class_names), "targets": list(ex.targets),
        "splits": {s: {"num_examples": int(e.labels.size),
                       "per_class": {class_names[l]: int((e.labels == l).sum())
                                     for l in np.unique(e.labels)},
                       "targets": {t: _describe(v) for t, v in e.targets.items()}}
                   for s, e in by_split.items()},
        "analysed": {"split": split, "num_examples": int(ex.labels.size),
                     "selection": "first examples in file order (TFDS shuffles when writing)"},
        "stretch": _STRETCH,
        **image_statistics(ex.images, ex.labels, class_names, sigma),
        "target_correlations": target_correlations(ex.images, ex.targets),
        "params": parameter_statistics(by_split[split].params),
    }
    figures = sample_grids(output_dir, ex, class_names, sigma)
    figures.append((pixel_histograms(output_dir, ex, class_names, sigma),
                    "Pixel values, log counts: all pixels (left) and near the background in "
                    "units of sigma_bg against a unit normal (right)."))
    figures.append((per_image_histograms(output_dir, ex, class_names),
                    "Per-image maximum, total flux, standard deviation and fraction of negative "
                    "pixels: how much a per-image normalization would rescale each image."))
    figures.append((target_histograms(output_dir, by_split), "Targets of every split."))
    figures.append((mean_images(output_dir, ex, class_names, sigma),
                    f"Mean and per-pixel standard deviation ({_STRETCH.split(',')[0]}, own "
                    "colour scale per panel)."))
    constant = {k: s["min"] for k, s in summary["params"].items() if s.get("constant")}
    figures.append((parameter_histograms(output_dir, by_split[split], class_names,
                                         summary["params"]),
                    f"Every varying simulation parameter of the {split} split. Constant: "
                    + (", ".join(f"{k} = {v:.4g}" for k, v in constant.items()) or "none") + "."))
    if departure_samples > 0:
        summary["departure"], residuals = departure(ex, class_names, info.config_name,
                                                    departure_samples, seed)
        figures.append((departure_figure(output_dir, summary["departure"]),
                        "Departure from the no-substructure limit: Delta chi^2 between the image "
                        "rendered noiseless from its stored parameters with and without its "
                        "substructure, in noise variances (log axis; dots: images, line and "
                        "band: median and 16-84 percentiles per bin)."))
        shown = residual_figure(output_dir, summary["departure"], residuals, ex.images, sigma)
        if shown:
            figures.append((shown[0], f"Where the {shown[1]} images depart: each image (titled "
                            f"by {shown[2]}; {_STRETCH.split(',')[0]}) and its noiseless "
                            "rendering minus the twin, in noise standard deviations (colour "
                            "scale per panel)."))
    figures = [(name, caption) for name, caption in figures if name]
    summary["figures"] = {name: caption for name, caption in figures}
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(render_report(summary, figures))
    return summary


def render_report(summary: dict, figures) -> str:
    lines = [f"# EDA of `{summary['dataset']}` (version {summary['version']})", "",
             summary["description"], "", "| split | examples | per class |", "|---|---|---|"]
    for split, s in summary["splits"].items():
        per_class = ", ".join(f"{k} {v}" for k, v in s["per_class"].items())
        lines.append(f"| {split} | {s['num_examples']} | {per_class} |")
    pix, per = summary["pixels"], summary["per_image"]
    lines += ["", f"Analysed: {summary['analysed']['num_examples']} images of "
                  f"`{summary['analysed']['split']}`. Pixels: mean {pix['mean']:.4g}, std "
                  f"{pix['std']:.4g}, range [{pix['min']:.4g}, {pix['max']:.4g}], "
                  f"{100 * pix['fraction_negative']:.1f}% negative. Background rms "
                  f"{summary['background']['sigma_bg_used_for_stretch']:.4g}; median peak S/N "
                  f"{per['peak_snr_median']:.0f}; per-image maxima spread "
                  f"{per['max_spread_dex_p5_to_p95'] or math.nan:.2f} dex (5th to 95th "
                  "percentile).", ""]
    for target, corr in summary["target_correlations"].items():
        lines.append(f"Spearman correlation of `{target}` with image statistics (shortcuts): "
                     + ", ".join(f"{k} {v:+.2f}" for k, v in corr.items() if v is not None) + ".")
    departure_result = summary.get("departure", {})
    if "skipped" in departure_result:
        lines.append(f"Departure study skipped: {departure_result['skipped']}.")
    for name, entry in departure_result.get("per_class", {}).items():
        text = f"Departure, {name} ({entry['realization']} realization): median Delta chi^2 " \
               f"{entry['delta_chi2_vs_no_sub']['median']:.3g} against no substructure"
        if "delta_chi2_vs_compact_limit" in entry:
            text += f", {entry['delta_chi2_vs_compact_limit']['median']:.3g} against the " \
                    "same mass at the centre"
        if "reproduction_chi2_per_pixel_median" in entry:
            text += f"; stored image vs its re-rendering: chi^2/pixel " \
                    f"{entry['reproduction_chi2_per_pixel_median']:.3f}"
        lines.append(text + ".")
    lines.append("")
    for name, caption in figures:
        lines += [f"![{name}]({name})", "", caption, ""]
    lines.append("Numbers: `summary.json`.")
    return "\n".join(lines) + "\n"


def _define_flags(flag_values=flags.FLAGS):
    """Defined only when run as a program: importing the library (e.g. beside
    build_dataset, whose --data_dir flag has the same name) must not define flags."""
    define = dict(flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "TFDS data directory holding the data set.", **define)
    flags.DEFINE_string("dataset", None, "deeplense_lensing/CONFIG[:VERSION].", **define)
    flags.DEFINE_string("output_dir", None, "Where the report is written.", **define)
    flags.DEFINE_string("split", "train", "Split whose images are analysed.", **define)
    flags.DEFINE_integer("max_examples", 5000, "Images analysed (the first in file order).",
                         **define)
    flags.DEFINE_integer("departure_samples", 200,
                         "Images re-rendered without their substructure (imports the "
                         "simulator; 0 disables).", **define)
    flags.DEFINE_integer("seed", 0, "Seed of the departure sample.", **define)


def run_from_flags(f) -> dict:
    if not (f.data_dir and f.dataset and f.output_dir):
        raise app.UsageError("--data_dir, --dataset and --output_dir are required")
    return run(f.data_dir, f.dataset, f.output_dir, split=f.split, max_examples=f.max_examples,
               departure_samples=f.departure_samples, seed=f.seed)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.setup(log_file=os.path.join(flags.FLAGS.output_dir, "eda.log"))
    run_from_flags(flags.FLAGS)
    print(os.path.join(flags.FLAGS.output_dir, "report.md"))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
