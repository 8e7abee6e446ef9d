"""Lens-galaxy light: flux, profile and alignment checked against independent formulas."""

import math

import numpy as np
import pytest
from scipy.special import gamma, gammaincinv

from deeplense_tf.simulation import instruments, lens_light
from deeplense_tf.simulation.lens_light import LensLightModel
from deeplense_tf.simulation.priors import Fixed

ZERO_POINT = 25.0
MACRO = {"theta_e": 1.28, "lens_e1": 0.12, "lens_e2": -0.05, "lens_center_x": 0.03,
         "lens_center_y": -0.02}


def _instrument(num_pix, pixel_scale, fwhm=0.1):
    return instruments.Instrument(name="test_grid", num_pix=num_pix, pixel_scale_arcsec=pixel_scale,
                                  psf_fwhm_arcsec=fwhm, background_rms=0.0,
                                  exposure_time_s=Fixed(1.0), magnitude_zero_point=ZERO_POINT)


def _params(n=4.0, r_eff=0.2, e1=0.15, e2=-0.1, magnitude=20.0, **extra):
    return dict({"lens_light_magnitude": magnitude, "lens_light_r_sersic": r_eff,
                 "lens_light_n_sersic": n, "lens_light_e1": e1, "lens_light_e2": e2,
                 "lens_light_center_x": 0.013, "lens_light_center_y": -0.021}, **extra)


def _analytic_i_eff(total_flux, r_eff, n):
    """Sersic surface brightness at R_eff for a total flux: I_e = F / (2 pi n R_e^2 e^b
    b^(-2n) Gamma(2n)), with the exact b_n (half the light inside R_e)."""
    b = gammaincinv(2 * n, 0.5)
    return total_flux / (2 * math.pi * n * r_eff**2 * math.exp(b) * b ** (-2 * n) * gamma(2 * n))


@pytest.mark.parametrize("params", [
    _params(n=4.0),
    _params(n=1.0, e1=-0.2, e2=0.05),
    _params(n=4.0, lens_light_inner_fraction=0.4, lens_light_inner_r_sersic=0.1,
            lens_light_outer_r_sersic=0.3),
], ids=["de_vaucouleurs", "exponential", "double_sersic"])
def test_rendered_light_sums_to_the_magnitude_at_the_zero_point(params):
    """The PSF-convolved image on a grid reaching ~35 R_eff holds 10^(-0.4 (m - zp))
    counts/s within 1% (n = 4 loses ~0.6% beyond the grid)."""
    image = lens_light.render_lens_light(params, _instrument(301, 0.05), supersampling=3)
    expected = 10 ** (-0.4 * (params["lens_light_magnitude"] - ZERO_POINT))
    assert image.sum() == pytest.approx(expected, rel=0.01)
    assert image.shape == (301, 301) and np.all(image >= 0)


def test_half_of_the_light_falls_inside_the_elliptical_effective_radius():
    """R_sersic is the product-average half-light radius: R^2 = q x'^2 + y'^2 / q."""
    p = _params(n=2.5, r_eff=0.5, e1=0.2, e2=0.0)
    inst = _instrument(401, 0.02)
    image = lens_light.render_lens_light(p, inst, supersampling=3, convolve=False)
    axis = (np.arange(401) + 0.5 - 401 / 2) * 0.02
    x, y = np.meshgrid(axis - p["lens_light_center_x"], axis - p["lens_light_center_y"])
    q = (1 - 0.2) / (1 + 0.2)  # phi = 0: major axis along x
    inside = q * x**2 + y**2 / q < p["lens_light_r_sersic"] ** 2
    total = 10 ** (-0.4 * (p["lens_light_magnitude"] - ZERO_POINT))
    assert image[inside].sum() / total == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("n", [1.0, 2.5, 4.0, 6.0])
def test_surface_brightness_at_r_eff_equals_the_analytic_sersic_i_e(n):
    p = _params(n=n, r_eff=0.4, e1=0.0, e2=0.2)  # phi = 45 deg
    q = (1 - 0.2) / (1 + 0.2)
    total = 10 ** (-0.4 * (p["lens_light_magnitude"] - ZERO_POINT))
    a = p["lens_light_r_sersic"] / math.sqrt(q)  # on the major axis R = a sqrt(q)
    x = p["lens_light_center_x"] + a * math.cos(math.pi / 4)
    y = p["lens_light_center_y"] + a * math.sin(math.pi / 4)
    value = lens_light.surface_brightness(np.array([x]), np.array([y]), p, ZERO_POINT)[0]
    # lenstronomy's b_n approximation (1.9992 n - 0.3271) moves I_e by < 0.2%.
    assert value == pytest.approx(_analytic_i_eff(total, p["lens_light_r_sersic"], n), rel=2e-3)


