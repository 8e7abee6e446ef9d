"""Renders one lensed image: ray-shooting on a supersampled grid, PSF, noise.

    image = noise( PSF * bin_s( S( theta - alpha_macro(theta) - alpha_sub(theta) ) ) )

S is the source surface brightness (lenstronomy LightModel), alpha_macro the main
deflector (lenstronomy LensModel, SIE + shear), alpha_sub the substructure
realization; bin_s averages s x s sub-pixels (supersampling, default 2; DeepLense
used 1, whose numerical error is ~500 in Delta chi^2 against a converged image). Noise
is applied exactly once, from the example's own generator: Gaussian background of the
instrument's rms plus Poisson noise of the source counts over the exposure time.

`Realism` (default None: exactly the path above, bit for bit) adds, one option at a
time, the effects of real survey images from the building blocks of lens_light.py,
psf.py, noise_models.py and real_sources.py (docs/realism.md, docs/real_sources.md):

- lens light: the deflector's own Sersic light, added to the surface brightness before
  the PSF (so it also adds Poisson noise);
- PSF: the instrument's diffraction pattern (`psf.optics_psf`) broadened by a Gaussian
  (charge diffusion, jitter) to the instrument's FWHM, and/or a per-image FWHM and
  ellipticity jitter (`psf.PSFVariation`). The pixel kernels include the pixel response,
  which the sub-pixel averaging applies too: their PSF is ~0.3 px rms wider than named;
- correlated background noise of a drizzled image (`noise_models.drizzle_kernel`),
  per-pixel rms unchanged; Poisson noise stays white;
- real sources: Hubble Deep Field galaxy stamps (lenstronomy INTERPOL) in place of the
  Sersic, of the drawn magnitude, half-light radius (source_r_sersic) and centre, at a
  random angle; examples of split i (train, validation, test) use only the stamps of
  that split (`real_sources.split_of`), so no galaxy is shared between splits;
- a source magnitude shift, for a lens-to-arc contrast like that of real lenses.

Realism parameters are drawn after every draw of the plain path (macro model, source,
exposure, substructure), so a realistic recipe and its plain twin share those draws for
the same generator; only the noise differs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping

import numpy as np
from scipy import ndimage

from deeplense_tf.simulation import cosmology, instruments, noise_models, psf
from deeplense_tf.simulation import lens_light as lens_light_lib
from deeplense_tf.simulation.components import MainDeflector, SersicSource
from deeplense_tf.simulation.substructure import CLASS_NAMES, Substructure

# Diffraction optics of each instrument with a `psf.optics_psf` preset.
OPTICS = {"euclid": psf.EUCLID_VIS, "hst": psf.HST_F160W, "hst_150": psf.HST_F160W}
SPLITS = ("train", "validation", "test")  # split_index i of `example_rng` is SPLITS[i]


@dataclasses.dataclass(frozen=True)
class DrizzleNoise:
    """Background noise correlated as in an image drizzled with drops of `pixfrac` input
    pixels onto output pixels of `scale_ratio` input pixels (noise_models.py)."""

    pixfrac: float = 0.8
    scale_ratio: float = 1.0

    def __post_init__(self):
        noise_models.drizzle_kernel(self.pixfrac, self.scale_ratio)  # validates, cached

    @property
    def kernel(self) -> np.ndarray:
        return noise_models.drizzle_kernel(self.pixfrac, self.scale_ratio)


@dataclasses.dataclass(frozen=True)
class Realism:
    """Effects of real survey images, each off by default (see the module docstring).

    lens_light: priors of the deflector's light (`lens_light.LensLightModel`), or None.
    psf_variation: per-image PSF FWHM and ellipticity jitter, or None.
    optics_psf: the instrument's diffraction PSF (OPTICS) instead of its Gaussian.
    correlated_noise: drizzle parameters of the background noise, or None (white).
    real_sources: Hubble Deep Field stamps instead of the Sersic source (needs
      scikit-image, the `realism` extra).
    source_magnitude_shift: magnitudes added to every drawn source magnitude.
    """

    lens_light: lens_light_lib.LensLightModel | None = None
    psf_variation: psf.PSFVariation | None = None
    optics_psf: bool = False
    correlated_noise: DrizzleNoise | None = None
    real_sources: bool = False
    source_magnitude_shift: float = 0.0

    def __post_init__(self):
        if not math.isfinite(self.source_magnitude_shift):
            raise ValueError(f"Realism.source_magnitude_shift: expected a finite number of "
                             f"magnitudes, got {self.source_magnitude_shift}")

    def param_names(self) -> tuple[str, ...]:
        """Names of the per-image parameters these options add, in a fixed order."""
        names = []
        if self.lens_light is not None:
            macro = {"theta_e": 1.28, "lens_e1": 0.0, "lens_e2": 0.0, "lens_center_x": 0.0,
                     "lens_center_y": 0.0}
            names += list(self.lens_light.sample(macro, np.random.default_rng(0)))
        if self.psf_variation is not None:
            names += ["psf_fwhm_arcsec", "psf_e1", "psf_e2"]
        if self.real_sources:
            names += ["source_stamp_index", "source_angle"]
        return tuple(names)


@dataclasses.dataclass
class SimulatedLens:
    """One example: the noisy image, its substructure class and every parameter."""

    image: np.ndarray  # float32 (num_pix, num_pix)
    substructure: str
    params: dict[str, float]
    noiseless: np.ndarray | None = None
    # The substructure's (alpha_x, alpha_y) on the simulator's ray grid, arcsec (only
    # with `simulate(..., keep_deflection=True)`).
    substructure_deflection: tuple[np.ndarray, np.ndarray] | None = None


def param_names(deflector: MainDeflector, source: SersicSource, substructures,
                realism: Realism | None = None) -> tuple[str, ...]:
    """Names of the stored parameters of a recipe, in a fixed order."""
    names = list(deflector.sample(np.random.default_rng(0)))
    names += list(source.param_names())
    names += ["exposure_time", "background_rms", "supersampling"]
    for model in substructures:
        names += [p for p in model.param_names if p not in names]
    if realism is not None:
        names += [p for p in realism.param_names() if p not in names]
    return tuple(names)


def example_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
    """The generator of one example: independent of chunking and worker count."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split_index, index])))


