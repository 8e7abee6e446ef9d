"""Correlated pixel noise, as in drizzled (resampled and stacked) space images.

Drizzling (Fruchter & Hook 2002) drops each input pixel, shrunk to `pixfrac` of its
side, onto a finer output grid; every output pixel averages the drops that overlap it,
so neighbouring output pixels share input noise. With input pixels landing at all
sub-pixel phases (dithers, distortion), the output noise is white noise convolved with
the overlap function o(u) of a drop of side d = pixfrac / scale_ratio (output pixels;
scale_ratio = output / input pixel size) and an output pixel:

    o = box_d * box_1,        C(Delta) = (o * o)(Delta) = (tri_d * tri_1)(Delta),

with tri_w(t) = max(0, w - |t|). The 2-D covariance is separable, C(dx) C(dy). Its sum
over lags gives Casertano et al.'s (2000, AJ 120, 2747) noise-correlation ratio
R = 1 / (1 - d/3) for d <= 1 and d / (1 - 1/(3d)) for d >= 1 (tested).

`drizzle_kernel` is a real-space kernel whose autocorrelation is C (the spectral square
root, cropped to the smallest size that keeps every lag within 1e-4: 13 x 13 for
pixfrac 0.8 and scale_ratio 0.615, 75 x 75 for the unusual pixfrac 1, scale_ratio 0.5)
at unit L2 norm, so `correlated_noise` keeps the per-pixel sigma it is given: sigma is
the rms of one pixel of the drizzled image, the number a noise map or a background
measurement gives.

Cost (one core, `python -c` timeit, 64 x 64, pixfrac 0.8, scale_ratio 0.615 -- WFC3/IR
0.13" drizzled to 0.08"): `correlated_noise` 0.34 ms; `drizzle_kernel` 0.9 ms on its
first call, then cached. Measured with
    python -c "import timeit, numpy as np; from deeplense_tf.simulation import \
noise_models as N; r=np.random.default_rng(0); k=N.drizzle_kernel(0.8, 0.08/0.13); \
print(timeit.timeit(lambda: N.correlated_noise((64, 64), 0.01, k, r), number=2000)/2000)"
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import integrate, signal


def _drop_side(pixfrac: float, scale_ratio: float) -> float:
    if not (0 < pixfrac <= 1):
        raise ValueError(f"pixfrac: expected a drop size in (0, 1] input pixels, got {pixfrac}")
    if not (0 < scale_ratio <= 4):
        raise ValueError(f"scale_ratio: expected output/input pixel size in (0, 4], got "
                         f"{scale_ratio}")
    return pixfrac / scale_ratio


def drizzle_overlap(u, pixfrac: float, scale_ratio: float) -> np.ndarray:
    """o(u): length of the overlap (output pixels) of a drop centred at offset u (output
    pixels) with the output pixel centred at 0, along one axis."""
    d = _drop_side(pixfrac, scale_ratio)
    u = np.asarray(u, float)
    return np.clip(np.minimum(u + d / 2, 0.5) - np.maximum(u - d / 2, -0.5), 0.0, None)


@functools.lru_cache(maxsize=32)
def drizzle_autocorrelation(pixfrac: float, scale_ratio: float) -> np.ndarray:
    """rho(Delta) = C(Delta) / C(0) at integer lags Delta = 0, 1, ..., L (rho is 0
    beyond L = ceil(d + 1) - 1); one axis, the 2-D correlation is rho(dx) rho(dy)."""
    d = _drop_side(pixfrac, scale_ratio)

    def tri(t, w):
        return np.maximum(0.0, w - np.abs(t))

    lags = np.arange(math.ceil(d + 1))
    values = []
    for lag in lags:
        points = sorted({-d, 0.0, d, lag - 1.0, float(lag), lag + 1.0})
        value, _ = integrate.quad(lambda t: tri(t, d) * tri(lag - t, 1.0), -d, d,
                                  points=points, epsabs=1e-13, epsrel=1e-11, limit=200)
        values.append(value)
    values = np.asarray(values)
    rho = values / values[0]
    rho.flags.writeable = False
    return rho


def noise_correlation_ratio(pixfrac: float, scale_ratio: float) -> float:
    """R = sum_Delta rho(Delta) (one axis): the rms of the mean of a large area is R
    times the per-pixel rms divided by sqrt(number of pixels)."""
    rho = drizzle_autocorrelation(pixfrac, scale_ratio)
    return float(rho[0] + 2 * rho[1:].sum())


@functools.lru_cache(maxsize=32)
def drizzle_kernel(pixfrac: float, scale_ratio: float) -> np.ndarray:
    """Odd (size, size) kernel of unit L2 norm whose autocorrelation is the drizzle
    covariance rho(dx) rho(dy). Read-only (cached)."""
    rho = drizzle_autocorrelation(pixfrac, scale_ratio)
    m = 256  # DFT length: the circular covariance equals rho for |lag| < m/2
    circular = np.zeros(m)
    circular[: rho.size] = rho
    circular[m - rho.size + 1:] = rho[:0:-1]
    spectrum = np.clip(np.fft.rfft(circular).real, 0.0, None)  # >= 0 up to rounding
    root = np.fft.fftshift(np.fft.irfft(np.sqrt(spectrum), n=m))
    centre = m // 2
    # Smallest crop whose own autocorrelation matches rho within 1e-4 at every lag.
    for half in range(rho.size - 1, centre):
        k1 = root[centre - half: centre + half + 1]
        auto = np.correlate(k1, k1, mode="full")[k1.size - 1:]
        auto = auto / auto[0]
        target = np.zeros_like(auto)
        target[: rho.size] = rho[: auto.size]
        if np.max(np.abs(auto - target)) < 1e-4:
            break
    kernel = np.outer(k1, k1)
    kernel /= np.sqrt(np.sum(kernel**2))
    kernel.flags.writeable = False
    return kernel


def kernel_autocorrelation(kernel: np.ndarray, lag: tuple[int, int]) -> float:
    """Normalized autocorrelation sum K(i, j) K(i + dy, j + dx) / sum K^2 of a kernel at
    `lag` = (dy, dx): the lag correlation of white noise convolved with it."""
    k = np.asarray(kernel, float)
    full = signal.correlate(k, k, mode="full")
    cy, cx = k.shape[0] - 1, k.shape[1] - 1
    dy, dx = lag
    if abs(dy) > cy or abs(dx) > cx:
        return 0.0
    return float(full[cy + dy, cx + dx] / full[cy, cx])


def correlated_noise(shape: tuple[int, int], sigma: float, kernel: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Stationary Gaussian noise of per-pixel rms `sigma`: white noise convolved with
    `kernel` / ||kernel||_2 (no edge effects: the white field is padded by the kernel)."""
    k = np.asarray(kernel, float)
    if k.ndim != 2 or not np.all(np.isfinite(k)) or not np.any(k):
        raise ValueError(f"kernel: expected a finite, non-zero 2-D array, got shape {k.shape}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma: expected a finite rms >= 0, got {sigma}")
    white = rng.standard_normal((shape[0] + k.shape[0] - 1, shape[1] + k.shape[1] - 1))
    return signal.fftconvolve(white, k * (sigma / np.sqrt(np.sum(k**2))), mode="valid")
