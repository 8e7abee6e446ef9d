"""Resampling a cut-out onto a model's instrument grid, with its noise.

The output grid is the simulations' own: `num_pix` x `num_pix` pixels of the instrument's
`pixel_scale_arcsec`, a tangent-plane projection centred on the lens, north up and east
left (the models are trained with all eight rotations and flips, so the orientation is a
convention, not a choice that matters to them).

Choices, stated in every call's defaults:
- `method="auto"`: "adaptive" when the cut-out's pixels are more than 25% smaller than
  the instrument's (downsampling: each output pixel must gather all the input pixels it
  covers, or flux and noise alias), else "interp".
  `"adaptive"`: reproject's anti-aliased adaptive resampling (DeForest 2004) with
  `conserve_flux=True` (its default is False, which would give surface brightness), a
  Hann kernel and `boundary_mode="strict"`: counts/s per pixel before and after.
  `"interp"`: reproject's bilinear interpolation of surface brightness times the output
  pixel's area: flux-conserving for images smooth on the input pixel scale (every lens
  image is, through its PSF), 2-20x faster, and in the round-trip tests the closest to
  the simulator's own render when the pixel scales are similar (tests/realdata).
  `"exact"`: spherical-polygon overlap (reproject_exact), the slowest.
- Border: an output field not wholly inside the cut-out is refused, never padded.
- NaN / masked pixels: any that fall inside the output field refuse the cut-out.
- Noise matching (`match_noise`, on by default in `prepare`): resampling at a sub-pixel
  offset averages neighbouring pixels and smooths the noise (by ~0.7x in sigma for
  bilinear interpolation of a grid like the instrument's), and a survey's depth is not
  the simulations'. When the cut-out's background noise (the outer frame's clipped
  spread, after resampling) is below the instrument's simulated background rms, white
  Gaussian noise is added to reach it, from a generator seeded by the file's name: the
  model then sees the noise it was trained on. Noisier cut-outs are left as they are
  (noise cannot be removed) and the out-of-distribution score reports them.
- Noise: variances are resampled as fluxes, times min(1, A_out / A_in) (A: pixel areas):
  exact for binning independent pixels (A_out >= A_in, variances add) and for sub-dividing
  them (each part carries (A_out/A_in)^2 of a pixel's variance); neighbouring output
  pixels' noise becomes correlated, which a per-pixel sigma cannot express. Without a
  noise extension, sigma is estimated from the cut-out's outer frame (3-sigma-clipped).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from deeplense_tf.realdata.fits import Cutout, RealDataError, outer_background

METHODS = ("auto", "adaptive", "interp", "exact")
AUTO_DOWNSAMPLING = 1.25  # input pixels this much smaller than the output's: adaptive


@dataclasses.dataclass
class Prepared:
    """A cut-out on an instrument grid: what a model takes, plus where it came from."""

    image: np.ndarray  # float32 (num_pix, num_pix), counts/s at the instrument zero point
    noise_sigma: np.ndarray  # float32 (num_pix, num_pix), same unit
    ra: float
    dec: float
    centre_source: str  # "catalogue", "header" or "brightest"
    pixel_scale_in: float
    noise_source: str
    conversion: str
    method: str
    flux_scale: float  # file units -> counts/s at the instrument's zero point
    noise_added: float = 0.0  # sigma of the white noise `match_noise` added


def output_wcs(ra: float, dec: float, num_pix: int, pixel_scale_arcsec: float, like=None):
    """TAN WCS of an instrument grid centred on (ra, dec) degrees, north up, east left, in
    the celestial frame (RADESYS, EQUINOX) of the WCS `like` when given."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    if like is not None:
        wcs.wcs.radesys = like.wcs.radesys
        wcs.wcs.equinox = like.wcs.equinox
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(num_pix + 1) / 2, (num_pix + 1) / 2]
    scale = pixel_scale_arcsec / 3600.0
    wcs.wcs.cd = np.array([[-scale, 0.0], [0.0, scale]])
    return wcs


