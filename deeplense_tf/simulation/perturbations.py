"""What real images have and the simulations lack, as perturbations of a simulated lens.

Each perturbation acts on a noiseless image in counts/s (`LensSimulator.simulate(...,
keep_noiseless=True).noiseless`) before the noise is added, except cosmic rays, which
sit on top of the noise as in a real exposure. `perturbed(...)` draws a lens of a recipe,
applies one perturbation and adds the recipe's own noise; the out-of-distribution
report (`deeplense_tf.ood`) measures how often each is flagged.

Default strengths, and where they come from:
- lens light: an elliptical de Vaucouleurs-like Sersic (n ~ U(3, 5)) aligned with the
  mass, effective radius theta_E x U(0.7, 1.5) and apparent magnitude U(18.5, 20.5) in
  the instrument's band: the range of SLACS and SL2S lens galaxies (Bolton et al. 2008;
  Sonnenfeld et al. 2013) moved to z = 0.5, whose central surface brightness exceeds the
  arcs' by 10-100x, as the field's lens-finding papers describe;
- wider PSF: the FWHM x `factor` (seeing or focus changes; a different instrument);
- neighbours: 1-3 Sersic galaxies of magnitude U(20, 23) and radius U(0.2, 0.6)" at
  2-3" from the lens (inside a 64-px Euclid field);
- cosmic rays: 1-4 straight tracks 3-15 px long of 50-500 noise sigmas (a single
  exposure's hits; coadds remove most).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

KINDS = ("lens_light", "wider_psf", "neighbours", "cosmic_rays")


def _sersic_image(num_pix, pixel_scale, psf_fwhm, zero_point, *, magnitude, r_eff, n, e1, e2,
                  x, y, supersampling=2):
    """A PSF-convolved elliptical Sersic (lenstronomy SERSIC_ELLIPSE) of the given total
    magnitude, in counts/s per pixel, on the instrument grid."""
    from lenstronomy.LightModel.light_model import LightModel

    light = LightModel(["SERSIC_ELLIPSE"])
    kwargs = {"R_sersic": r_eff, "n_sersic": n, "e1": e1, "e2": e2, "center_x": x, "center_y": y}
    amp = 10 ** (-0.4 * (magnitude - zero_point)) / light.total_flux([dict(kwargs, amp=1.0)])[0]
    s = supersampling
    sub = (np.arange(num_pix * s) + 0.5) / s - num_pix / 2
    gx, gy = np.meshgrid(sub * pixel_scale, sub * pixel_scale)
    surface = light.surface_brightness(gx, gy, [dict(kwargs, amp=amp)])
    image = surface.reshape(num_pix, s, num_pix, s).mean(axis=(1, 3)) * pixel_scale**2
    sigma = psf_fwhm / (2 * math.sqrt(2 * math.log(2))) / pixel_scale
    return ndimage.gaussian_filter(image, sigma, mode="constant", truncate=4.0)


def lens_light(instrument, params, rng, *, magnitude=None, r_eff_over_theta_e=None, n=None):
    """Noiseless light of the lens galaxy for a lens with stored `params`."""
    magnitude = rng.uniform(18.5, 20.5) if magnitude is None else magnitude
    ratio = rng.uniform(0.7, 1.5) if r_eff_over_theta_e is None else r_eff_over_theta_e
    n = rng.uniform(3.0, 5.0) if n is None else n
    return _sersic_image(instrument.num_pix, instrument.pixel_scale_arcsec,
                         instrument.psf_fwhm_arcsec, instrument.magnitude_zero_point,
                         magnitude=magnitude, r_eff=ratio * params["theta_e"], n=n,
                         e1=params["lens_e1"], e2=params["lens_e2"],
                         x=params["lens_center_x"], y=params["lens_center_y"])


def wider_psf(image, instrument, factor=1.5):
    """A noiseless image seen through a PSF `factor` times wider (Gaussian)."""
    if not factor >= 1:
        raise ValueError(f"factor: a wider PSF needs factor >= 1, got {factor}")
    extra = instrument.psf_fwhm_arcsec * math.sqrt(factor**2 - 1)
    sigma = extra / (2 * math.sqrt(2 * math.log(2))) / instrument.pixel_scale_arcsec
    return ndimage.gaussian_filter(image, sigma, mode="constant", truncate=4.0)


def neighbours(instrument, rng, count=None):
    """Noiseless light of 1-3 neighbouring galaxies 2-3" from the lens."""
    count = int(rng.integers(1, 4)) if count is None else count
    total = np.zeros((instrument.num_pix, instrument.num_pix))
    for _ in range(count):
        r, phi = rng.uniform(2.0, 3.0), rng.uniform(0, 2 * math.pi)
        total += _sersic_image(instrument.num_pix, instrument.pixel_scale_arcsec,
                               instrument.psf_fwhm_arcsec, instrument.magnitude_zero_point,
                               magnitude=rng.uniform(20.0, 23.0), r_eff=rng.uniform(0.2, 0.6),
                               n=rng.uniform(0.8, 4.0), e1=rng.normal(0, 0.15),
                               e2=rng.normal(0, 0.15), x=r * math.cos(phi), y=r * math.sin(phi))
    return total


def cosmic_rays(image, noise_sigma, rng, count=None):
    """A noisy image with 1-4 cosmic-ray tracks added (sharp: no PSF)."""
    out = np.array(image, np.float64, copy=True)
    h, w = out.shape
    count = int(rng.integers(1, 5)) if count is None else count
    for _ in range(count):
        length = rng.uniform(3, 15)
        angle = rng.uniform(0, math.pi)
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        amplitude = rng.uniform(50, 500) * noise_sigma
        for t in np.linspace(0, length, int(length * 2) + 1):
            y, x = int(y0 + t * math.sin(angle)), int(x0 + t * math.cos(angle))
            if 0 <= y < h and 0 <= x < w:
                out[y, x] = max(out[y, x], amplitude)
    return out


def perturbed(recipe, kind: str, seed: int, index: int, split_index: int = 2):
    """(noisy image float32, params): example `index` of `recipe` with perturbation
    `kind` (one of KINDS) applied, its noise drawn from the example's own generator."""
    from deeplense_tf.simulation.simulator import example_rng

    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    sim = recipe.simulator(noise=False)
    rng = example_rng(seed, split_index, index)
    lens = sim.simulate(rng, keep_noiseless=True)
    image = lens.noiseless.astype(np.float64)
    instrument = sim.instrument
    if kind == "lens_light":
        image = image + lens_light(instrument, lens.params, rng)
    elif kind == "wider_psf":
        image = wider_psf(image, instrument, factor=rng.uniform(1.5, 2.0))
    elif kind == "neighbours":
        image = image + neighbours(instrument, rng)
    noisy = sim.add_noise(image, lens.params["exposure_time"], rng)
    if kind == "cosmic_rays":
        noisy = cosmic_rays(noisy, instrument.background_rms, rng)
    return noisy.astype(np.float32), lens.params
