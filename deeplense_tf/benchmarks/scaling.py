"""How cost grows: fits to the scaling sweeps, and the sentences that state them.

- Batch size: cost per training step = fixed + per_image x batch (least squares of the
  cost per image against 1 / batch, in CPU time of the measuring process where
  measured: on a shared machine wall time moves with other processes' load), so the
  fixed part fades with batch size; peak RSS =
  fixed + per-image MiB x batch. Fitted on the measured batch sizes (1 to 256).
- Image size and tokens: log-log slope of the cost per training image (CPU time of the
  measuring process; wall time where that is missing) against pixels (or tokens),
  overall and between the two largest points, beside the same slope of the analytic
  FLOP count and of wall time: 1 means linear, 2 quadratic. For tokens also
  t = c + a N + b N^2, whose crossover N = a / b is where attention's N^2 term (the two
  N x N products, softmax) costs as much as the linear part.
  Memory: the log-log slope of the peak RSS of a training step above the process's
  baseline (measured after a warm-up that pays TensorFlow's one-time allocations).
"""

from __future__ import annotations

import math

import numpy as np


def loglog_slope(x, y) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two points)."""
    x = np.asarray(x, float)
    y = np.asarray([np.nan if v is None else v for v in y], float)
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2 or np.ptp(np.log(x[keep])) == 0:
        return None
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def _f2(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def linear_fit(x, y) -> tuple[float, float] | None:
    """(intercept, slope) of y = intercept + slope x, least squares."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def growth_word(slope: float | None) -> str:
    if slope is None:
        return "not measured"
    if slope < 0.3:
        return "about constant"
    if slope < 0.8:
        return "sub-linear"
    if slope <= 1.2:
        return "about linear"
    if slope < 1.7:
        return "between linear and quadratic"
    return "about quadratic"


def _ok(points, part="train"):
    return [p for p in points if p.get(part, {}).get("status") == "ok"]


def memory_above_baseline(point: dict) -> float | None:
    """Peak RSS of a sweep point's training step above its process's baseline (after
    the warm-up): the model, optimizer state and activations of that point."""
    train = point.get("train", {})
    if train.get("status") != "ok":
        return None
    baseline = (point.get("process") or {}).get("baseline_rss_mb") or train["rss_before_mb"]
    return train["peak_rss_mb"] - baseline


def _cost(points) -> tuple[list[float], str]:
    """Seconds per training image: the measuring process's CPU time where every point
    has it (on a shared machine wall time moves with other processes' load between
    points; CPU time tracks the work), else wall time."""
    cpu = [p["train"].get("cpu_ms_per_image") for p in points]
    if None not in cpu and all(c > 0 for c in cpu):
        return [c / 1e3 for c in cpu], "CPU time"
    return [1 / p["train"]["images_per_s"] for p in points], "wall time"


def fit_batch(sweep: dict) -> dict:
    """Fit of a batch-size sweep: cost per step and peak RSS against batch size."""
    points = _ok(sweep["points"])
    fit = {"points_used": len(points)}
    if len(points) < 2:
        fit["statement"] = f"{sweep['label']}: too few batch sizes measured to fit."
        return fit
    b = [p["train"]["batch_size"] for p in points]
    per_image, measure = _cost(points)
    rate = [p["train"]["images_per_s"] for p in points]
    others = [p["train"].get("other_processes_cores") or 0.0 for p in points]
    # Per image: cost / batch = slope + fixed / batch, fitted against 1 / batch so that
    # every batch size weighs alike (a fit of the step cost is all batch 256).
    slope, fixed = linear_fit([1 / n for n in b], per_image)
    mem = linear_fit(b, [p["train"]["peak_rss_mb"] for p in points])
    fit.update(cost_measure=measure, step_fixed_ms=1e3 * fixed, step_ms_per_image=1e3 * slope,
               # The batch beyond which the fixed part is under a tenth of a step.
               amortizing_batch=10 * fixed / slope if fixed > 0 and slope > 0 else None,
               images_per_s_slope_vs_batch=loglog_slope(b, rate),
               peak_rss_fixed_mb=mem[0], peak_rss_mb_per_image=mem[1])
    amortized = (f"; from batch {fit['amortizing_batch']:.0f} on it is under a tenth of a step"
                 if fit["amortizing_batch"] else "")
    fit["statement"] = (
        f"{sweep['label']}, training: a step costs {fit['step_fixed_ms']:.0f} ms + "
        f"{fit['step_ms_per_image']:.1f} ms per image of {measure} (batch {min(b)} to "
        f"{max(b)}){amortized}. Wall-clock images/s here: {rate[0]:.0f} at batch {b[0]}, "
        f"{max(rate):.0f} at best, {rate[-1]:.0f} at {b[-1]} (other processes: "
        f"{min(others):.1f}-{max(others):.1f} cores). Peak RSS = {mem[0]:.0f} MiB + "
        f"{mem[1]:.1f} MiB per image in the batch.")
    return fit


