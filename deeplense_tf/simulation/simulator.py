"""Renders one lensed image: ray-shooting on a supersampled grid, PSF, noise.

    image = noise( PSF * bin_s( S( theta - alpha_macro(theta) - alpha_sub(theta) ) ) )

S is the source surface brightness (lenstronomy LightModel), alpha_macro the main
deflector (lenstronomy LensModel, SIE + shear), alpha_sub the substructure
realization; bin_s averages s x s sub-pixels (supersampling, default 2; DeepLense
used 1, whose numerical error is ~500 in Delta chi^2 against a converged image). Noise
is applied exactly once, from the example's own generator: Gaussian background of the
instrument's rms plus Poisson noise of the source counts over the exposure time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
from scipy import ndimage

from deeplense_tf.simulation import cosmology, instruments
from deeplense_tf.simulation.components import MainDeflector, SersicSource
from deeplense_tf.simulation.substructure import CLASS_NAMES, Substructure


@dataclasses.dataclass
class SimulatedLens:
    """One example: the noisy image, its substructure class and every parameter."""

    image: np.ndarray  # float32 (num_pix, num_pix)
    substructure: str
    params: dict[str, float]
    noiseless: np.ndarray | None = None


def param_names(deflector: MainDeflector, source: SersicSource,
                substructures) -> tuple[str, ...]:
    """Names of the stored parameters of a recipe, in a fixed order."""
    names = list(deflector.sample(np.random.default_rng(0)))
    names += list(source.param_names())
    names += ["exposure_time", "background_rms", "supersampling"]
    for model in substructures:
        names += [p for p in model.param_names if p not in names]
    return tuple(names)


def example_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
    """The generator of one example: independent of chunking and worker count."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split_index, index])))


class LensSimulator:
    """Simulates lenses of one recipe.

    Args:
      instrument: an `instruments.Instrument` or its name.
      deflector, source: priors of the macro model and the source.
      substructures: class name -> Substructure model; a class is chosen per example
        by `simulate(..., substructure=...)` or round-robin by index.
      supersampling: sub-pixels per pixel side for ray shooting (>= 1).
      noise: False renders noiseless images (for tests and information studies).
    """

    def __init__(self, instrument, deflector: MainDeflector, source: SersicSource,
                 substructures: Mapping[str, Substructure], supersampling: int = 2,
                 z_lens: float = 0.5, z_source: float = 1.0, noise: bool = True):
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
        self._psf_sigma_pix = inst.psf_fwhm_arcsec / (2 * math.sqrt(2 * math.log(2))) / inst.pixel_scale_arcsec
        self.param_names = param_names(deflector, source, self.substructures.values())

    def simulate(self, rng: np.random.Generator, substructure: str | None = None,
                 keep_noiseless: bool = False) -> SimulatedLens:
        """One lens. `substructure` defaults to the first class of the recipe."""
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

        ax, ay = self.macro_deflection(macro)
        sx, sy = realization.deflection(self._x, self._y)
        image = self.render(self._x - ax - sx, self._y - ay - sy, source)
        noiseless = image
        if self.noise:
            image = self.add_noise(image, exposure, rng)
        return SimulatedLens(image.astype(np.float32), name, params,
                             noiseless.astype(np.float32) if keep_noiseless else None)

    @property
    def ray_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Sub-pixel centres (x, y) in arcsec, each (num_pix * s, num_pix * s)."""
        return self._x, self._y

    def macro_deflection(self, macro: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Main deflector's (alpha_x, alpha_y) on `ray_grid`, arcsec."""
        return self._lens_model.alpha(self._x, self._y, MainDeflector.lenstronomy_kwargs(macro))

    def render(self, beta_x, beta_y, source: dict[str, float]) -> np.ndarray:
        """Noiseless image (num_pix, num_pix), float64, of the source `source` (stored
        parameter names) seen through rays that land at (beta_x, beta_y) on the source
        plane: surface brightness, mean over each pixel's s x s sub-pixels, PSF. The
        one rendering path of `simulate` and of the reference likelihood."""
        inst = self.instrument
        surface = self._light_model.surface_brightness(beta_x, beta_y, [self._source_kwargs(source)])
        n, s = inst.num_pix, self.supersampling
        image = surface.reshape(n, s, n, s).mean(axis=(1, 3)) * inst.pixel_scale_arcsec**2
        return ndimage.gaussian_filter(image, self._psf_sigma_pix, mode="constant", truncate=4.0)

    def _source_kwargs(self, source: dict[str, float]) -> dict[str, float]:
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
        """Background (Gaussian, instrument rms) + Poisson noise of the source counts."""
        counts = np.clip(image, 0, None) * exposure_time
        poisson = (rng.poisson(counts) - counts) / exposure_time
        background = rng.normal(0.0, self.instrument.background_rms, size=image.shape)
        return image + poisson + background

    def noise_variance(self, noiseless_image, exposure_time):
        """Per-pixel variance of the noise model for a noiseless image."""
        return self.instrument.background_rms**2 + np.clip(noiseless_image, 0, None) / exposure_time
