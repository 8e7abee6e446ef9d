"""Point-spread functions beyond the instruments' single Gaussian.

Three kinds, all returned as an odd-sized, square, normalized pixel kernel (float64,
sum 1, the centre pixel on the optical axis) that `convolve` applies to a noiseless
image in counts/s and that lenstronomy accepts as a `PIXEL` PSF (`lenstronomy_kwargs`):

1. `pixel_psf`: a measured or externally modelled PSF from a numpy array or a FITS file,
   validated (finite, odd, square, not larger than the image, not negative beyond a
   tolerance, normalized or explicitly renormalized).
2. `elliptical_kernel` and `PSFVariation`: an elliptical Gaussian or Moffat whose FWHM
   and ellipticity jitter from image to image (focus breathing, position in the field,
   seeing), as in a survey where no two cut-outs share the same PSF.
3. `diffraction_psf`: the Airy pattern of a circular pupil with a central obscuration,
   averaged over a band, integrated over the pixel; presets `EUCLID_VIS` and
   `HST_F160W` (numbers and sources in docs/realism.md).

Conventions: pixel scales in arcsec, wavelengths and apertures in metres, ellipticity
e = (1 - q) / (1 + q) with components (e1, e2) = e (cos 2 phi, sin 2 phi) as for the
lens models; the FWHM of an elliptical kernel is the geometric mean of its major- and
minor-axis FWHMs. Pixel integration: each pixel is the mean of `oversampling`^2
sub-pixel samples (a box convolution sampled at pixel centres).

Cost (one core, `python -c` timeit): `PSFVariation.sample` + `elliptical_kernel`
(Gaussian, FWHM 0.16", 0.101" pixels, 9 x 9 kernel, oversampling 5) 0.07 ms;
`convolve` of a 64 x 64 image with a 21 x 21 kernel 0.14 ms (9 x 9: 0.11 ms);
`optics_psf(EUCLID_VIS)` or `(HST_F160W)` (21 x 21, 5 wavelengths, oversampling 8)
8.5 ms -- compute it once per
data set, not per image. Measured with e.g.
    python -c "import timeit, numpy as np; from deeplense_tf.simulation import psf; \
v=psf.PSFVariation(); r=np.random.default_rng(0); \
print(timeit.timeit(lambda: v.kernel(v.sample(0.16, r), 0.101), number=2000)/2000)"
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from scipy import signal, special

ARCSEC_PER_RADIAN = 180 / math.pi * 3600


# ---------------------------------------------------------------- 1. pixelized PSFs

def pixel_psf(psf, *, name: str | None = None, normalize: bool = False,
              image_num_pix: int | None = None, sum_tolerance: float = 1e-3,
              negative_tolerance: float = 1e-3, fits_extension: int | str = 0) -> np.ndarray:
    """A validated pixel kernel from an array or a FITS file (path).

    Refused, with a message naming `name` (default: the path or "psf"): not 2-D, not
    square, an even side, a side larger than `image_num_pix`, any NaN or infinity, a
    total negative flux above `negative_tolerance` of the positive flux, a sum that
    differs from 1 by more than `sum_tolerance` (unless `normalize=True`, which divides
    by the sum). Negative pixels within the tolerance (noise of a measured PSF) are
    set to zero before the sum is checked. Returns a new float64 array.
    """
    if isinstance(psf, (str, os.PathLike)):
        from astropy.io import fits

        name = name or os.fspath(psf)
        with fits.open(psf) as hdul:
            data = hdul[fits_extension].data
        if data is None:
            raise ValueError(f"{name}: FITS extension {fits_extension!r} holds no image data")
        kernel = np.array(data, dtype=np.float64)
    else:
        name = name or "psf"
        kernel = np.array(psf, dtype=np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D kernel, got shape {kernel.shape}")
    rows, cols = kernel.shape
    if rows != cols:
        raise ValueError(f"{name}: expected a square kernel, got shape {kernel.shape}")
    if rows % 2 == 0:
        raise ValueError(f"{name}: expected an odd side (the centre pixel on the optical "
                         f"axis), got {rows} x {cols}")
    if image_num_pix is not None and rows > image_num_pix:
        largest = image_num_pix if image_num_pix % 2 else image_num_pix - 1
        raise ValueError(f"{name}: kernel side {rows} is larger than the image "
                         f"({image_num_pix} px); expected at most {largest} px (crop it)")
    if not np.all(np.isfinite(kernel)):
        bad = int(np.sum(~np.isfinite(kernel)))
        raise ValueError(f"{name}: {bad} pixels are NaN or infinite; expected finite values")
    positive = kernel[kernel > 0].sum()
    negative = -kernel[kernel < 0].sum()
    if not positive > 0:
        raise ValueError(f"{name}: no positive pixels; expected a PSF with positive flux")
    if negative > negative_tolerance * positive:
        raise ValueError(f"{name}: negative pixels hold {negative / positive:.3g} of the "
                         f"positive flux; expected at most {negative_tolerance:g}")
    kernel = np.clip(kernel, 0.0, None)
    total = kernel.sum()
    if normalize:
        return kernel / total
    if abs(total - 1) > sum_tolerance:
        raise ValueError(f"{name}: kernel sums to {total:.6g}; expected 1 within "
                         f"{sum_tolerance:g} (pass normalize=True to rescale it)")
    return kernel


def lenstronomy_kwargs(kernel: np.ndarray) -> dict:
    """Keyword arguments of lenstronomy's `PSF` class for a pixel kernel."""
    return {"psf_type": "PIXEL", "kernel_point_source": np.asarray(kernel, dtype=np.float64)}


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """`image` convolved with an odd pixel kernel, same shape, zero outside the image
    (as `LensSimulator.render`'s Gaussian, mode="constant")."""
    return signal.fftconvolve(image, kernel, mode="same")


