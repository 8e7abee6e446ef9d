"""How much a dark-matter parameter changes the image: Delta chi^2 against a twin.

For each image of a recipe, the noiseless image is rendered twice from the same example
generator: once by the recipe's own substructure model and once by its *twin*, the same
realization with the dark-matter effect switched off (every draw of the macro model,
source and subhalo population shared). Their difference, summed over pixels in units
of the noise variance of the twin, is the Delta chi^2 an ideal observer would have to
tell them apart: < 1 means invisible, > 100 clearly visible. Binned in the target, it
says where a regressor can learn and where its error must plateau. It is an upper bound:
a regressor never sees the twin, and must also tell the effect from everything else that
varies (the source's own structure, the subhalos' positions and masses, the lens light).

    python -m deeplense_tf.simulation.information --recipe=euclid_wdm --num_images=200 \\
        --output=information_euclid_wdm.json

`--binning=B` also sums each B x B block of pixels before comparing (the block's variance
the sum of its pixels'): what is left of Delta chi^2 for a model that reads the image at
B times the pixel scale (the hybrid's `input_binning`). It can only lose information
(Cauchy-Schwarz), and loses little where the PSF oversamples the pixels.

`--refit` also asks how much of it survives the macro model: the twin's lens (SIE +
shear) and Sersic source parameters are refitted by least squares to the image with
the effect on (starting from the true values), the twin's own substructure held fixed
(none for CDM; the full CDM population for WDM and SIDM; the vortex's mass at the centre
for the axion), and Delta chi^2 is counted against the best fit. What the refit absorbs
is a change a network cannot tell from a slightly different lens or source; the rest is
what the effect alone explains. Parametric recipes only (lens light, PSF variation and
real sources are not refitted).

Twins: the axion vortex against its m_a -> infinity limit (the vortex's mass at the
lens centre), as in PHYSICS.md; warm dark matter (`wdm`) against its CDM population
before suppression (`suppress=False`); self-interacting dark matter (`sidm`) against the same subhalos
without self-interactions (`interacting=False`); the CDM population (`cdm`) against no
substructure.

With realism (lens light, PSFs, real sources), the twin shares those draws too; the
variance is the per-pixel background + Poisson variance of the twin, white: with
correlated background noise (`*_correlated_noise`, `*_realistic`) Delta chi^2 ignores
the correlation and overstates the information by up to the noise's effective-pixel
factor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np

from deeplense_tf.simulation import recipes as recipes_lib
from deeplense_tf.simulation import substructure
from deeplense_tf.simulation.simulator import LensSimulator, example_rng


def twin_of(model: substructure.Substructure) -> substructure.Substructure:
    """The model with its dark-matter effect off, drawing the same random stream."""
    if isinstance(model, substructure.WDMSubhalos):
        return dataclasses.replace(model, suppress=False)
    if isinstance(model, substructure.SIDMSubhalos):
        return dataclasses.replace(model, interacting=False)
    if isinstance(model, substructure.CDMSubhalos):
        return _NoSubstructureAs(model)
    if isinstance(model, substructure.AxionVortex):
        return _CompactVortex(model)
    raise ValueError(f"information: no twin for substructure {model.name!r}; expected a "
                     "axion vortex, warm ('wdm'), self-interacting ('sidm') or CDM population ('cdm') "
                     "recipe")


class _NoSubstructureAs(substructure.Substructure):
    """No substructure, under the class name of `model` (so a simulator accepts it),
    after drawing `model`'s realization (so the generator advances identically)."""

    def __init__(self, model):
        self.model = model
        self.name = model.name

    def draw(self, rng, geometry, center=(0.0, 0.0), ray_spacing_arcsec=0.05):
        realization = self.model.draw(rng, geometry, center, ray_spacing_arcsec)
        return substructure.Realization(self.name, realization.params,
                                        substructure._no_deflection)


class _CompactVortex(substructure.Substructure):
    """The axion vortex's m_a -> infinity limit: its whole mass at the lens centre, after
    drawing the vortex (same generator stream), as the vortex's information is counted
    in PHYSICS.md."""

    name = "axion"

    def __init__(self, model):
        self.model = model

    def draw(self, rng, geometry, center=(0.0, 0.0), ray_spacing_arcsec=0.05):
        realization = self.model.draw(rng, geometry, center, ray_spacing_arcsec)
        theta_e2 = float(geometry.point_mass_theta_e(self.model.mass_msun) ** 2)
        return substructure.Realization(self.name, realization.params, lambda x, y: (
            substructure.point_mass_deflection(x, y, np.array([center[0]]),
                                               np.array([center[1]]), np.array([theta_e2]))))