def test_rendered_pixel_at_r_eff_equals_i_e_times_pixel_area():
    p = _params(n=4.0, r_eff=0.5, e1=0.0, e2=0.0)
    p["lens_light_center_x"] = p["lens_light_center_y"] = 0.0
    inst = _instrument(121, 0.01)
    image = lens_light.render_lens_light(p, inst, supersampling=4, convolve=False)
    # Pixel 110 along x has its centre at (110 + 0.5 - 60.5) * 0.01 = 0.5" = R_eff.
    total = 10 ** (-0.4 * (p["lens_light_magnitude"] - ZERO_POINT))
    expected = _analytic_i_eff(total, 0.5, 4.0) * 0.01**2
    assert image[60, 110] == pytest.approx(expected, rel=2e-3)


def test_custom_psf_kernel_replaces_the_gaussian():
    p = _params(n=4.0, r_eff=0.3)
    inst = _instrument(64, 0.1)
    raw = lens_light.render_lens_light(p, inst, convolve=False)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    np.testing.assert_allclose(lens_light.render_lens_light(p, inst, psf_kernel=delta), raw,
                               rtol=1e-9, atol=1e-12 * raw.max())
    blurred = lens_light.render_lens_light(p, inst)
    assert blurred.max() < raw.max() and blurred.sum() == pytest.approx(raw.sum(), rel=1e-3)


def test_light_is_centred_and_aligned_with_the_mass():
    model = LensLightModel(double_sersic=True)
    params = model.sample(MACRO, np.random.default_rng(1))
    assert params["lens_light_center_x"] == MACRO["lens_center_x"]
    assert params["lens_light_center_y"] == MACRO["lens_center_y"]
    phi_mass = 0.5 * math.atan2(MACRO["lens_e2"], MACRO["lens_e1"])
    phi_light = 0.5 * math.atan2(params["lens_light_e2"], params["lens_light_e1"])
    assert phi_light == pytest.approx(phi_mass, abs=1e-12)
    assert params["lens_light_outer_r_sersic"] > params["lens_light_r_sersic"] > \
        params["lens_light_inner_r_sersic"]


def test_priors_follow_the_stated_scaling_relations():
    rng = np.random.default_rng(7)
    model = LensLightModel()
    draws = [model.sample(MACRO, rng) for _ in range(3000)]
    c = math.hypot(MACRO["lens_e1"], MACRO["lens_e2"])
    q_mass = (1 - c) / (1 + c)
    e = np.array([math.hypot(d["lens_light_e1"], d["lens_light_e2"]) for d in draws])
    ratio = (1 - e) / (1 + e) / q_mass
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.01)  # Koopmans et al. 2006
    assert np.std(ratio) == pytest.approx(0.11, rel=0.15)
    log_size = np.log10([d["lens_light_r_sersic"] / MACRO["theta_e"] for d in draws])
    assert np.mean(log_size) == pytest.approx(0.0, abs=0.01)
    assert np.std(log_size) == pytest.approx(0.15, rel=0.1)
    n = np.array([d["lens_light_n_sersic"] for d in draws])
    assert 3.0 <= n.min() and n.max() <= 5.0
    mags = np.array([d["lens_light_magnitude"] for d in draws])
    assert np.mean(mags) == pytest.approx(19.5, abs=0.03)


def test_magnitude_scales_with_einstein_radius_and_band():
    fixed = LensLightModel(magnitude_at_reference=Fixed(19.5))
    rng = np.random.default_rng(0)
    m1 = fixed.sample(MACRO, rng)["lens_light_magnitude"]
    m2 = fixed.sample(dict(MACRO, theta_e=2 * MACRO["theta_e"]), rng)["lens_light_magnitude"]
    assert m1 == pytest.approx(19.5)
    assert m2 - m1 == pytest.approx(-5 * math.log10(2))  # L ~ theta_E^2 (Faber-Jackson)
    hst = LensLightModel.for_instrument("hst", magnitude_at_reference=Fixed(19.5))
    assert hst.sample(MACRO, rng)["lens_light_magnitude"] == pytest.approx(19.5 - 1.2)


def test_sampling_is_reproducible_from_the_generator():
    model = LensLightModel(double_sersic=True)
    a = model.sample(MACRO, np.random.default_rng(3))
    b = model.sample(MACRO, np.random.default_rng(3))
    assert a == b


def test_clear_errors():
    with pytest.raises(ValueError, match="zero point"):
        lens_light.render_lens_light(_params(), instruments.get("model_i"))
    with pytest.raises(ValueError, match="model_i"):
        LensLightModel.for_instrument("model_i")
    with pytest.raises(ValueError, match="inner_fraction"):
        LensLightModel(inner_fraction=Fixed(1.2))
    with pytest.raises(ValueError, match="supersampling"):
        lens_light.render_lens_light(_params(), _instrument(16, 0.1), supersampling=0)