# ---------------------------------------------------------- 2. analytic kernels + jitter

def _offsets(size: int, pixel_scale: float, oversampling: int) -> np.ndarray:
    """Sub-pixel centres (arcsec) along one axis of a kernel of `size` pixels."""
    sub = (np.arange(size * oversampling) + 0.5) / oversampling - size / 2
    return sub * pixel_scale


def _bin(values: np.ndarray, size: int, oversampling: int) -> np.ndarray:
    return values.reshape(size, oversampling, size, oversampling).mean(axis=(1, 3))


def elliptical_kernel(fwhm_arcsec: float, pixel_scale_arcsec: float, *, e1: float = 0.0,
                      e2: float = 0.0, moffat_beta: float | None = None,
                      size: int | None = None, oversampling: int = 5) -> np.ndarray:
    """Normalized (size, size) kernel of an elliptical Gaussian (`moffat_beta` None) or
    Moffat profile I ~ (1 + r^2/alpha^2)^-beta, integrated over the pixel.

    r^2 = q x'^2 + y'^2 / q in the frame of the major axis, so `fwhm_arcsec` is the
    geometric-mean FWHM. Default size: odd, covering +-2 (Gaussian) or +-4 (Moffat)
    major-axis FWHMs.
    """
    if not (fwhm_arcsec > 0 and pixel_scale_arcsec > 0):
        raise ValueError(f"fwhm_arcsec and pixel_scale_arcsec must be positive, got "
                         f"{fwhm_arcsec}, {pixel_scale_arcsec}")
    if moffat_beta is not None and not moffat_beta > 1:
        raise ValueError(f"moffat_beta: expected > 1 (finite flux), got {moffat_beta}")
    e = math.hypot(e1, e2)
    if not e < 1:
        raise ValueError(f"ellipticity |e| = {e:.3g}: expected < 1")
    q, phi = (1 - e) / (1 + e), 0.5 * math.atan2(e2, e1)
    if size is None:
        reach = (2 if moffat_beta is None else 4) * fwhm_arcsec / math.sqrt(q)
        size = 2 * math.ceil(reach / pixel_scale_arcsec) + 1
    if size % 2 == 0:
        raise ValueError(f"size: expected an odd number of pixels, got {size}")
    axis = _offsets(size, pixel_scale_arcsec, oversampling)
    x, y = np.meshgrid(axis, axis)
    xr = math.cos(phi) * x + math.sin(phi) * y
    yr = -math.sin(phi) * x + math.cos(phi) * y
    r2 = q * xr**2 + yr**2 / q
    if moffat_beta is None:
        sigma = fwhm_arcsec / (2 * math.sqrt(2 * math.log(2)))
        values = np.exp(-0.5 * r2 / sigma**2)
    else:
        alpha = fwhm_arcsec / (2 * math.sqrt(2 ** (1 / moffat_beta) - 1))
        values = (1 + r2 / alpha**2) ** (-moffat_beta)
    kernel = _bin(values, size, oversampling)
    kernel = 0.5 * (kernel + kernel[::-1, ::-1])  # exact point symmetry despite rounding
    return kernel / kernel.sum()