def split_of_rng(rng: np.random.Generator) -> str | None:
    """The split ('train', 'validation', 'test') of a generator made by `example_rng`
    (read back from its seed), or None for any other generator."""
    seed_seq = getattr(rng.bit_generator, "seed_seq", None)
    entropy = getattr(seed_seq, "entropy", None)
    if (isinstance(entropy, (list, tuple)) and len(entropy) == 3 and not seed_seq.spawn_key
            and 0 <= entropy[1] < len(SPLITS)):
        return SPLITS[int(entropy[1])]
    return None


@functools.lru_cache(maxsize=None)
def optics_fwhm_arcsec(optics: psf.DiffractionOptics, num_wavelengths: int = 5) -> float:
    """FWHM of the band-averaged diffraction pattern of `optics` (no pixel), arcsec, as
    `psf.diffraction_psf` weights it (equal flux per wavelength)."""
    wavelengths = optics.wavelengths(num_wavelengths)
    theta = np.linspace(0.0, 2 * wavelengths.max() / optics.aperture_m * psf.ARCSEC_PER_RADIAN,
                        20_001)
    profile = sum(psf.obscured_airy(theta, w, optics.aperture_m, optics.obscuration) / w**2
                  for w in wavelengths)
    half = np.flatnonzero(profile < profile[0] / 2)[0]
    # Linear interpolation between the samples around the half maximum.
    t0, t1, p0, p1 = theta[half - 1], theta[half], profile[half - 1], profile[half]
    return float(2 * (t0 + (profile[0] / 2 - p0) * (t1 - t0) / (p1 - p0)))


