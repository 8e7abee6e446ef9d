"""Light of the lens galaxy: an elliptical Sersic (or double Sersic) aligned with the mass.

The main deflector of every recipe is an SIE; in real data it is a massive early-type
galaxy whose light dominates the centre of the cut-out. This module draws that light
from scaling relations of observed lens galaxies and renders it on an instrument grid
in counts/s, the units of `LensSimulator.render`:

- centre: the SIE centre; position angle: the SIE's (optionally with scatter);
- axis ratio: q_light = q_SIE * f, f ~ N(1.0, 0.11) (Koopmans et al. 2006, SLACS III:
  <q_SIE / q_light> = 0.99, rms 0.11), clipped to [0.2, 1];
- size: log10(R_eff / theta_E) ~ N(0, 0.15) clipped +-0.4 (SLACS and SL2S lenses);
- shape: Sersic n ~ U(3, 5), de Vaucouleurs-like (SLACS fits n = 4);
- brightness: m = m_ref - 2.5 * slope * log10(theta_E / 1.28") + band offset, with
  m_ref ~ N(19.5, 0.4) clipped +-1 in a Euclid-VIS-like (riz) band, slope 2
  (Faber-Jackson L ~ sigma^4 with theta_E ~ sigma^2), F160W offset -1.2 mag.
docs/realism.md gives the numbers, their sources and what is our own choice.

Conventions: R_sersic is lenstronomy's product-average ("circularized") half-light
radius, the SLACS convention (intermediate-axis radius); e = (1 - q) / (1 + q) as for
the SIE. Brightness is a total apparent magnitude at the instrument's zero point, so the
image sums to 10^(-0.4 (m - zp)) counts/s when the grid holds the galaxy.

Stored parameter names (all floats): lens_light_magnitude, lens_light_r_sersic,
lens_light_n_sersic, lens_light_e1, lens_light_e2, lens_light_center_x,
lens_light_center_y and, for the double Sersic, lens_light_inner_fraction,
lens_light_inner_r_sersic, lens_light_outer_r_sersic.

Cost (one core, `python -c` timeit, 64 x 64 Euclid grid, supersampling 2, Gaussian PSF):
`sample` 0.02 ms; `render_lens_light` 0.52 ms single Sersic, 0.70 ms double Sersic
(lenstronomy surface brightness on 128 x 128 rays dominates) -- measured with
    python -c "import timeit; from deeplense_tf.simulation import lens_light as L, \
instruments as I; import numpy as np; m=L.LensLightModel(); r=np.random.default_rng(0); \
p=m.sample({'theta_e':1.2,'lens_e1':.1,'lens_e2':0.,'lens_center_x':0.,\
'lens_center_y':0.}, r); i=I.get('euclid'); \
print(timeit.timeit(lambda: L.render_lens_light(p, i), number=200)/200)"
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import ndimage, signal

from deeplense_tf.simulation import priors
from deeplense_tf.simulation.priors import Fixed, Normal, Uniform

# Apparent magnitude offset of an early-type lens at z ~ 0.5 from the VIS-like band,
# by instrument name (see docs/realism.md): F160W sees the red galaxy ~1.2 mag brighter.
BAND_OFFSET_MAG = {"euclid": 0.0, "hst": -1.2, "hst_150": -1.2}

REFERENCE_THETA_E_ARCSEC = 1.28  # DeepLense's fixed macro model


@dataclasses.dataclass(frozen=True)
class LensLightModel:
    """Priors of the lens light, conditioned on the SIE parameters of each lens.

    Attributes:
      magnitude_at_reference: apparent magnitude in the VIS-like band of a lens with
        theta_E = `reference_theta_e_arcsec`.
      luminosity_slope: L ~ theta_E^slope at fixed redshifts (2: Faber-Jackson).
      band_offset_mag: added to every magnitude (the instrument's band; BAND_OFFSET_MAG).
      log10_r_eff_over_theta_e: prior of log10(R_eff / theta_E).
      n_sersic: Sersic index (of the inner component for the double Sersic).
      axis_ratio_factor: q_light / q_SIE.
      position_angle_scatter_deg: light position angle minus the SIE's, degrees.
      double_sersic: False, one Sersic; True, an inner component of index `n_sersic`
        and radius R_eff * `inner_r_over_r_eff` carrying `inner_fraction` of the
        flux, plus an exponential (n = 1) envelope of radius R_eff * `outer_r_over_r_eff`.
    """

    magnitude_at_reference: priors.Prior = Normal(19.5, 0.4, clip=1.0)
    reference_theta_e_arcsec: float = REFERENCE_THETA_E_ARCSEC
    luminosity_slope: float = 2.0
    band_offset_mag: float = 0.0
    log10_r_eff_over_theta_e: priors.Prior = Normal(0.0, 0.15, clip=0.4)
    n_sersic: priors.Prior = Uniform(3.0, 5.0)
    axis_ratio_factor: priors.Prior = Normal(1.0, 0.11, clip=0.3)
    position_angle_scatter_deg: priors.Prior = Fixed(0.0)
    double_sersic: bool = False
    inner_fraction: priors.Prior = Uniform(0.3, 0.6)
    inner_r_over_r_eff: priors.Prior = Uniform(0.3, 0.6)
    outer_r_over_r_eff: priors.Prior = Uniform(1.0, 2.0)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, priors.Prior):
                object.__setattr__(self, field.name,
                                   priors.as_prior(value, f"LensLightModel.{field.name}"))
        for name in ("n_sersic", "axis_ratio_factor", "inner_r_over_r_eff", "outer_r_over_r_eff"):
            getattr(self, name).require_positive()
        low, high = self.inner_fraction.support
        if not (0 < low and high < 1):
            raise ValueError(f"LensLightModel.inner_fraction: must lie in (0, 1), "
                             f"but the prior allows [{low}, {high}]")
        if not self.reference_theta_e_arcsec > 0:
            raise ValueError("LensLightModel.reference_theta_e_arcsec: must be positive, got "
                             f"{self.reference_theta_e_arcsec}")

    @classmethod
    def for_instrument(cls, instrument_name: str, **overrides) -> "LensLightModel":
        """The default priors with the band offset of a named instrument."""
        if instrument_name not in BAND_OFFSET_MAG:
            raise ValueError(f"instrument: no lens-light band offset for {instrument_name!r}; "
                             f"expected one of {sorted(BAND_OFFSET_MAG)} (model_i has no "
                             "magnitude zero point)")
        return cls(band_offset_mag=BAND_OFFSET_MAG[instrument_name], **overrides)

    def sample(self, macro: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
        """Lens-light parameters for a lens with SIE parameters `macro` (the stored names
        of `MainDeflector.sample`: theta_e, lens_e1, lens_e2, lens_center_x/y)."""
        theta_e = macro["theta_e"]
        magnitude = (self.magnitude_at_reference.sample(rng) + self.band_offset_mag
                     - 2.5 * self.luminosity_slope
                     * math.log10(theta_e / self.reference_theta_e_arcsec))
        r_eff = theta_e * 10 ** self.log10_r_eff_over_theta_e.sample(rng)
        phi, q_mass = _phi_q(macro["lens_e1"], macro["lens_e2"])
        q = float(np.clip(q_mass * self.axis_ratio_factor.sample(rng), 0.2, 1.0))
        phi += math.radians(self.position_angle_scatter_deg.sample(rng))
        e = (1 - q) / (1 + q)
        params = {
            "lens_light_magnitude": magnitude,
            "lens_light_r_sersic": r_eff,
            "lens_light_n_sersic": self.n_sersic.sample(rng),
            "lens_light_e1": e * math.cos(2 * phi),
            "lens_light_e2": e * math.sin(2 * phi),
            "lens_light_center_x": float(macro["lens_center_x"]),
            "lens_light_center_y": float(macro["lens_center_y"]),
        }
        if self.double_sersic:
            params["lens_light_inner_fraction"] = self.inner_fraction.sample(rng)
            params["lens_light_inner_r_sersic"] = r_eff * self.inner_r_over_r_eff.sample(rng)
            params["lens_light_outer_r_sersic"] = r_eff * self.outer_r_over_r_eff.sample(rng)
        return params


def _phi_q(e1: float, e2: float) -> tuple[float, float]:
    """lenstronomy's ellipticity -> (position angle rad, axis ratio)."""
    c = min(math.hypot(e1, e2), 0.9999)
    return 0.5 * math.atan2(e2, e1), (1 - c) / (1 + c)


@functools.lru_cache(maxsize=4)
def _light_model(num_components: int):
    from lenstronomy.LightModel.light_model import LightModel

    return LightModel(["SERSIC_ELLIPSE"] * num_components)


def lenstronomy_kwargs(params: dict[str, float], zero_point: float | None
                       ) -> tuple[list[str], list[dict[str, float]]]:
    """(lenstronomy light profile names, keyword lists) of the lens light `params`, with
    amplitudes such that the total flux is 10^(-0.4 (magnitude - zero_point)) counts/s."""
    if zero_point is None:
        raise ValueError("zero_point: the lens light is given as a magnitude; the instrument "
                         "needs a magnitude zero point (model_i has none)")
    total = 10 ** (-0.4 * (params["lens_light_magnitude"] - zero_point))
    shape = {"e1": params["lens_light_e1"], "e2": params["lens_light_e2"],
             "center_x": params["lens_light_center_x"], "center_y": params["lens_light_center_y"]}
    if "lens_light_inner_fraction" in params:
        f = params["lens_light_inner_fraction"]
        parts = [(f * total, params["lens_light_inner_r_sersic"], params["lens_light_n_sersic"]),
                 ((1 - f) * total, params["lens_light_outer_r_sersic"], 1.0)]
    else:
        parts = [(total, params["lens_light_r_sersic"], params["lens_light_n_sersic"])]
    kwargs = []
    for flux, r_sersic, n in parts:
        unit = dict(shape, R_sersic=r_sersic, n_sersic=n)
        unit_flux = _light_model(1).total_flux([dict(unit, amp=1.0)])[0]
        kwargs.append(dict(unit, amp=flux / unit_flux))
    return ["SERSIC_ELLIPSE"] * len(kwargs), kwargs


def surface_brightness(x, y, params: dict[str, float], zero_point: float) -> np.ndarray:
    """Lens-light surface brightness at (x, y) arcsec, counts/s/arcsec^2, no PSF."""
    names, kwargs = lenstronomy_kwargs(params, zero_point)
    return _light_model(len(names)).surface_brightness(np.asarray(x, float), np.asarray(y, float),
                                                       kwargs)


@functools.lru_cache(maxsize=8)
def _grid(num_pix: int, pixel_scale: float, supersampling: int):
    # Same sub-pixel centres as LensSimulator: optical axis at the grid centre.
    sub = (np.arange(num_pix * supersampling) + 0.5) / supersampling - num_pix / 2
    x, y = np.meshgrid(sub * pixel_scale, sub * pixel_scale)
    x.flags.writeable = y.flags.writeable = False
    return x.ravel(), y.ravel()


def render_lens_light(params: dict[str, float], instrument, *, supersampling: int = 2,
                      psf_kernel: np.ndarray | None = None, convolve: bool = True) -> np.ndarray:
    """Noiseless lens light (num_pix, num_pix), float64, counts/s per pixel.

    Surface brightness on `supersampling`^2 sub-pixels per pixel, averaged, times the pixel
    area; then the PSF: the instrument's Gaussian (as `LensSimulator.render`), or
    `psf_kernel` (an odd, normalized pixel kernel, e.g. from `psf.pixel_psf`);
    `convolve=False` skips it. Add the result to the lensed image before the noise.
    """
    if not (isinstance(supersampling, int) and supersampling >= 1):
        raise ValueError(f"supersampling: expected an integer >= 1, got {supersampling!r}")
    n, s, scale = instrument.num_pix, supersampling, instrument.pixel_scale_arcsec
    x, y = _grid(n, scale, s)
    surface = surface_brightness(x, y, params, instrument.magnitude_zero_point)
    image = surface.reshape(n, s, n, s).mean(axis=(1, 3)) * scale**2
    if not convolve:
        return image
    if psf_kernel is not None:
        return signal.fftconvolve(image, psf_kernel, mode="same")
    sigma = instrument.psf_fwhm_arcsec / (2 * math.sqrt(2 * math.log(2))) / scale
    return ndimage.gaussian_filter(image, sigma, mode="constant", truncate=4.0)