@dataclasses.dataclass(frozen=True)
class PSFVariation:
    """Per-image PSF jitter around an instrument's nominal FWHM.

    FWHM = nominal * exp(N(0, fractional_fwhm_scatter)), clipped to +-3 sigma;
    psf_e1, psf_e2 ~ N(0, ellipticity_sigma) each, clipped to +-3 sigma. Defaults (5%,
    0.03) are of the order of the size and ellipticity variations of space-telescope
    PSFs across the field and with focus breathing (our choice, docs/realism.md); for ground-based seeing use
    fractional_fwhm_scatter ~ 0.15-0.2.
    """

    fractional_fwhm_scatter: float = 0.05
    ellipticity_sigma: float = 0.03
    moffat_beta: float | None = None

    def __post_init__(self):
        for field in ("fractional_fwhm_scatter", "ellipticity_sigma"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PSFVariation.{field}: expected a finite value >= 0, got {value}")
        if 3 * self.ellipticity_sigma * math.sqrt(2) >= 1:
            raise ValueError(f"PSFVariation.ellipticity_sigma: {self.ellipticity_sigma} allows "
                             "|e| >= 1 at 3 sigma; expected < 0.235")

    def sample(self, nominal_fwhm_arcsec: float, rng: np.random.Generator) -> dict[str, float]:
        """Stored parameters of one image: psf_fwhm_arcsec, psf_e1, psf_e2."""
        z = np.clip(rng.normal(size=3), -3, 3)
        return {"psf_fwhm_arcsec": float(nominal_fwhm_arcsec
                                         * math.exp(self.fractional_fwhm_scatter * z[0])),
                "psf_e1": float(self.ellipticity_sigma * z[1]),
                "psf_e2": float(self.ellipticity_sigma * z[2])}

    def kernel(self, params: dict[str, float], pixel_scale_arcsec: float,
               size: int | None = None) -> np.ndarray:
        """The `elliptical_kernel` of parameters drawn by `sample`."""
        return elliptical_kernel(params["psf_fwhm_arcsec"], pixel_scale_arcsec,
                                 e1=params["psf_e1"], e2=params["psf_e2"],
                                 moffat_beta=self.moffat_beta, size=size)


# ---------------------------------------------------------------- 3. diffraction PSFs

def obscured_airy(theta_arcsec, wavelength_m: float, aperture_m: float,
                  obscuration: float = 0.0) -> np.ndarray:
    """Intensity of the Fraunhofer pattern of an annular pupil (outer diameter
    `aperture_m`, central obscuration `obscuration` = inner/outer diameter), 1 at the
    centre: I(v) = [2 J1(v)/v - eps^2 2 J1(eps v)/(eps v)]^2 / (1 - eps^2)^2,
    v = pi D theta / lambda (Born & Wolf; Mahajan 1986)."""
    if not 0 <= obscuration < 1:
        raise ValueError(f"obscuration: expected a ratio in [0, 1), got {obscuration}")
    v = np.pi * aperture_m * np.asarray(theta_arcsec, float) / ARCSEC_PER_RADIAN / wavelength_m
    v = np.maximum(np.abs(v), 1e-12)
    eps = obscuration
    amplitude = 2 * special.j1(v) / v
    if eps > 0:
        amplitude = amplitude - eps * 2 * special.j1(eps * v) / v  # eps^2 * 2 J1(eps v)/(eps v)
    return (amplitude / (1 - eps**2)) ** 2


@dataclasses.dataclass(frozen=True)
class DiffractionOptics:
    """A telescope + band: annular pupil, band edges (m), native pixel (arcsec)."""

    name: str
    aperture_m: float
    obscuration: float
    band_m: tuple[float, float]
    native_pixel_scale_arcsec: float

    def wavelengths(self, count: int) -> np.ndarray:
        """`count` wavelengths at the centres of equal sub-bands (flat spectrum)."""
        low, high = self.band_m
        return low + (np.arange(count) + 0.5) / count * (high - low)


EUCLID_VIS = DiffractionOptics("euclid_vis", aperture_m=1.2, obscuration=0.3,
                               band_m=(550e-9, 900e-9), native_pixel_scale_arcsec=0.1)
HST_F160W = DiffractionOptics("hst_wfc3_f160w", aperture_m=2.4, obscuration=0.33,
                              band_m=(1.40e-6, 1.70e-6), native_pixel_scale_arcsec=0.13)


def diffraction_psf(pixel_scale_arcsec: float, *, aperture_m: float, obscuration: float,
                    wavelengths_m, weights=None, size: int = 21,
                    oversampling: int = 8) -> np.ndarray:
    """Normalized (size, size) PSF of an annular pupil: the obscured Airy pattern at each
    wavelength (weights: relative photon counts, default equal), summed, sampled on
    `oversampling`^2 sub-pixels per pixel and averaged over each pixel (pixel response).
    Normalized over the stamp: the wings beyond it (~2 lambda / (pi^2 D theta) of the
    light outside theta) are dropped. No spiders, aberrations or charge diffusion."""
    if size % 2 == 0 or size < 3:
        raise ValueError(f"size: expected an odd number of pixels >= 3, got {size}")
    wavelengths = np.atleast_1d(np.asarray(wavelengths_m, float))
    weights = np.ones_like(wavelengths) if weights is None else np.asarray(weights, float)
    if weights.shape != wavelengths.shape or np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(f"weights: expected {wavelengths.size} non-negative values with a "
                         f"positive sum, got {weights}")
    axis = _offsets(size, pixel_scale_arcsec, oversampling)
    x, y = np.meshgrid(axis, axis)
    theta = np.hypot(x, y)
    total = np.zeros_like(theta)
    for wavelength, weight in zip(wavelengths, weights):
        pattern = obscured_airy(theta, wavelength, aperture_m, obscuration)
        # Each wavelength carries `weight` of the flux: divide by its own integral,
        # which scales as lambda^2 (the pattern's area).
        total += weight * pattern / wavelength**2
    kernel = _bin(total, size, oversampling)
    return kernel / kernel.sum()


def optics_psf(optics: DiffractionOptics, pixel_scale_arcsec: float | None = None, *,
               num_wavelengths: int = 5, size: int = 21, oversampling: int = 8) -> np.ndarray:
    """`diffraction_psf` of a preset (`EUCLID_VIS`, `HST_F160W`) on its native pixels
    unless `pixel_scale_arcsec` is given (e.g. a drizzled grid)."""
    scale = optics.native_pixel_scale_arcsec if pixel_scale_arcsec is None else pixel_scale_arcsec
    return diffraction_psf(scale, aperture_m=optics.aperture_m, obscuration=optics.obscuration,
                           wavelengths_m=optics.wavelengths(num_wavelengths), size=size,
                           oversampling=oversampling)
