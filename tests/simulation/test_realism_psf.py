"""PSFs: validation of pixel kernels, jittered analytic kernels, diffraction patterns
checked against diffraction theory and an independent FFT of the pupil."""

import math

import numpy as np
import pytest
from scipy import optimize, special

from deeplense_tf.simulation import psf

ARCSEC = 180 / math.pi * 3600


def _gaussian(size=11, sigma=1.5):
    axis = np.arange(size) - size // 2
    x, y = np.meshgrid(axis, axis)
    k = np.exp(-0.5 * (x**2 + y**2) / sigma**2)
    return k / k.sum()


# ---------------------------------------------------------------- pixel PSFs

def test_valid_kernel_passes_unchanged_and_lenstronomy_accepts_it():
    from lenstronomy.Data.psf import PSF

    k = _gaussian()
    out = psf.pixel_psf(k, image_num_pix=64)
    np.testing.assert_array_equal(out, k)
    assert out is not k
    lenstronomy_psf = PSF(**psf.lenstronomy_kwargs(out))
    np.testing.assert_allclose(lenstronomy_psf.kernel_point_source, k, atol=1e-12)


def test_convolve_matches_lenstronomy_pixel_convolution():
    from lenstronomy.ImSim.Numerics.convolution import PixelKernelConvolution

    image = np.random.default_rng(0).random((40, 40))
    k = psf.elliptical_kernel(0.3, 0.1, e1=0.1, e2=0.05)
    np.testing.assert_allclose(psf.convolve(image, k),
                               PixelKernelConvolution(k).convolution2d(image), atol=1e-12)


@pytest.mark.parametrize("kernel, kwargs, message", [
    (_gaussian() * 1.01, {}, r"sums to 1\.01.*expected 1 within 0\.001.*normalize=True"),
    (_gaussian(10), {}, "expected an odd side"),
    (np.ones((5, 7)) / 35, {}, "expected a square kernel"),
    (np.ones((3, 3, 3)) / 27, {}, "expected a 2-D kernel"),
    (_gaussian(21), {"image_num_pix": 16}, "larger than the image .16 px.; expected at most 15"),
    (np.where(_gaussian() > 0.05, np.nan, _gaussian()), {}, "NaN or infinite"),
    (_gaussian() - 0.002, {}, "negative pixels hold .* expected at most 0.001"),
    (-_gaussian(), {}, "no positive pixels"),
])
def test_bad_kernels_are_refused_with_a_message_naming_the_input(kernel, kwargs, message):
    with pytest.raises(ValueError, match="my_psf: .*" + message):
        psf.pixel_psf(kernel, name="my_psf", **kwargs)


def test_normalize_rescales_and_small_negatives_are_clipped():
    k = _gaussian() * 3.0
    np.testing.assert_allclose(psf.pixel_psf(k, normalize=True), _gaussian(), rtol=1e-12)
    noisy = _gaussian().copy()
    noisy[0, 0] = -1e-5  # measurement noise in the wings, within the tolerance
    out = psf.pixel_psf(noisy)
    assert out.min() == 0.0 and out.sum() == pytest.approx(1.0, abs=1e-4)


def test_fits_file_round_trip_and_errors_name_the_path(tmp_path):
    from astropy.io import fits

    good, bad = tmp_path / "psf.fits", tmp_path / "psf_even.fits"
    fits.PrimaryHDU(_gaussian().astype(np.float32)).writeto(good)
    fits.PrimaryHDU(_gaussian(10)).writeto(bad)
    np.testing.assert_allclose(psf.pixel_psf(good), _gaussian(), atol=1e-6)
    with pytest.raises(ValueError, match="psf_even.fits: expected an odd side"):
        psf.pixel_psf(str(bad))


# ------------------------------------------------------- analytic kernels + jitter

