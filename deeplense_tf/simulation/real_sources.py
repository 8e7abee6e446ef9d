"""Real galaxies as lensed sources, and real empty sky, for realism studies.

Three building blocks, none of which touches TensorFlow:

- a **stamp catalogue** (`StampCatalogue`): float32 galaxy images (N, S, S), each with
  its measured circular half-light radius in stamp pixels, flux, S/N and a stable id.
  `hdf_catalogue()` cuts one from the Hubble Deep Field that scikit-image ships;
  `load_stamps(path_or_array)` reads a user's own (.npy, .npz, FITS cube or table,
  HDF5). `split_of(stamp_id)` assigns every stamp to train / validation / test by a hash
  of its id (80 / 10 / 10), so lenses of different splits never share a galaxy.
- a **source light model** for lenstronomy's `INTERPOL` profile:
  `interpol_kwargs(stamp, magnitude, r_eff_arcsec, center_x, center_y, angle,
  zero_point)` scales a stamp so that its total flux is `magnitude` at the instrument's
  zero point (counts/s, the simulator's image unit), its circular half-light radius is
  `r_eff_arcsec`, its light centroid sits at (center_x, center_y) and it is rotated by
  `angle` (radians, counter-clockwise).
- **real sky** (`sky_cutouts`): empty patches of the same field, scaled to a requested
  per-pixel sigma, to add to noiseless renders in place of white noise. The field is
  crowded: it holds 12 empty 32 px windows and no empty 48 or 64 px one, so
  `sky_mosaic` tiles 32 px patches (random orientation) to fill a 64 px grid.

How the Hubble Deep Field stamps are made (`hdf_segmentation`): the RGB JPEG becomes one
luminance band (ITU-R 601 weights, 0-255 units); a background mesh (sigma-clipped
medians in 64 px boxes, median-filtered, interpolated linearly) is subtracted; the noise
sigma is the sigma-clipped spread of the residual. Sources are pixels of the residual
smoothed by a 1 px Gaussian above 3 sigma (of the smoothed image) in connected groups
of >= 12 px; they are deblended by a watershed of the image smoothed by 2 px, seeded
by its h-maxima (a peak is a separate object only if it rises 8 sigma above the saddle
to its neighbour, which keeps clumpy spirals in one piece). Each kept segment becomes a
stamp centred on its light centroid: its own segment grown by 3 px, everything else
(neighbours, sky) zero, negative pixels clipped to zero, so a lensed stamp carries no
JPEG noise of its own. Segments are dropped when their S/N (segment sum over sigma x
sqrt(area)) is below 20, their area below 40 px or their half-light radius below 2 px
(too small to resample), when they touch the image border or do not fit in the stamp,
or when any pixel is saturated in all three channels (>= 250): that catches the field's
three stars with diffraction spikes (compact and very bright) and the clipped cores of
five bright galaxies, whose flattened profiles are no model either.
Numbers, and the command that produced them, are in docs/real_sources.md.

Known limits, written down where they matter: the JPEG is 8-bit, lossy and display-
stretched, so pixel values are not linear in flux and faint structure is quantized
(morphology is real, photometry is not: `interpol_kwargs` sets the flux from a
magnitude anyway); there is one band (a luminance mix of three); the stamps carry the
field's PSF, which `interpol_kwargs` scales with the galaxy, so the smallest stamps
(r_half ~ 2 px) are partly PSF; deblending leaves straight watershed edges where two
galaxies touched. The JPEG's noise is not Poisson-calibrated: what `sky_cutouts` keeps
is the spatial structure and correlation of real sky (undetected faint galaxies, JPEG
blocks), not its level. Stamps keep the array orientation (row 0 first); a vertical
flip is a parity change, immaterial for a population drawn at random angles.

lenstronomy's `INTERPOL` caches its interpolator on the first call of a `LightModel`
and reuses it for every later image, whatever the `image` keyword says: a `LightModel`
reused for a new stamp must call `delete_interpol_caches()` first (the tests pin it).

scikit-image (the Hubble Deep Field, segmentation) is imported inside the functions
that need it; the loader needs astropy for FITS and h5py for HDF5 only when given such
files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os

import numpy as np
from scipy import ndimage

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

# Hubble Deep Field extraction defaults (see the module docstring).
HDF_STAMP_SIZE = 64
_BACKGROUND_BOX = 64
_DETECT_SMOOTH_PIX = 1.0
_DETECT_NSIGMA = 3.0
_DETECT_MIN_AREA = 12
_DEBLEND_SMOOTH_PIX = 2.0
_DEBLEND_H_NSIGMA = 8.0
_GROW_PIX = 3
_MIN_SNR = 20.0
_MIN_AREA = 40
_MIN_R_HALF_PIX = 2.0
_SATURATED = 250  # 8-bit value from which a channel counts as saturated


@dataclasses.dataclass(frozen=True)
class StampCatalogue:
    """Galaxy stamps and their measurements.

    stamps: float32 (N, S, S), row index = y, column index = x (lenstronomy's
      `INTERPOL` convention), light centroid near pixel (S - 1) / 2.
    r_half_pix: (N,) circular half-light radius about the light centroid, stamp pixels,
      of the bilinear interpolant that `INTERPOL` renders (`half_light_radius_pix`).
    flux: (N,) sum of the stamp, in the units of its source (0-255 JPEG luminance for
      the Hubble Deep Field).
    snr: (N,) detection S/N (NaN when unknown, e.g. a user catalogue).
    ids: N unique strings; `split_of(id)` gives each stamp's split.
    """

    stamps: np.ndarray
    r_half_pix: np.ndarray
    flux: np.ndarray
    snr: np.ndarray
    ids: tuple[str, ...]

    def __post_init__(self):
        n = len(self.stamps)
        for field in ("r_half_pix", "flux", "snr"):
            if np.shape(getattr(self, field)) != (n,):
                raise ValueError(f"StampCatalogue.{field}: expected shape ({n},), got "
                                 f"{np.shape(getattr(self, field))}")
        if len(self.ids) != n or len(set(self.ids)) != n:
            raise ValueError(f"StampCatalogue.ids: expected {n} unique ids, got {len(self.ids)} "
                             f"({len(set(self.ids))} unique)")

    def __len__(self) -> int:
        return len(self.stamps)

    @property
    def stamp_size(self) -> int:
        return self.stamps.shape[-1]

    def subset(self, index) -> "StampCatalogue":
        """The stamps at `index` (integer array or boolean mask)."""
        index = np.arange(len(self))[index]
        return StampCatalogue(self.stamps[index], self.r_half_pix[index], self.flux[index],
                              self.snr[index], tuple(self.ids[i] for i in index))

    def split(self, name: str) -> "StampCatalogue":
        """The stamps of split `name` ('train', 'validation' or 'test'); see `split_of`."""
        if name not in SPLITS:
            raise ValueError(f"split: unknown name {name!r}; expected one of {SPLITS}")
        return self.subset(np.array([split_of(i) == name for i in self.ids], dtype=bool))


def split_of(stamp_id: str) -> str:
    """'train', 'validation' or 'test' for a stamp id: the first 8 bytes of the id's
    SHA-256 as a fraction of 2^64, cut at 0.8 and 0.9. Stable across runs, machines and
    catalogue order, so lenses of different splits never share a stamp."""
    u = int.from_bytes(hashlib.sha256(str(stamp_id).encode("utf-8")).digest()[:8], "big") / 2**64
    edges = np.cumsum(SPLIT_FRACTIONS)
    return SPLITS[int(np.searchsorted(edges, u, side="right"))]


# --------------------------------------------------------------------------- measuring

def half_light_radius_pix(stamp: np.ndarray, oversample: int = 4) -> float:
    """Circular half-light radius (stamp pixels) about the light centroid of the bilinear
    interpolant of `stamp` with zero outside it: the surface brightness lenstronomy's
    `INTERPOL` renders. Midpoint rule on `oversample`^2 points per pixel."""
    stamp = np.asarray(stamp, dtype=np.float64)
    rows, cols = np.nonzero(stamp.any(axis=1))[0], np.nonzero(stamp.any(axis=0))[0]
    if rows.size:  # zeros add nothing: integrate over the non-zero bounding box only
        stamp = stamp[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    ny, nx = stamp.shape
    padded = np.pad(stamp, 1)
    ty = -1 + (np.arange((ny + 1) * oversample) + 0.5) / oversample
    tx = -1 + (np.arange((nx + 1) * oversample) + 0.5) / oversample
    yy, xx = np.meshgrid(ty, tx, indexing="ij")
    values = ndimage.map_coordinates(padded, [yy.ravel() + 1, xx.ravel() + 1], order=1)
    return _half_light_radius(values, xx.ravel(), yy.ravel())


def _half_light_radius(weights, x, y) -> float:
    total = weights.sum()
    if not total > 0:
        raise ValueError("half-light radius: the stamp has no positive total flux")
    cx, cy = (weights * x).sum() / total, (weights * y).sum() / total
    r = np.hypot(x - cx, y - cy)
    order = np.argsort(r, kind="stable")
    cumulative = np.cumsum(weights[order])
    k = int(np.argmax(cumulative >= 0.5 * total))
    if k == 0:
        return float(r[order[0]])
    # Linear interpolation between the two radii that bracket half the light.
    c0, c1 = cumulative[k - 1], cumulative[k]
    r0, r1 = r[order[k - 1]], r[order[k]]
    return float(r0 + (0.5 * total - c0) / (c1 - c0) * (r1 - r0)) if c1 > c0 else float(r1)


def light_centroid_pix(stamp: np.ndarray) -> tuple[float, float]:
    """(x, y) light centroid in stamp pixels relative to the stamp centre (S - 1) / 2."""
    stamp = np.asarray(stamp, dtype=np.float64)
    ny, nx = stamp.shape
    total = stamp.sum()
    y, x = np.mgrid[0:ny, 0:nx]
    return ((stamp * x).sum() / total - (nx - 1) / 2, (stamp * y).sum() / total - (ny - 1) / 2)


def _sigma_clipped(values, nsigma=3.0, iterations=10) -> tuple[float, float]:
    """(median, std) of `values` after iterative n-sigma clipping about the median."""
    values = np.asarray(values, dtype=np.float64).ravel()
    median = np.median(values)
    std = 1.4826 * np.median(np.abs(values - median))
    for _ in range(iterations):
        kept = values[np.abs(values - median) < nsigma * std]
        if kept.size < 3:
            break
        new_median, new_std = np.median(kept), kept.std()
        if new_median == median and new_std == std:
            break
        median, std = new_median, new_std
    return float(median), float(std)


# --------------------------------------------------------------- Hubble Deep Field stamps

@dataclasses.dataclass(frozen=True)
class Segmentation:
    """The Hubble Deep Field as `hdf_catalogue` and `sky_cutouts` see it.

    luminance, background, residual: (H, W) float64, 0-255 JPEG units.
    noise_sigma: spread of the residual per pixel (sigma-clipped), same units.
    segments: (H, W) int, 0 = sky, k > 0 = object k after deblending.
    kept: segment label -> (row, col) of the top-left corner of its stamp window.
    rejected: segment label -> reason ('snr', 'small', 'edge', 'large', 'saturated').
    """

    luminance: np.ndarray
    background: np.ndarray
    residual: np.ndarray
    noise_sigma: float
    segments: np.ndarray
    kept: dict
    rejected: dict


def _background_mesh(image, box):
    """Smooth background: sigma-clipped median per box, 3 x 3 median filter over the
    mesh, linear interpolation between box centres (held constant beyond them)."""
    from scipy.interpolate import RegularGridInterpolator

    h, w = image.shape
    ny, nx = max(1, round(h / box)), max(1, round(w / box))
    rows, cols = np.linspace(0, h, ny + 1).astype(int), np.linspace(0, w, nx + 1).astype(int)
    mesh = np.array([[_sigma_clipped(image[rows[i]:rows[i + 1], cols[j]:cols[j + 1]])[0]
                      for j in range(nx)] for i in range(ny)])
    mesh = ndimage.median_filter(mesh, size=3, mode="nearest")
    cy, cx = (rows[:-1] + rows[1:] - 1) / 2, (cols[:-1] + cols[1:] - 1) / 2
    if ny == 1 or nx == 1:
        return np.full(image.shape, float(np.median(mesh)))
    interp = RegularGridInterpolator((cy, cx), mesh, bounds_error=False, fill_value=None)
    yy, xx = np.meshgrid(np.clip(np.arange(h), cy[0], cy[-1]), np.clip(np.arange(w), cx[0], cx[-1]),
                         indexing="ij")
    return interp(np.stack([yy.ravel(), xx.ravel()], axis=1)).reshape(h, w)


def hdf_segmentation(stamp_size: int = HDF_STAMP_SIZE, min_snr: float = _MIN_SNR,
                     min_r_half_pix: float = _MIN_R_HALF_PIX) -> Segmentation:
    """Background, noise, deblended segments and cuts of scikit-image's Hubble Deep
    Field (deterministic; cached). Needs scikit-image."""
    return _hdf_segmentation(int(stamp_size), float(min_snr), float(min_r_half_pix))


@functools.lru_cache(maxsize=4)
def _hdf_segmentation(stamp_size, min_snr, min_r_half_pix):
    from skimage import data, measure, morphology, segmentation

    rgb = data.hubble_deep_field()
    luminance = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    background = _background_mesh(luminance, _BACKGROUND_BOX)
    residual = luminance - background
    _, sigma = _sigma_clipped(residual)

    smooth = ndimage.gaussian_filter(residual, _DETECT_SMOOTH_PIX)
    _, sigma_smooth = _sigma_clipped(smooth)
    detected = ndimage.label(smooth > _DETECT_NSIGMA * sigma_smooth)[0]
    sizes = np.bincount(detected.ravel())
    detected = (detected > 0) & (sizes[detected] >= _DETECT_MIN_AREA)
    deblend = ndimage.gaussian_filter(residual, _DEBLEND_SMOOTH_PIX)
    _, sigma_deblend = _sigma_clipped(deblend)
    peaks = morphology.h_maxima(np.where(detected, deblend, 0.0), _DEBLEND_H_NSIGMA * sigma_deblend)
    markers = measure.label(peaks & detected)
    segments = segmentation.watershed(-deblend, markers, mask=detected)
    # A detected group without an h-maximum inside is one object of its own.
    orphans = measure.label(detected & (segments == 0))
    segments = np.where(orphans > 0, orphans + segments.max(), segments)

    # A pixel is saturated when all three channels are: the white cores of the field's
    # stars and of five bright galaxies, whose clipped profiles are no model.
    saturated = (rgb >= _SATURATED).all(axis=2)
    h, w = residual.shape
    half = stamp_size // 2
    kept, rejected = {}, {}
    for region in measure.regionprops(segments):
        label = region.label
        r0, c0, r1, c1 = region.bbox
        pixels = tuple(region.coords.T)
        snr = residual[pixels].sum() / (sigma * math.sqrt(region.area))
        weights = np.clip(residual[pixels], 0, None)
        cy = int(round((weights * region.coords[:, 0]).sum() / max(weights.sum(), 1e-300)))
        cx = int(round((weights * region.coords[:, 1]).sum() / max(weights.sum(), 1e-300)))
        top, left = cy - half, cx - half
        if snr < min_snr:
            rejected[label] = "snr"
        elif region.area < _MIN_AREA:
            rejected[label] = "small"
        elif (r0 == 0 or c0 == 0 or r1 == h or c1 == w or top < 0 or left < 0
              or top + stamp_size > h or left + stamp_size > w):
            rejected[label] = "edge"
        elif (r0 - _GROW_PIX < top or c0 - _GROW_PIX < left or r1 + _GROW_PIX > top + stamp_size
              or c1 + _GROW_PIX > left + stamp_size):
            rejected[label] = "large"
        elif saturated[pixels].any():
            rejected[label] = "saturated"
        elif half_light_radius_pix(_cut_stamp(residual, segments, label, top, left,
                                              stamp_size)) < min_r_half_pix:
            rejected[label] = "small"
        else:
            kept[label] = (top, left)
    return Segmentation(luminance, background, residual, sigma, segments, kept, rejected)


def _cut_stamp(residual, segments, label, top, left, size):
    window = (slice(top, top + size), slice(left, left + size))
    own = segments[window] == label
    grown = ndimage.binary_dilation(own, iterations=_GROW_PIX)
    keep = grown & ((segments[window] == 0) | own)
    return np.where(keep, np.clip(residual[window], 0, None), 0.0)


def hdf_catalogue(stamp_size: int = HDF_STAMP_SIZE, min_snr: float = _MIN_SNR,
                  min_r_half_pix: float = _MIN_R_HALF_PIX) -> StampCatalogue:
    """Galaxy stamps of scikit-image's Hubble Deep Field (see the module docstring),
    ordered by id; ids are 'hdf_r{row}_c{col}', the stamp centre in the 872 x 1000
    image. Deterministic and cached: its arrays are read-only. Needs scikit-image."""
    return _hdf_catalogue(int(stamp_size), float(min_snr), float(min_r_half_pix))


@functools.lru_cache(maxsize=4)
def _hdf_catalogue(stamp_size, min_snr, min_r_half_pix):
    seg = hdf_segmentation(stamp_size, min_snr, min_r_half_pix)
    half = stamp_size // 2
    entries = sorted((f"hdf_r{top + half:03d}_c{left + half:04d}", label, top, left)
                     for label, (top, left) in seg.kept.items())
    stamps = np.stack([_cut_stamp(seg.residual, seg.segments, label, top, left, stamp_size)
                       for _, label, top, left in entries]).astype(np.float32)
    labels = np.array([label for _, label, _, _ in entries])
    area = np.bincount(seg.segments.ravel())[labels]
    segment_flux = np.bincount(seg.segments.ravel(), weights=seg.residual.ravel())[labels]
    r_half = np.array([half_light_radius_pix(s) for s in stamps])
    flux = stamps.sum(axis=(1, 2), dtype=np.float64)
    snr = segment_flux / (seg.noise_sigma * np.sqrt(area))
    for array in (stamps, r_half, flux, snr):
        array.flags.writeable = False
    return StampCatalogue(stamps, r_half, flux, snr, tuple(e[0] for e in entries))


# ------------------------------------------------------------------ user stamp catalogues

def load_stamps(path_or_array, key: str | None = None, ids=None) -> StampCatalogue:
    """A stamp catalogue from a user's array or file.

    path_or_array: an array (N, S, S), or a path to .npy, .npz (array `key`, else
      'stamps', 'images' or the only array; optional 'ids'), FITS (.fits, .fit, .fits.gz:
      the first 3-D image HDU, or the first table with a column of 2-D images; `key`
      names the extension or the column) or HDF5 (.h5, .hdf5: dataset `key`, else 'stamps', 'images' or the
      only 3-D dataset; optional 'ids'; needs h5py).
    ids: N unique strings; default: the file's ids ('ids' in .npz / HDF5), else a hash
      of each stamp's bytes (so a stamp keeps its split across files; repeated stamps
      are refused).
    Stamps must be real floating point, (N, S, S) with S >= 8, finite, each with a
    positive total. Their units do not matter: `interpol_kwargs` sets the flux.
    """
    name = "array" if isinstance(path_or_array, np.ndarray) else repr(str(path_or_array))
    if isinstance(path_or_array, np.ndarray):
        stamps, file_ids = path_or_array, None
    else:
        stamps, file_ids = _read_stamp_file(os.fspath(path_or_array), key)
    stamps = np.asarray(stamps)
    if stamps.dtype == object or not np.issubdtype(stamps.dtype, np.floating):
        raise ValueError(f"load_stamps({name}): expected real floating-point stamps, got dtype "
                         f"{stamps.dtype} (cast integer images with .astype(np.float32))")
    if stamps.ndim != 3:
        raise ValueError(f"load_stamps({name}): expected a 3-D array (N, S, S) of stamps, got "
                         f"shape {stamps.shape} (one stamp: stamp[None])")
    if stamps.shape[0] == 0:
        raise ValueError(f"load_stamps({name}): no stamps (shape {stamps.shape})")
    if stamps.shape[1] != stamps.shape[2] or stamps.shape[1] < 8:
        raise ValueError(f"load_stamps({name}): expected square stamps of at least 8 x 8 "
                         f"pixels, got {stamps.shape[1]} x {stamps.shape[2]}")
    bad = ~np.isfinite(stamps).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"load_stamps({name}): {int(bad.sum())} stamps hold NaN or inf values, "
                         f"first at index {int(np.argmax(bad))}")
    stamps = stamps.astype(np.float32)
    flux = stamps.sum(axis=(1, 2), dtype=np.float64)
    if not (flux > 0).all():
        raise ValueError(f"load_stamps({name}): {int((flux <= 0).sum())} stamps have no positive "
                         f"total flux, first at index {int(np.argmax(flux <= 0))}")
    if ids is None:
        ids = file_ids
    if ids is None:
        # A hash of the bytes: the same stamp in two files gets the same split. Repeats
        # are refused: one galaxy under two ids could land in two splits.
        ids, first = [], {}
        for index, stamp in enumerate(stamps):
            digest = hashlib.sha256(stamp.tobytes()).hexdigest()[:16]
            if digest in first:
                raise ValueError(f"load_stamps({name}): stamps {first[digest]} and {index} are "
                                 "identical; remove repeats (or pass ids=...)")
            first[digest] = index
            ids.append(digest)
    ids = tuple(str(i) for i in np.asarray(ids).ravel())
    if len(ids) != len(stamps) or len(set(ids)) != len(ids):
        raise ValueError(f"load_stamps({name}): expected {len(stamps)} unique ids, got {len(ids)} "
                         f"({len(set(ids))} unique)")
    r_half = np.array([half_light_radius_pix(s) for s in stamps])
    return StampCatalogue(stamps, r_half, flux, np.full(len(stamps), np.nan), ids)


def _read_stamp_file(path, key):
    if not os.path.isfile(path):
        raise ValueError(f"load_stamps({path!r}): no such file; expected a .npy, .npz, FITS or "
                         "HDF5 file of stamps (N, S, S)")
    lower = path.lower()
    if lower.endswith(".npy"):
        return np.load(path, allow_pickle=False), None
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        return _pick(path, arrays, key), arrays.get("ids")
    if lower.endswith((".fits", ".fit", ".fts", ".fits.gz")):
        return _read_fits(path, key), None
    if lower.endswith((".h5", ".hdf5", ".hdf")):
        try:
            import h5py
        except ImportError as error:
            raise ValueError(f"load_stamps({path!r}): reading HDF5 needs h5py") from error
        with h5py.File(path, "r") as f:
            arrays = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
        ids = arrays.get("ids")
        if ids is not None:
            ids = [i.decode() if isinstance(i, bytes) else i for i in np.asarray(ids).ravel()]
        arrays = {k: v for k, v in arrays.items() if k == key or np.ndim(v) == 3}
        return _pick(path, arrays, key), ids
    raise ValueError(f"load_stamps({path!r}): unknown file type; expected .npy, .npz, "
                     ".fits/.fit/.fits.gz or .h5/.hdf5")


def _pick(path, arrays, key):
    if key is not None:
        if key not in arrays:
            raise ValueError(f"load_stamps({path!r}): no array {key!r}; found {sorted(arrays)}")
        return arrays[key]
    for name in ("stamps", "images"):
        if name in arrays:
            return arrays[name]
    candidates = [k for k in arrays if k != "ids"]
    if len(candidates) != 1:
        raise ValueError(f"load_stamps({path!r}): expected an array named 'stamps' or 'images' "
                         f"(or pass key=...); found {sorted(arrays)}")
    return arrays[candidates[0]]


def _read_fits(path, key):
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdus:
        for hdu in hdus:
            if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.data is not None \
                    and (key is None or hdu.name == key.upper()) and hdu.data.ndim == 3:
                return np.array(hdu.data)
            if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                for column in hdu.columns:
                    if (key is None or column.name == key) and len(hdu.data) \
                            and np.ndim(hdu.data[column.name]) == 3:
                        return np.array(hdu.data[column.name])
    raise ValueError(f"load_stamps({path!r}): expected a 3-D image HDU (N, S, S) or a table "
                     f"with a column of 2-D images{'' if key is None else f' named {key!r}'}; "
                     "found neither")


# ------------------------------------------------------------------- INTERPOL source light

def interpol_kwargs(stamp: np.ndarray, magnitude: float, r_eff_arcsec: float, center_x: float,
                    center_y: float, angle: float, zero_point: float,
                    r_half_pix: float | None = None) -> tuple[str, dict]:
    """lenstronomy light model entry and keyword arguments of a stamp as a source.

    The returned ('INTERPOL', kwargs) renders, through `LightModel(['INTERPOL'])`, a
    surface brightness in counts/s per arcsec^2 whose total is 10^(-0.4 (magnitude -
    zero_point)) counts/s, whose circular half-light radius is `r_eff_arcsec` (pixel
    scale r_eff_arcsec / r_half_pix), whose light centroid is at (center_x, center_y)
    arcsec, rotated by `angle` radians counter-clockwise. The stamp's row index is y.
    `r_half_pix`: the stamp's half-light radius (`StampCatalogue.r_half_pix`); measured
    when None (a few ms). Flux is exact (lenstronomy's bilinear interpolant integrates to
    the pixel sum); the radius is that of the same interpolant.
    A `LightModel` reused for another stamp must call `delete_interpol_caches()` first.
    """
    stamp = np.asarray(stamp, dtype=np.float64)
    if stamp.ndim != 2 or stamp.shape[0] != stamp.shape[1]:
        raise ValueError(f"interpol_kwargs: expected one square stamp (S, S), got {stamp.shape}")
    total = stamp.sum()
    if not (np.isfinite(total) and total > 0):
        raise ValueError("interpol_kwargs: the stamp needs a finite, positive total flux")
    if not r_eff_arcsec > 0:
        raise ValueError(f"interpol_kwargs: r_eff_arcsec must be positive, got {r_eff_arcsec}")
    if r_half_pix is None:
        r_half_pix = half_light_radius_pix(stamp)
    scale = r_eff_arcsec / r_half_pix
    # lenstronomy maps sky (x, y) to stamp pixels p = R(-angle) (x - c) / scale, pixel
    # (S - 1) / 2 at c: put the light centroid, not the array centre, at the request.
    dx, dy = light_centroid_pix(stamp)
    cos, sin = math.cos(angle), math.sin(angle)
    kwargs = {
        "image": stamp / (total * scale**2),  # unit total flux, per arcsec^2
        "amp": 10 ** (-0.4 * (magnitude - zero_point)),
        "center_x": center_x - scale * (cos * dx - sin * dy),
        "center_y": center_y - scale * (sin * dx + cos * dy),
        "phi_G": float(angle),
        "scale": scale,
    }
    return "INTERPOL", kwargs


# --------------------------------------------------------------------------- real sky

def empty_sky_windows(num_pix: int, margin_pix: int = 4,
                      stride: int | None = None) -> list[tuple[int, int]]:
    """(top, left) of non-overlapping num_pix windows of the Hubble Deep Field with no
    detected segment within `margin_pix` pixels, scanned in raster order on a grid of
    step `stride` (default num_pix // 2)."""
    seg = hdf_segmentation()
    occupied = seg.segments > 0
    if margin_pix > 0:
        occupied = ndimage.binary_dilation(occupied, iterations=margin_pix)
    # Summed-area table: occupied pixels in any window in O(1).
    table = np.pad(occupied.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    stride = stride or max(1, num_pix // 2)
    h, w = occupied.shape
    taken = np.zeros_like(occupied)
    windows = []
    for top in range(0, h - num_pix + 1, stride):
        for left in range(0, w - num_pix + 1, stride):
            b, r = top + num_pix, left + num_pix
            if table[b, r] - table[top, r] - table[b, left] + table[top, left] == 0 \
                    and not taken[top:b, left:r].any():
                taken[top:b, left:r] = True
                windows.append((top, left))
    return windows


def sky_cutouts(num_pix: int, sigma: float, margin_pix: int = 4, stride: int | None = None,
                max_count: int | None = None) -> np.ndarray:
    """Empty-sky patches (K, num_pix, num_pix) float32 of the Hubble Deep Field, each
    with mean 0 and standard deviation exactly `sigma` (image units, e.g. counts/s), to
    add to noiseless renders.

    A patch is a window of the background-subtracted luminance, on a grid of step
    `stride` (default num_pix // 2), with no detected segment within `margin_pix`
    pixels; overlapping windows are skipped in raster order. The JPEG's noise is not
    Poisson-calibrated: the level is set by `sigma`; what is real is the spatial
    structure (correlated noise, 8 x 8 JPEG blocks, galaxies below the detection
    threshold). The field holds 12 such 32 px windows (stride 8) and none of 48 or
    64 px: the result may be empty (see `sky_mosaic`). Needs scikit-image.
    """
    if not (isinstance(num_pix, (int, np.integer)) and num_pix >= 8):
        raise ValueError(f"sky_cutouts: num_pix must be an integer >= 8, got {num_pix!r}")
    if not sigma > 0:
        raise ValueError(f"sky_cutouts: sigma must be positive, got {sigma}")
    seg = hdf_segmentation()
    windows = empty_sky_windows(num_pix, margin_pix, stride)[:max_count]
    patches = []
    for top, left in windows:
        patch = seg.residual[top:top + num_pix, left:left + num_pix]
        patch = patch - patch.mean()
        patches.append(patch * (sigma / patch.std()))
    return np.array(patches, dtype=np.float32).reshape(-1, num_pix, num_pix)


def sky_mosaic(num_pix: int, sigma: float, count: int, rng: np.random.Generator,
               tile_pix: int = 32, margin_pix: int = 4) -> np.ndarray:
    """`count` sky patches (count, num_pix, num_pix) float32 of mean 0 and standard
    deviation `sigma`, each a mosaic of empty Hubble Deep Field tiles (`sky_cutouts` of
    `tile_pix`, step tile_pix // 4), every tile drawn from `rng` and put in a random
    one of its 8 orientations. The field is too crowded for empty 64 px windows (see
    docs/real_sources.md): the structure is real within a tile, not across seams."""
    tiles = sky_cutouts(tile_pix, 1.0, margin_pix=margin_pix, stride=max(1, tile_pix // 4))
    if not len(tiles):
        raise ValueError(f"sky_mosaic: no empty {tile_pix} px tile with margin {margin_pix}; "
                         "use a smaller tile_pix")
    per_side = -(-num_pix // tile_pix)
    patches = np.empty((count, num_pix, num_pix), dtype=np.float32)
    for k in range(count):
        rows = []
        for _ in range(per_side):
            row = []
            for _ in range(per_side):
                tile = np.rot90(tiles[rng.integers(len(tiles))], rng.integers(4))
                row.append(tile[:, ::-1] if rng.integers(2) else tile)
            rows.append(np.concatenate(row, axis=1))
        patch = np.concatenate(rows, axis=0)[:num_pix, :num_pix].astype(np.float64)
        patch -= patch.mean()
        patches[k] = patch * (sigma / patch.std())
    return patches
