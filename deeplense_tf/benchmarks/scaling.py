"""How cost grows: fits to the scaling sweeps, and the sentences that state them.

- Batch size: seconds per training step = fixed + per_image x batch (least squares), so
  images/s = batch / step approaches 1 / per_image; peak RSS = fixed + per-image MiB x
  batch. Fitted on the measured batch sizes (1 to 256 by default).
- Image size and tokens: log-log slope of seconds per training image against pixels
  (or tokens), beside the same slope of the analytic FLOP count: 1 means linear, 2
  quadratic. For tokens also t = c + a N + b N^2, whose crossover N = a / b is where
  attention's N^2 term (the two N x N products) costs as much as the linear part.
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


def fit_batch(sweep: dict) -> dict:
    """Fit of a batch-size sweep: step time and peak RSS against batch size."""
    points = _ok(sweep["points"])
    fit = {"points_used": len(points)}
    if len(points) < 2:
        fit["statement"] = f"{sweep['label']}: too few batch sizes measured to fit."
        return fit
    b = [p["train"]["batch_size"] for p in points]
    step = [p["train"]["seconds_per_call"] for p in points]
    rate = [p["train"]["images_per_s"] for p in points]
    fixed, per_image = linear_fit(b, step)
    mem = linear_fit(b, [p["train"]["peak_rss_mb"] for p in points])
    fit.update(step_fixed_ms=1e3 * fixed, step_ms_per_image=1e3 * per_image,
               asymptotic_images_per_s=1 / per_image if per_image > 0 else None,
               images_per_s_slope_vs_batch=loglog_slope(b, rate),
               peak_rss_fixed_mb=mem[0], peak_rss_mb_per_image=mem[1])
    limit = (f"{fit['asymptotic_images_per_s']:.0f}" if fit["asymptotic_images_per_s"]
             else "unbounded (per-image time not resolved)")
    fit["statement"] = (
        f"{sweep['label']}, training: a step costs {fit['step_fixed_ms']:.0f} ms + "
        f"{fit['step_ms_per_image']:.2f} ms per image (batch {min(b)} to {max(b)}); images/s "
        f"goes from {rate[0]:.0f} to {rate[-1]:.0f}, limit {limit}. Peak RSS = "
        f"{mem[0]:.0f} MiB + {mem[1]:.2f} MiB per image in the batch.")
    return fit


def fit_growth(sweep: dict, x_name: str) -> dict:
    """Log-log slopes of time, FLOPs and added memory per training image against
    `x_name` ('pixels' or 'tokens') over a sweep's points."""
    points = _ok(sweep["points"])
    fit = {"points_used": len(points), "x": x_name}
    if len(points) < 2:
        fit["statement"] = f"{sweep['label']}: too few points measured to fit."
        return fit
    x = [p[x_name] for p in points]
    per_image = [1 / p["train"]["images_per_s"] for p in points]
    fit.update(
        time_slope=loglog_slope(x, per_image),
        cpu_time_slope=loglog_slope(x, [p["train"].get("cpu_ms_per_image") for p in points]),
        flops_slope=loglog_slope(x, [p["flops_per_image"] for p in points]),
        memory_slope=loglog_slope(x, [memory_above_baseline(p) for p in points]))
    cpu = (f"; CPU time: {x_name}^{fit['cpu_time_slope']:.2f}"
           if fit["cpu_time_slope"] is not None else "")
    fit["statement"] = (
        f"{sweep['label']}: time per training image grows as {x_name}^"
        f"{fit['time_slope']:.2f} ({growth_word(fit['time_slope'])}{cpu}; FLOPs: "
        f"{x_name}^{fit['flops_slope']:.2f}) and its memory above the baseline as {x_name}^"
        f"{_f2(fit['memory_slope'])}, from {min(x)} to {max(x)} {x_name}.")
    if x_name == "tokens" and len(points) >= 3:
        fit.update(_quadratic(x, per_image, "time"))
        fit.update(_quadratic(x, [p["flops_per_image"] for p in points], "flops"))
        parts = []
        for what in ("time", "flops"):
            crossover = fit.get(f"{what}_crossover_tokens")
            parts.append(f"{what}: N = {crossover:.0f}" if crossover else f"{what}: not resolved")
        fit["statement"] += (" Fitting c + aN + bN^2, attention's N^2 term equals the linear "
                             "terms at " + ", ".join(parts) + ".")
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
