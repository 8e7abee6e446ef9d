"""From lenses to a population: per-lens posteriors combined into the posterior of a
population parameter (the hierarchical step of paltas and of Wagner-Carena et al. 2021).

    python -m deeplense_tf.predict --model=hybrid_model_ii_axion --data_dir=DATA \\
        --input=tfds:deeplense_lensing/model_ii_axion/test --output=P.csv
    python -m deeplense_tf.population --predictions=P.csv --target=log10_m_axion \\
        [--population=normal|delta] [--prior=-24,-22] [--output=population.json] \\
        [--study=20,100,500 --study_populations=200 --sigma_pop=0.2]

Each lens k gives a posterior p(theta | d_k) (the model's Gaussian: `<target>` and
`<target>_std`, or `_q50` and the 16-84% half-width), obtained under the model's training
prior p_int(theta) (uniform over the training range; read from the shipped model's recipe
or given by --prior). For population hyper-parameters Omega,

    p(Omega | {d_k}) ∝ p(Omega) prod_k ∫ dtheta p(theta | d_k) p(theta | Omega) / p_int(theta),

evaluated on a grid in theta (every integral) and in Omega. Populations:
- `normal`: theta_k ~ N(mu, sigma^2) truncated to the training range; Omega = (mu, sigma),
  flat in mu over the range and in log sigma over [0.02, range] (the usual case: a
  population mean with scatter, e.g. Sigma_sub across hosts);
- `delta`: one value shared by every lens (a particle mass: m_a, m_hm); flat prior.

`--study` measures, on a predictions table with truths (`true_<target>`, which `predict`
writes for a TFDS split), what the step is worth: populations of each size N are drawn
from the table at known (mu, sigma) by rejection sampling on the true values, and their
posteriors of mu are checked for coverage (68% and 95%), width (1/sqrt(N) if the lenses
are independent) and bias, per range of mu, so the N at which the model's own bias
dominates the statistical error is measured, not assumed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

SIGMA_MIN = 0.02  # smallest population scatter of the `normal` grid, target units
POPULATIONS = ("normal", "delta")


@dataclasses.dataclass
class Lenses:
    """Per-lens Gaussian posteriors of one target, from one model on one data set."""

    target: str
    mean: np.ndarray
    std: np.ndarray
    truth: np.ndarray | None
    model: str
    dataset: str
    dropped: int = 0


def _column(table, name):
    return np.asarray(table[name], np.float64)


def read_predictions(paths, target: str) -> Lenses:
    """The per-lens posteriors of `target` in predictions tables (`predict`'s CSV, Parquet
    or FITS; several files are concatenated if they come from the same model and data
    set). Rows not predicted (status other than 'ok') or with a non-finite estimate are
    dropped and counted."""
    from astropy.table import Table

    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise ValueError("--predictions: expected at least one predictions file")
    means, stds, truths, models, datasets, dropped = [], [], [], set(), set(), 0
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--predictions={path}: no such file")
        table = Table.read(path, format="ascii.csv" if path.lower().endswith(".csv") else None)
        names = table.colnames
        if target not in names:
            have = sorted(n for n in names if n + "_std" in names or n + "_q50" in names)
            raise ValueError(f"--target={target}: {path} has no estimates of it; it has "
                             f"{have or 'no target columns'}")
        if target + "_std" in names:
            mean, std = _column(table, target), _column(table, target + "_std")
        elif target + "_q16" in names and target + "_q84" in names:
            mean = _column(table, target + "_q50" if target + "_q50" in names else target)
            std = (_column(table, target + "_q84") - _column(table, target + "_q16")) / 2
        else:
            raise ValueError(f"--target={target}: {path} has a point estimate but no "
                             f"uncertainty ('{target}_std' or '_q16'/'_q84'); population "
                             "inference needs per-lens posteriors")
        ok = np.isfinite(mean) & np.isfinite(std) & (std > 0)
        if "status" in names:
            ok &= np.asarray(table["status"]).astype(str) == "ok"
        dropped += int((~ok).sum())
        means.append(mean[ok])
        stds.append(std[ok])
        truth_name = "true_" + target
        truths.append(_column(table, truth_name)[ok] if truth_name in names else None)
        models |= set(np.asarray(table["model"]).astype(str)) if "model" in names else {""}
        datasets |= set(np.asarray(table["dataset"]).astype(str)) if "dataset" in names else {""}
    if len(models) > 1:
        raise ValueError(f"--predictions: rows from different models {sorted(map(str, models))}; a "
                         "population combines the posteriors of one model (their calibration "
                         "and training prior differ)")
    if len(datasets) > 1:
        raise ValueError(f"--predictions: rows from different data sets {sorted(map(str, datasets))}; "
                         "expected one data set (run population once per set)")
    mean = np.concatenate(means)
    if mean.size == 0:
        raise ValueError(f"--predictions: no lens with a finite estimate of {target} "
                         f"({dropped} rows dropped)")
    truth = None if any(t is None for t in truths) else np.concatenate(truths)
    return Lenses(target, mean, np.concatenate(stds), truth, models.pop(), datasets.pop(), dropped)


def training_prior(model: str, target: str) -> tuple[float, float]:
    """(low, high) of the uniform training prior of `target` of a shipped model, from the
    recipe of the data set it was trained on."""
    from deeplense_tf import pretrained
    from deeplense_tf.simulation import priors, recipes

    try:
        name = pretrained.shipped_name(model) if model else None
    except FileNotFoundError:
        name = None
    if name is None:
        raise ValueError(f"--prior: {model or 'the model'} is not a shipped model, so its "
                         "training prior is unknown; give --prior=LOW,HIGH")
    dataset = pretrained.info(name)["dataset"]  # deeplense_lensing/CONFIG[:VERSION]
    recipe = recipes.get(dataset.split("/")[-1].split(":")[0].split("__")[0])
    for sub in recipe.substructures.values():
        prior = getattr(sub, target, None)
        if isinstance(prior, priors.Uniform):
            return float(prior.low), float(prior.high)
    raise ValueError(f"--prior: recipe {recipe.name!r} has no uniform prior on {target!r}; "
                     "give --prior=LOW,HIGH")


def _check_prior(prior):
    low, high = (float(v) for v in prior)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"--prior: expected LOW < HIGH, both finite; got {low}, {high}")
    return low, high


def _normal_density(x, mean, std):
    z = (x - mean) / std
    return np.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi))


def _summary(grid, weights):
    """Median, 16/84 and 2.5/97.5% quantiles, mean, std and mode of a gridded posterior."""
    w = weights / weights.sum()
    cdf = np.cumsum(w) - w / 2
    q = {key: float(np.interp(level, cdf, grid))
         for key, level in (("q025", 0.025), ("q16", 0.16), ("q50", 0.5), ("q84", 0.84),
                            ("q975", 0.975))}
    mean = float((w * grid).sum())
    std = math.sqrt(max(float((w * (grid - mean) ** 2).sum()), 0.0))
    return dict(q, median=q["q50"], mean=mean, std=std, mode=float(grid[np.argmax(w)]))


def infer(mean, std, prior, population: str = "normal", *, theta_points: int = 401,
          mu_points: int = 201, sigma_points: int = 40) -> dict:
    """The posterior of the population parameters from per-lens Gaussian posteriors
    (`mean`, `std`, obtained under a uniform training prior on `prior` = (low, high))."""
    if population not in POPULATIONS:
        raise ValueError(f"--population={population}: expected one of {POPULATIONS}")
    low, high = _check_prior(prior)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if mean.ndim != 1 or mean.shape != std.shape or mean.size == 0:
        raise ValueError(f"mean and std: expected two 1-D arrays of the same length >= 1, got "
                         f"shapes {mean.shape} and {std.shape}")
    width = high - low
    step = width / theta_points
    theta = low + step * (np.arange(theta_points) + 0.5)
    # Per-lens posteriors on the grid, normalized over the training range (the network's
    # Gaussian leaks outside it; the true posterior cannot). Widths below a grid step are
    # raised to it so that the quadrature resolves them.
    s = np.maximum(std, step)[:, None]
    post = _normal_density(theta[None, :], mean[:, None], s)
    post /= np.maximum(post.sum(axis=1, keepdims=True) * step, 1e-300)
    result = {"population": population, "prior": [low, high], "num_lenses": int(mean.size)}
    if population == "delta":
        log_like = np.log(np.maximum(post, 1e-300)).sum(axis=0)
        weights = np.exp(log_like - log_like.max())
        result["theta"] = dict(_summary(theta, weights), grid=theta.tolist(),
                               posterior=(weights / (weights.sum() * step)).tolist())
        return result
    sigma = np.geomspace(SIGMA_MIN, width, sigma_points)

    def posterior(mu):
        # Population densities p(theta | mu, sigma), normalized over the training range.
        pop = _normal_density(theta[None, None, :], mu[:, None, None], sigma[None, :, None])
        pop /= pop.sum(axis=2, keepdims=True) * step
        # I_k(Omega) = ∫ p(theta | d_k) p(theta | Omega) / p_int(theta) dtheta, p_int = 1/width.
        integral = post @ pop.reshape(-1, theta_points).T * step * width
        log_like = np.log(np.maximum(integral, 1e-300)).sum(axis=0).reshape(mu.size, sigma.size)
        return np.exp(log_like - log_like.max())  # flat in mu and in log sigma

    # Over the whole range first, then again on a grid around the posterior's bulk, so that
    # a narrow posterior (many lenses) is resolved by as many points as a wide one.
    mu = np.linspace(low, high, mu_points)
    first = _summary(mu, posterior(mu).sum(axis=1))
    span = 8 * first["std"] + 2 * (high - low) / (mu_points - 1)
    mu = np.linspace(max(low, first["mean"] - span), min(high, first["mean"] + span), mu_points)
    weights = posterior(mu)
    result["mu"] = dict(_summary(mu, weights.sum(axis=1)), grid=mu.tolist())
    result["sigma"] = dict(_summary(sigma, weights.sum(axis=0)), grid=sigma.tolist(),
                           scale="log-uniform prior")
    return result


def draw_population(truth, size, mu, sigma, rng, prior) -> np.ndarray | None:
    """Indices of `size` lenses whose true values follow N(mu, sigma) truncated to
    `prior`, drawn from `truth` (uniform over the prior) by rejection sampling, without
    repeats; None when the table holds too few lenses near mu."""
    low, high = prior
    inside = (truth >= low) & (truth <= high)
    accept = rng.uniform(size=truth.size) < np.exp(-0.5 * ((truth - mu) / sigma) ** 2)
    chosen = np.flatnonzero(accept & inside)
    if chosen.size < size:
        return None
    return rng.permutation(chosen)[:size]


def study(lenses: Lenses, prior, sizes=(20, 100, 500), num_populations: int = 200,
          sigma_pop: float = 0.2, num_bins: int = 4, seed: int = 0) -> dict:
    """Coverage, width and bias of the population mean's posterior on populations drawn
    from `lenses` at known (mu, sigma_pop) (see the module docstring)."""
    if lenses.truth is None:
        raise ValueError(f"--study: the predictions have no 'true_{lenses.target}' column; a "
                         "study needs the true values (predict a TFDS split)")
    low, high = _check_prior(prior)
    if not 0 < sigma_pop < (high - low) / 4:
        raise ValueError(f"--sigma_pop={sigma_pop}: expected in (0, {(high - low) / 4:g}) (a "
                         "quarter of the prior range)")
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--study: expected population sizes >= 1, got {sizes}")
    rng = np.random.default_rng(seed)
    edges = np.linspace(low + 2 * sigma_pop, high - 2 * sigma_pop, num_bins + 1)
    out = {"sigma_pop": sigma_pop, "num_populations": num_populations, "sizes": {},
           "mu_bins": edges.tolist(), "seed": seed}
    for size in sizes:
        rows = []
        for _ in range(num_populations):
            mu_true = rng.uniform(edges[0], edges[-1])
            chosen = draw_population(lenses.truth, size, mu_true, sigma_pop, rng, (low, high))
            if chosen is None:
                continue
            post = infer(lenses.mean[chosen], lenses.std[chosen], (low, high), "normal",
                         mu_points=161, sigma_points=30)["mu"]
            rows.append((mu_true, post["median"], post["q16"], post["q84"], post["q025"],
                         post["q975"]))
        if not rows:
            out["sizes"][str(size)] = {"skipped": f"fewer than {size} lenses near any mu"}
            continue
        r = np.array(rows)
        mu_true, med = r[:, 0], r[:, 1]
        half = (r[:, 3] - r[:, 2]) / 2
        entry = {"populations": len(r),
                 "coverage_68": float(((r[:, 2] <= mu_true) & (mu_true <= r[:, 3])).mean()),
                 "coverage_95": float(((r[:, 4] <= mu_true) & (mu_true <= r[:, 5])).mean()),
                 "median_half_width": float(np.median(half)),
                 "rms_error": float(np.sqrt(np.mean((med - mu_true) ** 2))),
                 "bins": []}
        for k in range(num_bins):
            inside = (mu_true >= edges[k]) & (mu_true < edges[k + 1])
            if inside.sum() < 2:
                continue
            err = med[inside] - mu_true[inside]
            bias = float(err.mean())
            entry["bins"].append({
                "low": float(edges[k]), "high": float(edges[k + 1]), "populations": int(inside.sum()),
                "bias": bias, "bias_error": float(err.std(ddof=1) / math.sqrt(inside.sum())),
                "median_half_width": float(np.median(half[inside])),
                "bias_over_width": float(abs(bias) / np.median(half[inside])),
                "coverage_68": float(((r[inside, 2] <= mu_true[inside])
                                      & (mu_true[inside] <= r[inside, 3])).mean())})
        out["sizes"][str(size)] = entry
    out["bias_dominates_at"] = _bias_crossover(out)
    return out


def _bias_crossover(result) -> dict:
    """Per mu bin, the N at which |bias| equals the posterior's half-width, from the
    largest N measured (width ∝ 1/sqrt(N), bias constant): N_max (w / |bias|)^2."""
    sizes = [int(n) for n, e in result["sizes"].items() if "bins" in e]
    if not sizes:
        return {}
    largest = result["sizes"][str(max(sizes))]
    out = {}
    for b in largest["bins"]:
        significant = abs(b["bias"]) > 2 * b["bias_error"]
        key = f"[{b['low']:.2f}, {b['high']:.2f})"
        out[key] = (round(max(sizes) * (b["median_half_width"] / abs(b["bias"])) ** 2)
                    if significant and b["bias"] != 0 else None)
    return out


# --------------------------------------------------------------------------------- CLI


def _parse_prior(text):
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--prior={text}: expected LOW,HIGH") from None
    return _check_prior((low, high))


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", required=True, help="comma-separated predictions files")
    parser.add_argument("--target", required=True)
    parser.add_argument("--population", default="normal", choices=POPULATIONS)
    parser.add_argument("--prior", default=None, help="LOW,HIGH of the training prior "
                        "(default: from the shipped model's recipe)")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    parser.add_argument("--study", default=None, help="population sizes, e.g. 20,100,500")
    parser.add_argument("--study_populations", type=int, default=200)
    parser.add_argument("--sigma_pop", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        lenses = read_predictions(args.predictions.split(","), args.target)
        prior = _parse_prior(args.prior) if args.prior else training_prior(lenses.model, args.target)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    result = {"target": args.target, "model": lenses.model, "dataset": lenses.dataset,
              "dropped_rows": lenses.dropped,
              "inference": infer(lenses.mean, lenses.std, prior, args.population)}
    inference = result["inference"]
    print(f"{lenses.model} on {lenses.dataset or 'its inputs'}: {lenses.mean.size} lenses "
          f"({lenses.dropped} rows dropped), training prior {args.target} ~ U{tuple(prior)}")
    for key in ("theta", "mu", "sigma"):
        if key in inference:
            s = inference[key]
            print(f"  {key}: {s['median']:.4f} (68%: {s['q16']:.4f} .. {s['q84']:.4f}; "
                  f"95%: {s['q025']:.4f} .. {s['q975']:.4f})")
    if lenses.truth is not None:
        print(f"  true values in the table: mean {lenses.truth.mean():.4f}, std "
              f"{lenses.truth.std():.4f}")
    if args.study:
        result["study"] = study(lenses, prior, [int(n) for n in args.study.split(",")],
                                args.study_populations, args.sigma_pop, seed=args.seed)
        print(f"Study: populations N(mu, {args.sigma_pop}) drawn from the table, "
              f"{args.study_populations} per size")
        print(f"{'N':>5} {'68% cov.':>8} {'95% cov.':>8} {'half-width':>10} {'rms error':>9}  "
              "bias per mu bin (|bias| / half-width)")
        for n, e in result["study"]["sizes"].items():
            if "bins" not in e:
                print(f"{n:>5} {e['skipped']}")
                continue
            bins = "  ".join(f"{b['bias']:+.3f} ({b['bias_over_width']:.1f})" for b in e["bins"])
            print(f"{n:>5} {e['coverage_68']:8.3f} {e['coverage_95']:8.3f} "
                  f"{e['median_half_width']:10.4f} {e['rms_error']:9.4f}  {bins}")
        print(f"  bias equals the half-width at N = {result['study']['bias_dominates_at']}")
    if args.output:
        directory = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(directory, exist_ok=True)
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.output)
        print(f"Results: {args.output}")


if __name__ == "__main__":
    main()
