"""Reading survey FITS cut-outs: which extensions, which header keys, which units.

One small function per survey convention, then one generic path:

- Euclid (MER / VIS cut-outs): the image in the primary HDU or an extension per band
  (`VIS`, `NIR_Y`, ...), `MAGZERO` the AB zero point of the pixel values (background
  already subtracted), a CD matrix WCS of ~0.1"/px; optional `RMS`/`ERR`/`WHT`/`FLAG`
  extensions.
- HST (drizzled `_drz`/`_drc` or calibrated `_flt` products): `SCI` with `BUNIT`
  (ELECTRONS/S, or ELECTRONS to be divided by `EXPTIME`), the AB zero point from
  `PHOTFLAM` and `PHOTPLAM` (for 1 e-/s: ZP = -2.5 log10 PHOTFLAM - 5 log10 PHOTPLAM
  - 2.408), or the ST zero point `PHOTZPT` - 2.5 log10 PHOTFLAM without `PHOTPLAM`;
  `WHT` an inverse-variance weight (1 / sigma^2), `ERR` a sigma, `DQ` data-quality bits
  (non-zero: masked); drizzled images keep their sky, which is subtracted here (the
  sigma-clipped median of the cut-out's outer region).
- Anything else: the primary HDU or first image extension, a zero point from `MAGZERO`,
  `ZEROPT`, `ZP`, `MAGZPT` or `PHOTZP`, or given by the caller.

Pixel values are converted to the unit the package's simulations use: counts per second
at the instrument's AB zero point, `value * 10**(0.4 * (ZP_instrument - ZP_file))`, and
the conversion is recorded. The pixel scale always comes from the WCS.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import numpy as np

# The band each instrument of the simulations observes, as surveys name it in headers.
INSTRUMENT_BANDS = {"euclid": ("VIS",), "hst": ("F160W",), "hst_150": ("F160W",)}
_GENERIC_ZERO_POINT_KEYS = ("MAGZERO", "ZEROPT", "ZP", "MAGZPT", "PHOTZP")
_TARGET_KEYS = (("RA_TARG", "DEC_TARG"), ("RA_OBJ", "DEC_OBJ"), ("OBJRA", "OBJDEC"),
                ("TARG_RA", "TARG_DEC"))


class RealDataError(ValueError):
    """A cut-out that cannot be used; the message names the file and what was expected."""


@dataclasses.dataclass
class Cutout:
    """A cut-out read from a file, in counts/s at the instrument's zero point.

    `data` and `sigma` (per-pixel noise, or None when the file has no noise extension)
    are float64 arrays on the file's own grid; NaN marks masked pixels. `wcs` is the
    celestial WCS of that grid. `target` is the (RA, Dec) in degrees the header names,
    or None.
    """

    path: str
    name: str
    data: np.ndarray
    sigma: np.ndarray | None
    wcs: object
    pixel_scale_arcsec: float
    convention: str
    band: str | None
    zero_point_in: float
    flux_scale: float
    sky: float
    target: tuple[float, float] | None
    notes: list[str]

    @property
    def conversion(self) -> str:
        return (f"{self.convention}: x {self.flux_scale:.6g} (file AB zero point "
                f"{self.zero_point_in:.4f}); sky {self.sky:.4g} subtracted; "
                + "; ".join(self.notes))


def _fail(path, message):
    raise RealDataError(f"{path}: {message}")


def _image_hdus(hdul):
    return [h for h in hdul if getattr(h, "is_image", False) and h.data is not None
            and getattr(h.data, "ndim", 0) >= 2]


def _band_of(header):
    for key in ("FILTER", "BAND", "FILTER1", "FILTER2", "FILTNAM1"):
        value = header.get(key)
        if isinstance(value, str) and value.strip() and not value.upper().startswith("CLEAR"):
            return value.strip().upper()
    return None


def _choose_science(hdul, path, band):
    """The science HDU: `SCI`, the extension named after the band, the primary HDU, or
    the first image extension."""
    images = _image_hdus(hdul)
    if not images:
        _fail(path, "holds no image (expected a 2-D image in the primary HDU or an extension)")
    by_name = {h.name.upper(): h for h in images}
    if band:
        for name in (band.upper(), f"{band.upper()}_SCI", f"SCI_{band.upper()}"):
            if name in by_name:
                return by_name[name]
    if "SCI" in by_name:
        return by_name["SCI"]
    named_bands = [h for h in images if h.name.upper() in {b for bs in INSTRUMENT_BANDS.values()
                                                             for b in bs} | {"NIR_Y", "NIR_J", "NIR_H"}]
    if band and named_bands:
        _fail(path, f"has image extensions {[h.name for h in images]} but none for band "
                    f"{band!r}")
    return images[0]


def _extension(hdul, names):
    for h in _image_hdus(hdul):
        if h.name.upper() in names:
            return h
    return None


def _celestial_wcs(header, path):
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as error:  # astropy raises many types for broken headers
            _fail(path, f"unreadable WCS ({type(error).__name__}: {error})")
    if not wcs.has_celestial or not any("RA" in c or "DEC" in c for c in wcs.wcs.ctype):
        _fail(path, "has no celestial WCS (expected CTYPE1/2 such as RA---TAN/DEC--TAN with a "
                    "CD matrix or CDELT); the pixel scale is never assumed")
    from astropy.wcs.utils import proj_plane_pixel_scales

    if not wcs.is_celestial:
        wcs = wcs.celestial
    scales = proj_plane_pixel_scales(wcs) * 3600.0
    if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        _fail(path, f"WCS gives a pixel scale of {scales} arcsec")
    if abs(scales[0] - scales[1]) > 1e-3 * scales.mean():
        _fail(path, f"non-square pixels ({scales[0]:.5f} x {scales[1]:.5f} arcsec)")
    return wcs, float(scales.mean())


def _hst_zero_point(header, path):
    photflam = header.get("PHOTFLAM")
    if photflam is None or not photflam > 0:
        return None
    photplam = header.get("PHOTPLAM")
    if photplam is not None and photplam > 0:
        return -2.5 * math.log10(photflam) - 5 * math.log10(photplam) - 2.408, "AB from PHOTFLAM, PHOTPLAM"
    photzpt = header.get("PHOTZPT", -21.10)
    return -2.5 * math.log10(photflam) + photzpt, "ST from PHOTFLAM, PHOTZPT (no PHOTPLAM)"


def _to_rate(data, header, primary, path, notes):
    """Electrons (or counts) to electrons (counts) per second, by BUNIT and EXPTIME."""
    unit = str(header.get("BUNIT", primary.get("BUNIT", ""))).strip().upper().replace(" ", "")
    if unit in ("ELECTRONS", "COUNTS", "E-", "ELECTRON"):
        exptime = header.get("EXPTIME", primary.get("EXPTIME"))
        if exptime is None or not exptime > 0:
            _fail(path, f"BUNIT={unit} needs a positive EXPTIME to become a rate")
        notes.append(f"BUNIT={unit} / EXPTIME {exptime:g} s")
        return data / exptime, 1.0 / exptime
    if unit and unit not in ("ELECTRONS/S", "COUNTS/S", "E-/S", "ELECTRON/S", "ELECTRONS/SEC"):
        _fail(path, f"unknown BUNIT {unit!r} (expected ELECTRONS/S or ELECTRONS with EXPTIME)")
    notes.append(f"BUNIT={unit or 'unset, taken as a rate'}")
    return data, 1.0


def read_cutout(path: str, instrument, *, band: str | None = None,
                zero_point: float | None = None) -> Cutout:
    """Reads a FITS cut-out for `instrument` (an `instruments.Instrument`).

    Args:
      path: the FITS file.
      instrument: the model's instrument; its band is checked against the header's
        (`INSTRUMENT_BANDS`) and its zero point sets the output unit.
      band: which band's extension to read from a multi-band file (default: the
        instrument's).
      zero_point: the file's AB zero point, for files whose header has none.

    Raises:
      RealDataError: for anything the file lacks or gets wrong, naming the file.
    """
    from astropy.io import fits

    if instrument.magnitude_zero_point is None:
        raise RealDataError(f"instrument {instrument.name!r} has no zero point: real images "
                            "cannot be put into its units")
    expected_bands = INSTRUMENT_BANDS.get(instrument.name, ())
    band = band or (expected_bands[0] if expected_bands else None)
    if not os.path.isfile(path):
        _fail(path, "no such file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                for h in hdul:
                    h.data  # noqa: B018  (load now: a truncated file warns here)
                truncated = [str(w.message).splitlines()[0] for w in caught
                             if "truncated" in str(w.message)
                             or "Error validating header" in str(w.message)]
                if truncated:
                    _fail(path, f"truncated or corrupt FITS file ({truncated[0]})")
                return _read(hdul, path, instrument, band, expected_bands, zero_point)
    except RealDataError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as error:
        _fail(path, f"not a readable FITS file ({type(error).__name__}: {error})")


def _read(hdul, path, instrument, band, expected_bands, zero_point):
    primary = hdul[0].header
    sci = _choose_science(hdul, path, band)
    header = sci.header
    data = np.asarray(sci.data, np.float64)
    data = np.squeeze(data)
    if data.ndim != 2:
        _fail(path, f"science data of shape {sci.data.shape}; expected a 2-D image")
    if min(data.shape) < 8:
        _fail(path, f"image of {data.shape} pixels is too small")
    file_band = _band_of(header) or _band_of(primary)
    if sci.name.upper() in {b for bs in INSTRUMENT_BANDS.values() for b in bs}:
        file_band = file_band or sci.name.upper()
    if expected_bands and file_band and not any(b in file_band for b in expected_bands):
        _fail(path, f"band {file_band}, but the model's instrument {instrument.name!r} observes "
                    f"{'/'.join(expected_bands)}")
    wcs, scale = _celestial_wcs(header, path)
    notes = []
    telescope = str(primary.get("TELESCOP", header.get("TELESCOP", ""))).upper()
    sky = 0.0
    if "MAGZERO" in header or "MAGZERO" in primary or "EUCLID" in telescope:
        convention = "euclid"
        zp = header.get("MAGZERO", primary.get("MAGZERO", zero_point))
        if zp is None:
            _fail(path, "Euclid product without MAGZERO; give the zero point")
        zp_note = "MAGZERO"
        rate_scale = 1.0
    elif "PHOTFLAM" in header or "PHOTFLAM" in primary:
        convention = "hst"
        found = _hst_zero_point(header, path) or _hst_zero_point(primary, path)
        if found is None:
            _fail(path, "PHOTFLAM is not positive")
        zp, zp_note = found
        data, rate_scale = _to_rate(data, header, primary, path, notes)
    else:
        convention = "generic"
        zp = next((header.get(k, primary.get(k)) for k in _GENERIC_ZERO_POINT_KEYS
                   if k in header or k in primary), zero_point)
        zp_note = "header zero point" if zero_point is None else "given zero point"
        rate_scale = 1.0
        if zp is None:
            _fail(path, "unknown units: no zero point in the header (MAGZERO, PHOTFLAM, "
                        f"{', '.join(_GENERIC_ZERO_POINT_KEYS[1:])}) and none given")
    zp = float(zp)
    if not math.isfinite(zp):
        _fail(path, f"zero point {zp} is not finite")
    notes.insert(0, f"zero point from {zp_note}")

    mask = ~np.isfinite(data)
    dq = _extension(hdul, {"DQ", "FLAG", "FLAGS", "MASK", f"{sci.name.upper()}_FLAG"})
    if dq is not None and dq.data.shape == data.shape:
        mask |= np.asarray(dq.data) != 0
        notes.append("mask from " + dq.name)
    sigma = None
    def names(*kinds):  # plain, or per band in a multi-band file ("VIS_RMS")
        return {k for kind in kinds for k in (kind, f"{sci.name.upper()}_{kind}")}

    err = _extension(hdul, names("ERR", "RMS", "NOISE", "SIGMA"))
    wht = _extension(hdul, names("WHT", "IVAR", "WEIGHT", "INVVAR"))
    if err is not None and err.data.shape == data.shape:
        sigma = np.asarray(err.data, np.float64) * rate_scale
        notes.append(f"sigma from {err.name}")
    elif wht is not None and wht.data.shape == data.shape:
        weight = np.asarray(wht.data, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            sigma = np.where(weight > 0, 1.0 / np.sqrt(weight), np.nan) * rate_scale
        mask |= ~(weight > 0)
        notes.append(f"sigma = 1/sqrt({wht.name})")
    if convention == "hst":
        # Drizzled HST images keep their sky: subtract the outer region's clipped median.
        sky = outer_background(data, mask)[0]
        data = data - sky
    flux_scale = 10 ** (0.4 * (instrument.magnitude_zero_point - zp))
    data = np.where(mask, np.nan, data * flux_scale)
    if sigma is not None:
        sigma = np.where(mask, np.nan, sigma * flux_scale)
    target = None
    for ra_key, dec_key in _TARGET_KEYS:
        for h in (header, primary):
            if ra_key in h and dec_key in h:
                try:
                    target = (float(h[ra_key]), float(h[dec_key]))
                except (TypeError, ValueError):
                    continue
                break
        if target:
            break
    name = str(primary.get("OBJECT", header.get("OBJECT", ""))).strip() or \
        os.path.splitext(os.path.basename(path))[0]
    return Cutout(path=path, name=name, data=data, sigma=sigma, wcs=wcs,
                  pixel_scale_arcsec=scale, convention=convention, band=file_band,
                  zero_point_in=zp, flux_scale=flux_scale, sky=float(sky * flux_scale),
                  target=target, notes=notes)


def outer_background(data, mask=None, frame_fraction=0.2):
    """(median, sigma) of the pixels in the outer frame of an image (the outer
    `frame_fraction` of each side), sigma-clipped at 3 sigma: the sky level and the noise
    of a cut-out centred on a lens."""
    data = np.asarray(data, np.float64)
    h, w = data.shape
    fh, fw = max(2, int(h * frame_fraction)), max(2, int(w * frame_fraction))
    frame = np.ones_like(data, bool)
    frame[fh:h - fh, fw:w - fw] = False
    good = frame & np.isfinite(data)
    if mask is not None:
        good &= ~mask
    if good.sum() < 20:
        return 0.0, float("nan")
    return clipped_stats(data[good])


def clipped_stats(values, sigma: float = 3.0, max_iterations: int = 10):
    """(median, standard deviation) after iterative clipping at `sigma` standard
    deviations from the median: astropy's `sigma_clipped_stats` defaults, in plain numpy
    (5x faster on a cut-out's frame, which matters at 200 cut-outs per second)."""
    values = np.asarray(values, np.float64).ravel()
    for _ in range(max_iterations):
        median, std = np.median(values), values.std()
        kept = values[np.abs(values - median) <= sigma * std]
        if len(kept) == len(values) or len(kept) < 3:
            break
        values = kept
    return float(np.median(values)), float(values.std())
