"""Instruments: pixel grid, PSF and noise level of each simulated camera.

Noise levels of the survey instruments come from lenstronomy's observation presets
(sky brightness, read noise, exposure time, zero point), so they stay consistent with
the library DeepLense itself used. Images are in counts per second (electrons/s) for
the survey instruments and in DeepLense's arbitrary amplitude units for `model_i`.
"""

from __future__ import annotations

import dataclasses
import functools

from deeplense_tf.simulation import priors


@dataclasses.dataclass(frozen=True)
class Instrument:
    """A camera: a square grid of `num_pix` pixels of `pixel_scale_arcsec`.

    Noise: a Gaussian background of `background_rms` (image units) plus Poisson noise
    of the source counts for an exposure of `exposure_time_s` (a prior: DeepLense Model
    I draws it per image). `magnitude_zero_point` converts a magnitude to counts/s
    (None: the source brightness is given as a lenstronomy amplitude).
    """

    name: str
    num_pix: int
    pixel_scale_arcsec: float
    psf_fwhm_arcsec: float
    background_rms: float
    exposure_time_s: priors.Prior
    magnitude_zero_point: float | None = None
    description: str = ""

    def __post_init__(self):
        if not (isinstance(self.num_pix, int) and self.num_pix >= 8):
            raise ValueError(f"{self.name}: num_pix must be an integer >= 8, got {self.num_pix}")
        for field in ("pixel_scale_arcsec", "psf_fwhm_arcsec"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{self.name}: {field} must be positive, got {getattr(self, field)}")
        if not self.background_rms >= 0:
            raise ValueError(f"{self.name}: background_rms must be >= 0, got {self.background_rms}")
        self.exposure_time_s.named(f"{self.name}.exposure_time_s").require_positive()

    @property
    def field_of_view_arcsec(self) -> float:
        return self.num_pix * self.pixel_scale_arcsec


def _from_lenstronomy_preset(name, preset, num_pix, pixel_scale=None, description=""):
    """Reads noise and PSF numbers from a lenstronomy observation preset."""
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    kwargs = preset.kwargs_single_band()
    if pixel_scale is not None:
        kwargs = dict(kwargs, pixel_scale=pixel_scale)
    band = SingleBand(**kwargs)
    return Instrument(
        name=name,
        num_pix=num_pix,
        pixel_scale_arcsec=float(kwargs["pixel_scale"]),
        psf_fwhm_arcsec=float(kwargs["seeing"]),
        background_rms=float(band.background_noise),
        exposure_time_s=priors.Fixed(float(band.exposure_time)),
        magnitude_zero_point=float(kwargs["magnitude_zero_point"]),
        description=description,
    )


@functools.lru_cache(maxsize=None)
def get(name: str) -> Instrument:
    """The instrument called `name`; see `names()`."""
    from lenstronomy.SimulationAPI.ObservationConfig import HST, Euclid

    if name == "model_i":
        return Instrument(
            name="model_i", num_pix=150, pixel_scale_arcsec=0.05, psf_fwhm_arcsec=0.087,
            background_rms=0.01, exposure_time_s=priors.Uniform(10**3, 10**3.5),
            description="DeepLense Model I grid: 150 px of 0.05\", Gaussian PSF FWHM 0.087\", "
                        "background rms 0.01, exposure 10^U(3, 3.5) s (see `exposure_time_s`).")
    if name == "euclid":
        return _from_lenstronomy_preset(
            "euclid", Euclid.Euclid(band="VIS", psf_type="GAUSSIAN", coadd_years=6), 64,
            description="Euclid VIS, 6-year coadd (lenstronomy preset), 64 px of 0.101\".")
    if name == "hst":
        return _from_lenstronomy_preset(
            "hst", HST.HST(band="WFC3_F160W", psf_type="GAUSSIAN"), 64,
            description="HST WFC3/F160W (lenstronomy preset), 64 px of 0.08\".")
    if name == "hst_150":
        return _from_lenstronomy_preset(
            "hst_150", HST.HST(band="WFC3_F160W", psf_type="GAUSSIAN"), 150, pixel_scale=0.04,
            description="HST WFC3/F160W depth on a drizzled 0.04\" grid, 150 px.")
    raise ValueError(f"instrument: unknown name {name!r}; expected one of {names()}")


def names() -> tuple[str, ...]:
    return ("model_i", "euclid", "hst", "hst_150")