def binned_delta_chi2(diff: np.ndarray, variance: np.ndarray, binning: int) -> float:
    """Delta chi^2 of `diff` after summing B x B blocks, each block's variance the sum of
    its pixels' (independent pixels); B = 1 is the plain sum of diff^2 / variance."""
    n = diff.shape[0]
    if binning < 1 or n % binning or diff.shape[1] % binning:
        raise ValueError(f"binning: expected a positive integer dividing the {n}x"
                         f"{diff.shape[1]} image, got {binning}")
    shape = (n // binning, binning, diff.shape[1] // binning, binning)
    block_diff = diff.reshape(shape).sum(axis=(1, 3))
    block_variance = variance.reshape(shape).sum(axis=(1, 3))
    return float((block_diff * block_diff / block_variance).sum())


# Bounds of the refitted parameters where the renderer is defined (all other parameters
# are free): an Einstein radius, a Sersic radius and index must stay positive.
_REFIT_BOUNDS = {"theta_e": (0.05, 10.0), "source_r_sersic": (0.005, 10.0),
                 "source_n_sersic": (0.2, 10.0), "source_amplitude": (0.0, np.inf)}


def refit_macro_model(sim: LensSimulator, image: np.ndarray, params: dict[str, float],
                      variance: np.ndarray, *, max_nfev: int = 40,
                      fixed_deflection: tuple[np.ndarray, np.ndarray] | None = None):
    """Least-squares fit of the smooth model's lens and source parameters to `image`,
    from the values in `params`, with `fixed_deflection` (alpha_x, alpha_y on
    `sim.ray_grid`, e.g. the twin's subhalos; default none) added to the lens's and not
    refitted; returns (chi^2 of the best fit, the fitted parameters). The residuals are
    weighted by 1/sqrt(`variance`)."""
    from scipy import optimize

    macro_names = list(sim.deflector.sample(np.random.default_rng(0)))
    source_names = list(sim.source.param_names())
    names = macro_names + source_names
    x0 = np.array([params[n] for n in names], dtype=np.float64)
    low = np.array([_REFIT_BOUNDS.get(n, (-np.inf, np.inf))[0] for n in names])
    high = np.array([_REFIT_BOUNDS.get(n, (-np.inf, np.inf))[1] for n in names])
    x0 = np.clip(x0, low, high)
    weight = 1.0 / np.sqrt(variance)
    x, y = sim.ray_grid
    if fixed_deflection is not None:
        x, y = x - fixed_deflection[0], y - fixed_deflection[1]

    def residual(theta):
        values = dict(zip(names, theta))
        macro = {n: values[n] for n in macro_names}
        source = {n: values[n] for n in source_names}
        ax, ay = sim.macro_deflection(macro)
        return ((image - sim.render(x - ax, y - ay, source)) * weight).ravel()

    fit = optimize.least_squares(residual, x0, bounds=(low, high), x_scale="jac",
                                 diff_step=1e-6, max_nfev=max_nfev)
    return float(np.sum(fit.fun ** 2)), dict(zip(names, fit.x.tolist()))


def delta_chi2(recipe_name: str, num_images: int, *, seed: int = 0, split_index: int = 2,
               target: str | None = None, binning: int = 1, refit: bool = False,
               refit_max_nfev: int = 40) -> list[dict[str, float]]:
    """Per image: the target value, Delta chi^2 against the twin (and, with `binning`
    > 1, after B x B binning; with `refit`, against the smooth model refitted to the
    image, `delta_chi2_refit`) and the CPU time."""
    recipe = recipes_lib.get(recipe_name)
    if len(recipe.substructures) != 1:
        raise ValueError(f"information: recipe {recipe_name!r} mixes classes "
                         f"{sorted(recipe.substructures)}; expected a single-class recipe")
    if not num_images >= 1:
        raise ValueError(f"num_images: expected >= 1, got {num_images}")
    (name, model), = recipe.substructures.items()
    target = target or (recipe.targets[0] if recipe.targets else None)
    if target not in model.param_names:
        raise ValueError(f"target: {target!r} is not a parameter of {name!r}; expected one of "
                         f"{model.param_names}")
    n = recipe.num_pix
    if not (isinstance(binning, int) and binning >= 1 and n % binning == 0):
        raise ValueError(f"binning: expected a positive integer dividing the recipe's {n} px, "
                         f"got {binning}")
    if refit and recipe.realism is not None:
        raise ValueError(f"refit: recipe {recipe_name!r} has realism options (lens light, PSF "
                         "variation, real sources) the refit does not model; expected a "
                         "parametric recipe")
    sim = recipe.simulator(noise=False)
    twin = LensSimulator(recipe.instrument, recipe.deflector, recipe.source, {name: twin_of(model)},
                         supersampling=recipe.supersampling, noise=False, realism=recipe.realism)
    rows = []
    for i in range(num_images):
        start = time.process_time()
        lens = sim.simulate(example_rng(seed, split_index, i))
        reference = twin.simulate(example_rng(seed, split_index, i), keep_deflection=refit)
        variance = sim.noise_variance(reference.image.astype(np.float64),
                                      lens.params["exposure_time"])
        diff = lens.image.astype(np.float64) - reference.image.astype(np.float64)
        row = {target: float(lens.params[target]),
               "delta_chi2": float((diff * diff / variance).sum()),
               "n_subhalos": float(lens.params.get("n_subhalos", math.nan))}
        if binning > 1:
            row["delta_chi2_binned"] = binned_delta_chi2(diff, variance, binning)
        if refit:
            # The fit starts at the twin itself, so it can only end at or below delta_chi2.
            row["delta_chi2_refit"] = refit_macro_model(
                twin, lens.image.astype(np.float64), lens.params, variance,
                max_nfev=refit_max_nfev, fixed_deflection=reference.substructure_deflection)[0]
        row["cpu_s"] = time.process_time() - start
        rows.append(row)
    return rows


def binned(rows, target: str, num_bins: int = 7) -> list[dict[str, float]]:
    """Median and 16/84% Delta chi^2, and the fraction above 1 and 100, per target bin."""
    x = np.array([r[target] for r in rows])
    d = np.array([r["delta_chi2"] for r in rows])
    edges = np.linspace(x.min(), x.max(), num_bins + 1)
    out = []
    for k in range(num_bins):
        inside = (x >= edges[k]) & ((x < edges[k + 1]) if k < num_bins - 1 else (x <= edges[k + 1]))
        if not inside.any():
            continue
        q16, q50, q84 = np.percentile(d[inside], [16, 50, 84])
        out.append({"low": float(edges[k]), "high": float(edges[k + 1]), "count": int(inside.sum()),
                    "median": float(q50), "q16": float(q16), "q84": float(q84),
                    "fraction_above_1": float((d[inside] > 1).mean()),
                    "fraction_above_100": float((d[inside] > 100).mean())})
    return out


def _print_bins(bins) -> None:
    for b in bins:
        print(f"[{b['low']:6.2f}, {b['high']:6.2f}) {b['count']:6d} {b['median']:10.3g} "
              f"{b['q16']:10.3g}-{b['q84']:<10.3g} {b['fraction_above_1']:5.2f} "
              f"{b['fraction_above_100']:5.2f}")


def _kept(rows, key: str) -> dict[str, float]:
    """Median and 16/84% of row[key] / delta_chi2 over the rows with a signal."""
    ratio = np.array([r[key] / r["delta_chi2"] for r in rows if r["delta_chi2"] > 0])
    return {"median": float(np.median(ratio)), "q16": float(np.percentile(ratio, 16)),
            "q84": float(np.percentile(ratio, 84)), "images": int(ratio.size)}


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True,
                        help="a single-class axion, wdm, sidm or cdm recipe")
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--num_bins", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default=None, help="default: the recipe's first target")
    parser.add_argument("--output", default=None, help="JSON file for the rows and the bins")
    parser.add_argument("--binning", type=int, default=1,
                        help="also report Delta chi^2 after summing B x B pixel blocks")
    parser.add_argument("--refit", action="store_true",
                        help="also report Delta chi^2 against the twin's lens and source "
                             "refitted to each image (least squares; the twin's substructure "
                             "held fixed)")
    parser.add_argument("--refit_max_nfev", type=int, default=40,
                        help="model evaluations per refit (scipy's max_nfev: the finite-"
                             "difference Jacobian's evaluations are not counted)")
    args = parser.parse_args(argv)
    recipe = recipes_lib.get(args.recipe)
    target = args.target or recipe.targets[0]
    rows = delta_chi2(args.recipe, args.num_images, seed=args.seed, target=target,
                      binning=args.binning, refit=args.refit, refit_max_nfev=args.refit_max_nfev)
    bins = binned(rows, target, args.num_bins)
    print(f"{args.recipe}: Delta chi^2 against the twin ({twin_of(next(iter(recipe.substructures.values()))).name}"
          f" with the effect off), {len(rows)} noiseless images, "
          f"{np.median([r['cpu_s'] for r in rows]) * 1e3:.0f} ms CPU per pair")
    print(f"{target + ' bin':>18} {'images':>6} {'median':>10} {'16-84%':>21} {'>1':>5} {'>100':>5}")
    _print_bins(bins)
    kept = None
    if args.binning > 1:
        kept = _kept(rows, "delta_chi2_binned")
        print(f"{args.binning}x{args.binning} binned: Delta chi^2 kept, median "
              f"{kept['median']:.3f} (16-84% {kept['q16']:.3f}-{kept['q84']:.3f}) over "
              f"{kept['images']} images")
    refit = None
    if args.refit:
        refit = dict(_kept(rows, "delta_chi2_refit"), bins=binned(
            [dict(r, delta_chi2=r["delta_chi2_refit"]) for r in rows], target, args.num_bins))
        print("after refitting the twin's lens and source to each image:")
        _print_bins(refit["bins"])
        print(f"refit: Delta chi^2 kept, median {refit['median']:.3f} (16-84% "
              f"{refit['q16']:.3f}-{refit['q84']:.3f}) over {refit['images']} images")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"recipe": args.recipe, "target": target, "seed": args.seed,
                       "split_index": 2, "binning": args.binning, "binned_kept": kept,
                       "refit": refit, "bins": bins, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