def _moments(k, pixel_scale):
    size = k.shape[0]
    axis = (np.arange(size) - size // 2) * pixel_scale
    x, y = np.meshgrid(axis, axis)
    xy = np.sum(k * x * y)
    return np.array([[np.sum(k * x * x), xy], [xy, np.sum(k * y * y)]])


def test_gaussian_kernel_second_moments_match_the_ellipse():
    """Pixel integration adds pixel^2 / 12 to each variance; a Gaussian with
    r^2 = q x'^2 + y'^2 / q has variances sigma^2 / q and sigma^2 q on its axes."""
    fwhm, scale, e1, e2 = 0.3, 0.05, 0.08, -0.06
    k = psf.elliptical_kernel(fwhm, scale, e1=e1, e2=e2, size=41)
    assert k.sum() == pytest.approx(1.0) and k.shape == (41, 41)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
    e = math.hypot(e1, e2)
    q, phi = (1 - e) / (1 + e), 0.5 * math.atan2(e2, e1)
    sigma2 = (fwhm / (2 * math.sqrt(2 * math.log(2)))) ** 2
    cov = _moments(k, scale) - np.eye(2) * scale**2 / 12
    values, vectors = np.linalg.eigh(cov)
    np.testing.assert_allclose(values, [sigma2 * q, sigma2 / q], rtol=2e-3)
    major = vectors[:, 1]
    assert abs(math.cos(math.atan2(major[1], major[0]) - phi)) == pytest.approx(1.0, abs=1e-5)


def test_round_kernels_are_symmetric_and_have_the_requested_fwhm():
    for beta in (None, 2.5):
        k = psf.elliptical_kernel(0.5, 0.01, moffat_beta=beta, size=201)
        np.testing.assert_allclose(k, k.T, atol=1e-15)
        np.testing.assert_allclose(k, k[:, ::-1], atol=1e-15)
        # Pixel 25 from the centre sits at FWHM / 2 = 0.25".
        assert k[100, 125] / k[100, 100] == pytest.approx(0.5, rel=2e-3)


def test_psf_variation_draws_have_the_stated_scatter():
    variation = psf.PSFVariation(fractional_fwhm_scatter=0.05, ellipticity_sigma=0.03)
    rng = np.random.default_rng(0)
    draws = [variation.sample(0.16, rng) for _ in range(4000)]
    log_fwhm = np.log([d["psf_fwhm_arcsec"] / 0.16 for d in draws])
    assert np.mean(log_fwhm) == pytest.approx(0.0, abs=0.003)
    assert np.std(log_fwhm) == pytest.approx(0.05, rel=0.05)
    for key in ("psf_e1", "psf_e2"):
        assert np.std([d[key] for d in draws]) == pytest.approx(0.03, rel=0.05)
    kernel = variation.kernel(draws[0], 0.101)
    assert kernel.shape[0] % 2 == 1 and kernel.sum() == pytest.approx(1.0)
    assert variation.sample(0.16, np.random.default_rng(5)) == \
        variation.sample(0.16, np.random.default_rng(5))
    with pytest.raises(ValueError, match="ellipticity_sigma"):
        psf.PSFVariation(ellipticity_sigma=0.3)


# ---------------------------------------------------------------- diffraction

def _half_max_radius(profile, scale):
    """Radius (arcsec) where a 1-D cut from the centre first drops to half its peak."""
    below = int(np.argmax(profile < 0.5 * profile[0]))
    a, b = profile[below - 1], profile[below]
    return (below - 1 + (a - 0.5 * profile[0]) / (a - b)) * scale


def test_unobscured_monochromatic_fwhm_is_1_03_lambda_over_d():
    wavelength, aperture, scale = 1.0e-6, 2.4, 0.004
    k = psf.diffraction_psf(scale, aperture_m=aperture, obscuration=0.0,
                            wavelengths_m=[wavelength], size=101, oversampling=3)
    fwhm = 2 * _half_max_radius(k[50, 50:], scale)
    assert fwhm == pytest.approx(1.029 * wavelength / aperture * ARCSEC, rel=0.02)


def _obscured_amplitude(v, eps):
    return 2 * special.j1(v) / v - eps**2 * 2 * special.j1(eps * v) / (eps * v)


def test_obscured_first_dark_ring_sits_at_the_analytic_zero():
    """The first zero of 2 J1(v)/v - eps^2 2 J1(eps v)/(eps v) (eps = 0.33: v = 3.45,
    inside the unobscured 3.832), found here by root finding, marks the minimum of the
    rendered PSF."""
    eps, wavelength, aperture, scale = 0.33, 1.54e-6, 2.4, 0.004
    v0 = optimize.brentq(_obscured_amplitude, 2.5, 3.9, args=(eps,))
    assert v0 < 3.8317
    expected = v0 * wavelength / (math.pi * aperture) * ARCSEC
    k = psf.diffraction_psf(scale, aperture_m=aperture, obscuration=eps,
                            wavelengths_m=[wavelength], size=101, oversampling=3)
    cut = k[50, 50:]
    i = int(np.argmin(cut[: int(1.5 * expected / scale)]))
    a, b, c = cut[i - 1], cut[i], cut[i + 1]
    minimum = (i + 0.5 * (a - c) / (a - 2 * b + c)) * scale
    assert minimum == pytest.approx(expected, rel=0.01)


def test_obscured_airy_matches_an_fft_of_the_annular_pupil():
    """Independent route: |FFT(pupil)|^2 of an annulus 128 px across on a 2048 grid
    (PSF sampled at lambda/D / 16), peak-normalized, against the analytic pattern."""
    eps, n, diameter = 0.33, 2048, 128
    axis = np.arange(n) - n // 2
    x, y = np.meshgrid(axis, axis)
    r = np.hypot(x + 0.5, y + 0.5)  # pupil centred between pixels: symmetric PSF grid
    pupil = ((r <= diameter / 2) & (r >= eps * diameter / 2)).astype(float)
    field = np.fft.fftshift(np.fft.fft2(pupil))
    intensity = np.abs(field[n // 2, n // 2:]) ** 2
    intensity /= intensity[0]
    samples_per_lambda_over_d = n / diameter
    wavelength, aperture = 1.0e-6, 2.4
    for radius in (0.5, 0.9, 1.4, 2.0):  # units of lambda / D
        i = int(round(radius * samples_per_lambda_over_d))
        theta = i / samples_per_lambda_over_d * wavelength / aperture * ARCSEC
        analytic = psf.obscured_airy(theta, wavelength, aperture, eps)
        assert analytic == pytest.approx(intensity[i], abs=3e-3)


def test_encircled_energy_ratios_match_the_radial_integral():
    """EE(r1) / EE(r2) of the rendered obscured PSF against the quadrature of the
    analytic intensity (the stamp's normalization cancels in the ratio)."""
    eps, wavelength, aperture, scale = 0.3, 0.7e-6, 1.2, 0.01
    k = psf.diffraction_psf(scale, aperture_m=aperture, obscuration=eps,
                            wavelengths_m=[wavelength], size=121, oversampling=3)
    axis = (np.arange(121) - 60) * scale
    r = np.hypot(*np.meshgrid(axis, axis))
    lam_d = wavelength / aperture * ARCSEC
    from scipy import integrate

    def ee(radius):
        v_max = math.pi * radius / lam_d
        f = lambda v: (_obscured_amplitude(v, eps) / (1 - eps**2)) ** 2 * v  # noqa: E731
        return integrate.quad(f, 1e-9, v_max, limit=400)[0]

    for r1, r2 in ((1.0, 4.0), (2.0, 4.0)):
        measured = k[r < r1 * lam_d].sum() / k[r < r2 * lam_d].sum()
        assert measured == pytest.approx(ee(r1 * lam_d) / ee(r2 * lam_d), rel=0.01)


@pytest.mark.parametrize("optics", [psf.EUCLID_VIS, psf.HST_F160W], ids=lambda o: o.name)
def test_presets_are_normalized_symmetric_and_near_diffraction_width(optics):
    k = psf.optics_psf(optics)
    assert k.shape == (21, 21) and k.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    np.testing.assert_allclose(k, k[::-1, :], atol=1e-15)
    np.testing.assert_allclose(k, k[:, ::-1], atol=1e-15)
    # Fine-pixel version: FWHM below 1.03 lambda_mid / D, narrowed by the obscuration and by
    # the short wavelengths' sharper cores (measured 0.90 for VIS, 0.94 for F160W).
    fine = psf.optics_psf(optics, pixel_scale_arcsec=0.005, size=101, oversampling=2)
    lam_mid = 0.5 * sum(optics.band_m)
    fwhm = 2 * _half_max_radius(fine[50, 50:], 0.005)
    assert 0.85 < fwhm / (1.029 * lam_mid / optics.aperture_m * ARCSEC) < 1.0
