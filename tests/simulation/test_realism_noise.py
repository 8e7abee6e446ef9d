"""Correlated (drizzle-like) noise: per-pixel sigma and lag correlations, numerically
on a large field, against the analytic overlap integral and Casertano et al. (2000)."""

import math

import numpy as np
import pytest
from scipy import integrate

from deeplense_tf.simulation import noise_models

CASES = [(1.0, 1.0), (0.5, 1.0), (0.8, 0.08 / 0.13), (1.0, 0.5), (0.6, 0.5)]


def _overlap(u, d):
    """Overlap length of a drop of side d centred at u with the pixel [-1/2, 1/2]."""
    return max(0.0, min(u + d / 2, 0.5) - max(u - d / 2, -0.5))


def _correlation_by_quadrature(lag, pixfrac, scale_ratio):
    d = pixfrac / scale_ratio
    f = lambda u: _overlap(u, d) * _overlap(u - lag, d)  # noqa: E731
    points = [lag + s * (0.5 + t * d / 2) for s in (-1, 1) for t in (-1, 1)]
    points += [s * (0.5 + t * d / 2) for s in (-1, 1) for t in (-1, 1)]
    c = integrate.quad(f, -3 - d, 3 + d, points=sorted(points), limit=200)[0]
    c0 = integrate.quad(lambda u: _overlap(u, d) ** 2, -1 - d, 1 + d, limit=200)[0]
    return c / c0


def _casertano_ratio(pixfrac, scale_ratio):
    r = pixfrac / scale_ratio
    return 1 / (1 - r / 3) if r <= 1 else r / (1 - 1 / (3 * r))


@pytest.mark.parametrize("pixfrac, scale_ratio", CASES)
def test_autocorrelation_is_the_overlap_integral_and_sums_to_casertanos_ratio(pixfrac, scale_ratio):
    rho = noise_models.drizzle_autocorrelation(pixfrac, scale_ratio)
    assert rho[0] == 1.0
    for lag in range(4):
        expected = _correlation_by_quadrature(lag, pixfrac, scale_ratio)
        got = rho[lag] if lag < rho.size else 0.0
        assert got == pytest.approx(expected, abs=1e-7)
    assert noise_models.noise_correlation_ratio(pixfrac, scale_ratio) == \
        pytest.approx(_casertano_ratio(pixfrac, scale_ratio), rel=1e-8)


@pytest.mark.parametrize("pixfrac, scale_ratio", CASES)
def test_kernel_has_unit_norm_and_the_drizzle_autocorrelation(pixfrac, scale_ratio):
    kernel = noise_models.drizzle_kernel(pixfrac, scale_ratio)
    rho = noise_models.drizzle_autocorrelation(pixfrac, scale_ratio)
    assert kernel.shape[0] % 2 == 1 and kernel.shape[0] == kernel.shape[1]
    assert np.sum(kernel**2) == pytest.approx(1.0)
    for lag, expected in (((0, 1), rho[1]), ((1, 0), rho[1]), ((1, 1), rho[1] ** 2),
                          ((0, 2), rho[2] if rho.size > 2 else 0.0)):
        assert noise_models.kernel_autocorrelation(kernel, lag) == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize("pixfrac, scale_ratio", [(0.8, 0.08 / 0.13), (1.0, 1.0)])
def test_noise_field_has_the_stated_sigma_and_lag_correlations(pixfrac, scale_ratio):
    sigma, n = 0.37, 1024
    kernel = noise_models.drizzle_kernel(pixfrac, scale_ratio)
    noise = noise_models.correlated_noise((n, n), sigma, kernel, np.random.default_rng(11))
    assert noise.shape == (n, n)
    assert noise.std() == pytest.approx(sigma, rel=0.01)
    assert abs(noise.mean()) < 0.01 * sigma
    rho = noise_models.drizzle_autocorrelation(pixfrac, scale_ratio)
    z = noise / noise.std()
    lag_x = np.mean(z[:, 1:] * z[:, :-1])
    lag_y = np.mean(z[1:, :] * z[:-1, :])
    lag_xy = np.mean(z[1:, 1:] * z[:-1, :-1])
    # Statistical error of a lag correlation over 1e6 pixels: ~0.003.
    assert lag_x == pytest.approx(rho[1], abs=0.01)
    assert lag_y == pytest.approx(rho[1], abs=0.01)
    assert lag_xy == pytest.approx(rho[1] ** 2, abs=0.01)


def test_any_kernel_gives_its_own_analytic_lag_correlation():
    kernel = np.array([[0.0, 0.2, 0.1], [0.3, 1.0, 0.6], [0.1, 0.4, 0.0]])  # asymmetric
    noise = noise_models.correlated_noise((1024, 1024), 2.0, kernel, np.random.default_rng(2))
    assert noise.std() == pytest.approx(2.0, rel=0.01)
    z = noise / noise.std()
    assert np.mean(z[:, 1:] * z[:, :-1]) == pytest.approx(
        noise_models.kernel_autocorrelation(kernel, (0, 1)), abs=0.01)
    assert np.mean(z[1:, :] * z[:-1, :]) == pytest.approx(
        noise_models.kernel_autocorrelation(kernel, (1, 0)), abs=0.01)


def test_white_limit_and_reproducibility():
    kernel = noise_models.drizzle_kernel(0.1, 1.0)  # tiny drops: nearly white
    assert noise_models.drizzle_autocorrelation(0.1, 1.0)[1] < 0.02
    a = noise_models.correlated_noise((64, 64), 1.0, kernel, np.random.default_rng(4))
    b = noise_models.correlated_noise((64, 64), 1.0, kernel, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)


def test_clear_errors():
    with pytest.raises(ValueError, match="pixfrac"):
        noise_models.drizzle_kernel(1.5, 1.0)
    with pytest.raises(ValueError, match="scale_ratio"):
        noise_models.drizzle_autocorrelation(0.8, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        noise_models.correlated_noise((8, 8), -1.0, np.ones((3, 3)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="kernel"):
        noise_models.correlated_noise((8, 8), 1.0, np.zeros((3, 3)), np.random.default_rng(0))
    assert math.isfinite(noise_models.noise_correlation_ratio(1.0, 1.0))