def brightest_centre(cutout: Cutout) -> tuple[float, float]:
    """(RA, Dec) of the brightest light within the central third of the cut-out, after a
    1-pixel Gaussian smoothing (a lone hot pixel does not win)."""
    from scipy import ndimage

    data = np.nan_to_num(cutout.data, nan=0.0)
    h, w = data.shape
    smooth = ndimage.gaussian_filter(data, 1.0)
    window = np.full_like(smooth, -np.inf)
    window[h // 3: h - h // 3, w // 3: w - w // 3] = smooth[h // 3: h - h // 3, w // 3: w - w // 3]
    y, x = np.unravel_index(np.argmax(window), window.shape)
    ra, dec = cutout.wcs.wcs_pix2world([[x, y]], 0)[0]
    return float(ra), float(dec)


def _same_frame(wcs_in, wcs_out):
    return (wcs_in.wcs.radesys == wcs_out.wcs.radesys
            and (wcs_in.wcs.equinox == wcs_out.wcs.equinox
                 or (np.isnan(wcs_in.wcs.equinox) and np.isnan(wcs_out.wcs.equinox)))
            and [c[:4] for c in wcs_in.wcs.ctype] == [c[:4] for c in wcs_out.wcs.ctype])


def _interp(data, wcs_in, wcs_out, n):
    """Bilinear interpolation at the output pixel centres: reproject_interp's operation.

    Both WCS in one celestial frame (`output_wcs(like=...)` makes it so): the output
    pixel centres go to the input's pixels through WCSLIB's own transforms
    (`wcs_pix2world`, `wcs_world2pix`), then scipy's `map_coordinates` (order 1), as
    reproject does, without its per-call sky-frame machinery (10x faster on 64 x 64;
    equal to reproject_interp to float rounding, tests/realdata). Other frames go
    through reproject."""
    if not _same_frame(wcs_in, wcs_out):
        from reproject import reproject_interp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.stack([reproject_interp((d, wcs_in), wcs_out, shape_out=(n, n),
                                              order="bilinear", return_footprint=False)
                             for d in data])
    from scipy import ndimage

    yy, xx = np.mgrid[0:n, 0:n]
    world = wcs_out.wcs_pix2world(np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float64), 0)
    pixels = wcs_in.wcs_world2pix(world, 0)
    coords = np.array([pixels[:, 1], pixels[:, 0]])  # (row, column)
    return np.stack([ndimage.map_coordinates(d, coords, order=1, mode="nearest").reshape(n, n)
                     for d in data])


def _reproject(data, wcs_in, wcs_out, n, method, area_ratio):
    """Resamples a stack of images (K, H, W) sharing `wcs_in`: (K, n, n), counts/pixel."""
    from reproject import reproject_adaptive, reproject_exact

    data = np.asarray(data, np.float64)
    if method == "interp":
        return _interp(data, wcs_in, wcs_out, n) * area_ratio
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "adaptive":
            out = reproject_adaptive((data, wcs_in), wcs_out, shape_out=(len(data), n, n),
                                     conserve_flux=True, kernel="hann", boundary_mode="strict",
                                     roundtrip_coords=False, return_footprint=False)
        else:
            out = reproject_exact((data, wcs_in), wcs_out, shape_out=(len(data), n, n),
                                  return_footprint=False) * area_ratio
    return out