def fit_growth(sweep: dict, x_name: str) -> dict:
    """Log-log slopes of cost, FLOPs and memory per training image against `x_name`
    ('pixels' or 'tokens') over a sweep's points, overall and between the two largest.
    The cost is the measuring process's CPU time per image where measured (on a shared
    machine wall time moves with other processes' load between points), else wall time."""
    points = _ok(sweep["points"])
    fit = {"points_used": len(points), "x": x_name}
    if len(points) < 2:
        fit["statement"] = f"{sweep['label']}: too few points measured to fit."
        return fit
    x = [p[x_name] for p in points]
    wall = [1 / p["train"]["images_per_s"] for p in points]
    cost, measure = _cost(points)
    fit.update(
        cost_measure=measure,
        time_slope=loglog_slope(x, cost), wall_time_slope=loglog_slope(x, wall),
        top_time_slope=loglog_slope(x[-2:], cost[-2:]),
        flops_slope=loglog_slope(x, [p["flops_per_image"] for p in points]),
        memory_slope=loglog_slope(x, [memory_above_baseline(p) for p in points]))
    top = (f", {x_name}^{fit['top_time_slope']:.2f} from {x[-2]} to {x[-1]}"
           if len(points) > 2 else "")
    fit["statement"] = (
        f"{sweep['label']}: cost per training image ({fit['cost_measure']}) grows as "
        f"{x_name}^{fit['time_slope']:.2f} from {x[0]} to {x[-1]} {x_name} "
        f"({growth_word(fit['time_slope'])}){top}; FLOPs: {x_name}^{_f2(fit['flops_slope'])}; "
        f"wall time: {x_name}^{_f2(fit['wall_time_slope'])}; memory above the baseline: "
        f"{x_name}^{_f2(fit['memory_slope'])}.")
    if x_name == "tokens" and len(points) >= 3:
        fit.update(_quadratic(x, cost, "time"))
        fit.update(_quadratic(x, [p["flops_per_image"] for p in points], "flops"))
        parts = []
        for what, label in (("time", fit["cost_measure"]), ("flops", "FLOPs")):
            crossover = fit.get(f"{what}_crossover_tokens")
            parts.append(f"N = {crossover:.0f} in {label}" if crossover
                         else f"not resolved in {label}")
        fit["statement"] += (" Fitting c + aN + bN^2, attention's N^2 term equals the linear "
                             "terms at " + " and ".join(parts) + ".")
    return fit


def _quadratic(tokens, values, what) -> dict:
    n = np.asarray(tokens, float)
    design = np.stack([np.ones_like(n), n, n**2], axis=1)
    (c, a, b), *_ = np.linalg.lstsq(design, np.asarray(values, float), rcond=None)
    out = {f"{what}_fit_constant": float(c), f"{what}_fit_linear": float(a),
           f"{what}_fit_quadratic": float(b)}
    out[f"{what}_crossover_tokens"] = float(a / b) if a > 0 and b > 0 else None
    return out


def statements(scaling: dict) -> list[str]:
    """Every sweep's statement, batch sweeps first."""
    out = []
    for kind in ("batch", "image_size", "tokens"):
        for sweep in scaling.get(kind, []):
            if sweep.get("fit", {}).get("statement"):
                out.append(sweep["fit"]["statement"])
    return out


def tokens_of(image_size: int, patch_size: int) -> int:
    return (image_size // patch_size) ** 2


def is_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
