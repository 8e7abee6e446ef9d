"""Piecewise-exponential posteriors: integrals, CDF, quantiles, moments, refinement."""

import math

import numpy as np
import pytest

from deeplense_tf.reference import quadrature


def test_gaussian_integral_quantiles_and_moments():
    x = np.linspace(-6, 6, 601)
    log_p = -0.5 * x**2
    assert quadrature.log_integral(x, log_p) == pytest.approx(0.5 * math.log(2 * math.pi), abs=1e-4)
    q = quadrature.quantile(x, log_p, [0.16, 0.5, 0.84])
    np.testing.assert_allclose(q, [-0.9945, 0.0, 0.9945], atol=2e-3)
    mean, std = quadrature.mean_and_std(x, log_p)
    assert mean == pytest.approx(0.0, abs=1e-9) and std == pytest.approx(1.0, abs=1e-3)


def test_cdf_and_quantile_invert_each_other_on_steep_and_flat_intervals():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    log_p = np.array([-900.0, -2.0, 0.0, 0.0, -40.0])
    q = np.linspace(0.001, 0.999, 37)
    np.testing.assert_allclose(quadrature.cdf(x, log_p, quadrature.quantile(x, log_p, q)), q,
                               atol=1e-9)
    assert quadrature.cdf(x, log_p, [-5.0, 5.0]).tolist() == [0.0, 1.0]


def test_exponential_segment_is_exact():
    """One interval with linear ln p is integrated exactly, whatever its slope."""
    for slope in (-3000.0, -1.0, 1e-9, 2.0, 700.0):
        x = np.array([0.0, 1.0])
        log_p = np.array([0.0, slope])
        exact = math.log(np.expm1(slope) / slope) if abs(slope) > 1e-6 else 0.0
        if slope > 0:
            exact = slope + math.log(-np.expm1(-slope) / slope)
        assert quadrature.log_integral(x, log_p) == pytest.approx(exact, abs=1e-9)
        mean, std = quadrature.mean_and_std(x, log_p)
        from scipy.integrate import quad

        peak = max(slope, 0.0)
        moments = [quad(lambda t, k=k: t**k * np.exp(slope * t - peak), 0, 1, points=[0, 1],
                        epsabs=0, epsrel=1e-12, limit=200)[0] for k in range(3)]
        assert mean == pytest.approx(moments[1] / moments[0], rel=1e-6, abs=1e-9)
        variance = moments[2] / moments[0] - (moments[1] / moments[0]) ** 2
        assert std == pytest.approx(math.sqrt(variance), rel=1e-4, abs=1e-7)


def test_infinite_ends_and_bad_nodes():
    x = np.array([0.0, 1.0, 2.0])
    assert quadrature.log_integral(x, [0.0, -np.inf, -np.inf]) == -math.inf
    with pytest.raises(ValueError, match="strictly increasing"):
        quadrature.log_integral([0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="never NaN"):
        quadrature.log_integral(x, [0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="quantiles must lie"):
        quadrature.quantile(x, [0.0, 0.0, 0.0], [1.5])


def test_periodic_nodes_close_the_circle():
    theta = np.arange(8) * math.pi / 8
    x, y = quadrature.periodic_nodes(theta, np.zeros(8), math.pi)
    assert x[-1] == pytest.approx(math.pi) and quadrature.log_integral(x, y) == pytest.approx(
        math.log(math.pi))