def to_instrument_grid(cutout: Cutout, instrument, *, center: tuple[float, float] | None = None,
                       method: str = "auto") -> Prepared:
    """The cut-out resampled onto `instrument`'s grid, centred on the lens.

    Args:
      cutout: from `fits.read_cutout`.
      instrument: an `instruments.Instrument`.
      center: (RA, Dec) in degrees of the lens (a catalogue's); else the header's target
        position; else the brightest central light.
      method: one of `METHODS` (see the module docstring).

    Raises:
      RealDataError: the field does not fit inside the cut-out, or masked / NaN pixels
        fall inside it.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    n, scale = instrument.num_pix, instrument.pixel_scale_arcsec
    if center is not None:
        ra, dec, source = float(center[0]), float(center[1]), "catalogue"
    elif cutout.target is not None:
        (ra, dec), source = cutout.target, "header"
    else:
        (ra, dec), source = brightest_centre(cutout), "brightest"
    wcs_out = output_wcs(ra, dec, n, scale, like=cutout.wcs)
    # The output field's outer pixel edges, in the cut-out's pixels: all inside, or refuse.
    edge = np.array([-0.5, n - 0.5])
    corners = np.array([[x, y] for x in edge for y in edge])
    world = wcs_out.wcs_pix2world(corners, 0)
    inside = cutout.wcs.wcs_world2pix(world, 0)
    h, w = cutout.data.shape
    field = n * scale
    if (np.any(inside < -0.5) or np.any(inside[:, 0] > w - 0.5) or np.any(inside[:, 1] > h - 0.5)
            or not np.all(np.isfinite(inside))):
        raise RealDataError(
            f"{cutout.path}: the model's field ({n} x {scale}\" = {field:.2f}\") centred on "
            f"RA {ra:.6f}, Dec {dec:.6f} ({source}) reaches beyond the cut-out "
            f"({w} x {h} px of {cutout.pixel_scale_arcsec:.4f}\" = "
            f"{w * cutout.pixel_scale_arcsec:.2f}\" x {h * cutout.pixel_scale_arcsec:.2f}\"); "
            "refused rather than padded")
    area_ratio = (scale / cutout.pixel_scale_arcsec) ** 2
    if method == "auto":
        method = "adaptive" if scale > AUTO_DOWNSAMPLING * cutout.pixel_scale_arcsec else "interp"
    masked = ~np.isfinite(cutout.data)
    if masked.any():
        reach = _reproject(masked[None].astype(np.float64), cutout.wcs, wcs_out, n, "interp", 1.0)
        bad = int(np.sum(reach > 0))
        if bad:
            raise RealDataError(f"{cutout.path}: {bad} of the model's {n * n} pixels touch "
                                "masked or NaN pixels of the cut-out (the lens centre or its "
                                "arcs are masked?)")
    noise_factor = min(1.0, area_ratio)
    stack = [np.nan_to_num(cutout.data, nan=0.0)]
    with_sigma = cutout.sigma is not None and np.isfinite(cutout.sigma[~masked]).all()
    if with_sigma:
        stack.append(np.nan_to_num(cutout.sigma, nan=0.0) ** 2)
    resampled = _reproject(np.stack(stack), cutout.wcs, wcs_out, n, method, area_ratio)
    image = resampled[0]
    if with_sigma:
        sigma = np.sqrt(np.clip(resampled[1] * noise_factor, 0, None))
        noise_source = "noise extension"
    else:
        _, sigma_in = outer_background(cutout.data)
        if not math.isfinite(sigma_in):
            raise RealDataError(f"{cutout.path}: no noise extension and too few unmasked pixels "
                                "in the outer frame to estimate the noise")
        sigma = np.full((n, n), sigma_in * math.sqrt(area_ratio * noise_factor))
        noise_source = "outer frame, sigma-clipped"
    if not np.all(np.isfinite(image)):
        raise RealDataError(f"{cutout.path}: resampling left non-finite pixels in the field")
    return Prepared(image=image.astype(np.float32), noise_sigma=sigma.astype(np.float32),
                    ra=ra, dec=dec, centre_source=source,
                    pixel_scale_in=cutout.pixel_scale_arcsec, noise_source=noise_source,
                    conversion=cutout.conversion, method=method, flux_scale=cutout.flux_scale)


def match_noise(prepared: Prepared, instrument, seed: int) -> Prepared:
    """Adds white Gaussian noise so that the background noise of `prepared` reaches the
    instrument's simulated background rms (see the module docstring); unchanged when it
    is already there or above."""
    _, measured = outer_background(prepared.image)
    target = instrument.background_rms
    if not math.isfinite(measured) or measured >= target:
        return prepared
    added = math.sqrt(target**2 - measured**2)
    rng = np.random.default_rng(seed)
    image = prepared.image + rng.normal(0.0, added, prepared.image.shape)
    sigma = np.sqrt(prepared.noise_sigma.astype(np.float64) ** 2 + added**2)
    return dataclasses.replace(prepared, image=image.astype(np.float32),
                               noise_sigma=sigma.astype(np.float32), noise_added=added)