class LensSimulator:
    """Simulates lenses of one recipe.

    Args:
      instrument: an `instruments.Instrument` or its name.
      deflector, source: priors of the macro model and the source.
      substructures: class name -> Substructure model; a class is chosen per example
        by `simulate(..., substructure=...)` or round-robin by index.
      supersampling: sub-pixels per pixel side for ray shooting (>= 1).
      noise: False renders noiseless images (for tests and information studies).
      realism: effects of real images (`Realism`); None renders today's idealized images.
    """

    def __init__(self, instrument, deflector: MainDeflector, source: SersicSource,
                 substructures: Mapping[str, Substructure], supersampling: int = 2,
                 z_lens: float = 0.5, z_source: float = 1.0, noise: bool = True,
                 realism: Realism | None = None):
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel

        self.instrument = instruments.get(instrument) if isinstance(instrument, str) else instrument
        if not (isinstance(supersampling, int) and supersampling >= 1):
            raise ValueError(f"supersampling: expected an integer >= 1, got {supersampling!r}")
        if not substructures:
            raise ValueError("substructures: need at least one substructure class")
        for name, model in substructures.items():
            if name not in CLASS_NAMES or model.name != name:
                raise ValueError(f"substructures: key {name!r} must be one of {CLASS_NAMES} and "
                                 f"match its model's class ({model.name!r})")
        self.deflector, self.source = deflector, source
        self.substructures = dict(substructures)
        self.class_names = tuple(self.substructures)
        self.supersampling = supersampling
        self.noise = noise
        self.geometry = cosmology.geometry(z_lens, z_source)
        self._lens_model = LensModel(["SIE", "SHEAR"])
        self._light_model = LightModel(["SERSIC_ELLIPSE"])

        inst = self.instrument
        n, s = inst.num_pix, supersampling
        # Sub-pixel centres, pixel (0, 0) at the lower-left, optical axis at the centre.
        sub = (np.arange(n * s) + 0.5) / s - n / 2
        self._x, self._y = np.meshgrid(sub * inst.pixel_scale_arcsec, sub * inst.pixel_scale_arcsec)
        self.psf_sigma_pix = inst.psf_fwhm_arcsec / (2 * math.sqrt(2 * math.log(2))) / inst.pixel_scale_arcsec
        self.realism = realism
        if realism is not None:
            self._init_realism(realism)
        self.param_names = param_names(deflector, source, self.substructures.values(), realism)

    def _init_realism(self, realism: Realism):
        inst = self.instrument
        needs_magnitudes = realism.lens_light is not None or realism.real_sources or (
            realism.source_magnitude_shift != 0)
        if needs_magnitudes and (inst.magnitude_zero_point is None
                                 or self.source.magnitude is None):
            raise ValueError(f"realism: lens light, real sources and magnitude shifts need "
                             f"magnitudes; instrument {inst.name!r} or its source has none")
        # The fixed part of the PSF: diffraction, broadened to the instrument's FWHM (or,
        # where that is below the diffraction limit, by half a pixel).
        self._optics_kernel = self._optics_fwhm = None
        self._nominal_fwhm = inst.psf_fwhm_arcsec
        if realism.optics_psf:
            if inst.name not in OPTICS:
                raise ValueError(f"realism.optics_psf: no diffraction optics for instrument "
                                 f"{inst.name!r}; expected one of {sorted(OPTICS)}")
            optics = OPTICS[inst.name]
            self._optics_kernel = psf.optics_psf(optics, inst.pixel_scale_arcsec)
            self._optics_fwhm = optics_fwhm_arcsec(optics)
            self._nominal_fwhm = max(inst.psf_fwhm_arcsec, self._optics_fwhm)
        self._fixed_psf_kernel = None
        if realism.optics_psf and realism.psf_variation is None:
            self._fixed_psf_kernel = self._psf_kernel(
                {"psf_fwhm_arcsec": self._nominal_fwhm, "psf_e1": 0.0, "psf_e2": 0.0})
        self._noise_kernel = (realism.correlated_noise.kernel
                              if realism.correlated_noise is not None else None)
        self._stamps = self._stamp_pools = None
        if realism.real_sources:
            try:
                import skimage  # noqa: F401  (the Hubble Deep Field ships with it)
            except ImportError as err:
                raise ImportError("realism.real_sources: the Hubble Deep Field stamps need "
                                  "scikit-image: install the realism extra: pip install "
                                  "'deeplense_tf[realism]'") from err
            from lenstronomy.LightModel.light_model import LightModel

            self._interpol_model = LightModel(["INTERPOL"])

    def _psf_kernel(self, psf_params: dict[str, float]) -> np.ndarray:
        """Pixel kernel of one image: an elliptical Gaussian of the drawn FWHM, or the
        diffraction kernel convolved with the Gaussian that brings it to that FWHM."""
        variation = self.realism.psf_variation or psf.PSFVariation()
        scale = self.instrument.pixel_scale_arcsec
        if self._optics_kernel is None:
            return variation.kernel(psf_params, scale)
        broadening = math.sqrt(max(psf_params["psf_fwhm_arcsec"]**2 - self._optics_fwhm**2,
                                   (0.5 * scale)**2))
        jitter = psf.elliptical_kernel(broadening, scale, e1=psf_params["psf_e1"],
                                       e2=psf_params["psf_e2"], moffat_beta=variation.moffat_beta)
        kernel = np.clip(psf.convolve(self._optics_kernel, jitter), 0.0, None)
        return kernel / kernel.sum()

    def _stamp_catalogue(self):
        """The Hubble Deep Field stamps and, per split, the indices of its own stamps
        (loaded on first use: a few seconds per process)."""
        if self._stamps is None:
            from deeplense_tf.simulation import real_sources

            stamps = real_sources.hdf_catalogue()
            splits = np.array([real_sources.split_of(i) for i in stamps.ids])
            self._stamp_pools = {name: np.flatnonzero(splits == name) for name in SPLITS}
            self._stamps = stamps
        return self._stamps, self._stamp_pools

    def simulate(self, rng: np.random.Generator, substructure: str | None = None,
                 keep_noiseless: bool = False, split: str | None = None,
                 keep_deflection: bool = False) -> SimulatedLens:
        """One lens. `substructure` defaults to the first class of the recipe. `split`
        (real sources only) picks the stamps; default: the split of an `example_rng`.
        `keep_deflection` also returns the substructure's deflection on `ray_grid`."""
        name = substructure or self.class_names[0]
        if name not in self.substructures:
            raise ValueError(f"substructure: {name!r} is not in this recipe; expected one of "
                             f"{self.class_names}")
        inst = self.instrument
        params = {k: math.nan for k in self.param_names}
        macro = self.deflector.sample(rng)
        source = self.source.sample(rng)
        exposure = inst.exposure_time_s.sample(rng)
        realization = self.substructures[name].draw(
            rng, self.geometry, center=(macro["lens_center_x"], macro["lens_center_y"]),
            ray_spacing_arcsec=inst.pixel_scale_arcsec / self.supersampling)
        params.update(macro)
        params.update(source)
        params.update(exposure_time=exposure, background_rms=inst.background_rms,
                      supersampling=float(self.supersampling))
        params.update(realization.params)
        light = kernel = None
        if self.realism is not None:
            light, kernel = self._draw_realism(rng, params, source, split)

        ax, ay = self.macro_deflection(macro)
        sx, sy = realization.deflection(self._x, self._y)
        image = self.render(self._x - ax - sx, self._y - ay - sy, source, lens_light=light,
                            psf_kernel=kernel)
        noiseless = image
        if self.noise:
            image = self.add_noise(image, exposure, rng)
        return SimulatedLens(image.astype(np.float32), name, params,
                             noiseless.astype(np.float32) if keep_noiseless else None,
                             (sx, sy) if keep_deflection else None)

    def _draw_realism(self, rng, params, source, split):
        """Draws the realism parameters into `params` (and shifts `source`'s magnitude);
        returns the lens light parameters (or None) and the PSF kernel (or None)."""
        realism = self.realism
        if realism.source_magnitude_shift:
            source["source_magnitude"] += realism.source_magnitude_shift
            params["source_magnitude"] = source["source_magnitude"]
        light = None
        if realism.lens_light is not None:
            light = realism.lens_light.sample(params, rng)
            params.update(light)
        kernel = self._fixed_psf_kernel
        if realism.psf_variation is not None:
            psf_params = realism.psf_variation.sample(self._nominal_fwhm, rng)
            params.update(psf_params)
            kernel = self._psf_kernel(psf_params)
        if realism.real_sources:
            split = split or split_of_rng(rng)
            if split not in SPLITS:
                raise ValueError(f"split: real sources need the example's split, one of "
                                 f"{SPLITS}; got {split!r} (pass split=, or a generator made "
                                 "by example_rng)")
            _, pools = self._stamp_catalogue()
            stamp_index = int(pools[split][rng.integers(len(pools[split]))])
            angle = float(rng.uniform(0.0, 2 * math.pi))
            source.update(source_stamp_index=float(stamp_index), source_angle=angle)
            # The stamp replaces the Sersic profile: its shape parameters mean nothing.
            for key in ("source_n_sersic", "source_e1", "source_e2"):
                source[key] = params[key] = math.nan
            params.update(source_stamp_index=float(stamp_index), source_angle=angle)
        return light, kernel

    @property
    def ray_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Sub-pixel centres (x, y) in arcsec, each (num_pix * s, num_pix * s)."""
        return self._x, self._y

    def macro_deflection(self, macro: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Main deflector's (alpha_x, alpha_y) on `ray_grid`, arcsec."""
        return self._lens_model.alpha(self._x, self._y, MainDeflector.lenstronomy_kwargs(macro))

    def render(self, beta_x, beta_y, source: dict[str, float], *,
               lens_light: dict[str, float] | None = None,
               psf_kernel: np.ndarray | None = None) -> np.ndarray:
        """Noiseless image (num_pix, num_pix), float64, of the source `source` (stored
        parameter names) seen through rays that land at (beta_x, beta_y) on the source
        plane: surface brightness, mean over each pixel's s x s sub-pixels, PSF. The
        one rendering path of `simulate` and of the reference likelihood.

        Realism: `lens_light` (stored lens light parameters) adds the deflector's light
        on the image plane before the PSF; `psf_kernel` (odd, normalized pixel kernel)
        replaces the instrument's Gaussian; a `source_stamp_index` in `source` renders
        that Hubble Deep Field stamp instead of the Sersic."""
        inst = self.instrument
        if "source_stamp_index" in source:
            surface = self._stamp_surface(beta_x, beta_y, source)
        else:
            surface = self._light_model.surface_brightness(beta_x, beta_y,
                                                           [self.source_light_kwargs(source)])
        if lens_light is not None:
            surface = np.ravel(surface) + lens_light_lib.surface_brightness(
                self._x.ravel(), self._y.ravel(), lens_light, inst.magnitude_zero_point)
        n, s = inst.num_pix, self.supersampling
        image = surface.reshape(n, s, n, s).mean(axis=(1, 3)) * inst.pixel_scale_arcsec**2
        if psf_kernel is not None:
            return psf.convolve(image, psf_kernel)
        return ndimage.gaussian_filter(image, self.psf_sigma_pix, mode="constant", truncate=4.0)

    def _stamp_surface(self, beta_x, beta_y, source: dict[str, float]) -> np.ndarray:
        stamps, _ = self._stamp_catalogue()
        index = int(source["source_stamp_index"])
        _, kwargs = real_sources_kwargs(stamps, index, source, self.instrument.magnitude_zero_point)
        # lenstronomy's INTERPOL keeps the first stamp it saw unless told to forget it.
        self._interpol_model.delete_interpol_caches()
        return self._interpol_model.surface_brightness(beta_x, beta_y, [kwargs])

    @property
    def source_profile(self):
        """lenstronomy's SERSIC_ELLIPSE profile object that renders parametric sources."""
        return self._light_model.func_list[0]

    def source_light_kwargs(self, source: dict[str, float]) -> dict[str, float]:
        """lenstronomy keyword arguments of the Sersic source `source` (stored parameters),
        its amplitude from the stored `source_amplitude` or from `source_magnitude` at the
        instrument's zero point."""
        kwargs = {"R_sersic": source["source_r_sersic"], "n_sersic": source["source_n_sersic"],
                  "e1": source["source_e1"], "e2": source["source_e2"],
                  "center_x": source["source_center_x"], "center_y": source["source_center_y"]}
        if "source_amplitude" in source:
            return dict(kwargs, amp=source["source_amplitude"])
        zero_point = self.instrument.magnitude_zero_point
        if zero_point is None:
            raise ValueError(f"instrument {self.instrument.name!r} has no magnitude zero point; "
                             "give the source an amplitude instead of a magnitude")
        counts_per_s = 10 ** (-0.4 * (source["source_magnitude"] - zero_point))
        unit_flux = self._light_model.total_flux([dict(kwargs, amp=1.0)])[0]
        return dict(kwargs, amp=counts_per_s / unit_flux)

    def add_noise(self, image, exposure_time, rng):
        """Background (Gaussian, instrument rms; correlated when the realism options say
        so) + Poisson noise of the source counts."""
        counts = np.clip(image, 0, None) * exposure_time
        poisson = (rng.poisson(counts) - counts) / exposure_time
        if self.realism is not None and self._noise_kernel is not None:
            background = noise_models.correlated_noise(
                image.shape, self.instrument.background_rms, self._noise_kernel, rng)
        else:
            background = rng.normal(0.0, self.instrument.background_rms, size=image.shape)
        return image + poisson + background

    def noise_variance(self, noiseless_image, exposure_time):
        """Per-pixel variance of the noise model for a noiseless image."""
        return self.instrument.background_rms**2 + np.clip(noiseless_image, 0, None) / exposure_time


def real_sources_kwargs(stamps, index: int, source: dict[str, float], zero_point: float):
    """lenstronomy ('INTERPOL', kwargs) of stamp `index` of `stamps` as the source of
    stored parameters `source` (magnitude, r_sersic as the half-light radius, centre,
    source_angle)."""
    from deeplense_tf.simulation import real_sources

    return real_sources.interpol_kwargs(
        stamps.stamps[index], source["source_magnitude"], source["source_r_sersic"],
        source["source_center_x"], source["source_center_y"], source["source_angle"],
        zero_point, r_half_pix=float(stamps.r_half_pix[index]))
