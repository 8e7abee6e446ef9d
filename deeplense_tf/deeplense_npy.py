"""Reading the released DeepLense `.npy` files, in every layout in circulation.

Released data sets are folders `Model_X[_test]/<class>/*.npy`. The layouts seen:

  1. `[image, mass_eV]`: a (2,) object array (axion files of Models I-III); pickled.
  2. a bare (H, W) float image (cdm and no_sub files of Models I-III).
  3. a (1, H, W) or (H, W, 1) image (the GSoC test sets and several forks).
  4. a 0-d object array holding a dict such as {"image": ..., "mass": ...}; pickled.
  5. a structured array with fields `image` and `mass` (or `mass_eV`/`log10_m_axion`):
     the same content as layout 1 without pickle; the safe way to re-save data.

Pickled arrays execute code when loaded, so layouts 1 and 4 are read only when the
caller opts in with `allow_pickle=True`; otherwise reading stops with an error that
says why and how to opt in. The header is inspected before anything is unpickled.
"""

from __future__ import annotations

import math

import numpy as np

# Folder names used for the substructure classes in released data sets and forks.
CLASS_ALIASES = {
    "no_sub": "no_sub", "nosub": "no_sub", "no": "no_sub", "none": "no_sub",
    "cdm": "cdm", "sphere": "cdm", "subhalo": "cdm", "subhalos": "cdm",
    "axion": "axion", "vort": "axion", "vortex": "axion",
}

_PICKLE_HELP = ("it holds a pickled Python object array, and unpickling runs code from the "
                "file. Load it only if you trust its source: pass allow_pickle=True "
                "(`--allow_pickle` on the command line), or re-save it without pickle as a "
                "structured array with fields 'image' and 'mass'.")


class NpyFormatError(ValueError):
    """A file that is not a readable DeepLense array; the message names the file."""


def read_example(fileobj, path: str, allow_pickle: bool = False) -> tuple[np.ndarray, float]:
    """Reads one file: returns (image (H, W) float32, log10(m_a / eV) or NaN)."""
    try:
        version = np.lib.format.read_magic(fileobj)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(fileobj)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(fileobj)
        fileobj.seek(0)
    except Exception as err:  # noqa: BLE001 - numpy raises several types for bad headers.
        raise NpyFormatError(f"{path}: not a readable .npy file ({err})") from err
    if dtype.hasobject and not allow_pickle:
        raise NpyFormatError(f"{path}: refusing to load: {_PICKLE_HELP}")
    try:
        array = np.load(fileobj, allow_pickle=dtype.hasobject)
    except Exception as err:  # noqa: BLE001 - truncated files raise ValueError/EOFError/...
        raise NpyFormatError(f"{path}: truncated or corrupt .npy file ({type(err).__name__}: "
                             f"{err})") from err
    image, mass = _unpack(array, path)
    image = np.asarray(image)
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape(image.shape[1:] if image.shape[0] == 1 else image.shape[:-1])
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.number):
        raise NpyFormatError(f"{path}: expected a 2-D numeric image (or one with a single "
                             f"channel), got shape {image.shape} and dtype {image.dtype}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise NpyFormatError(f"{path}: the image contains NaN or infinite values")
    return image, _log10_mass(mass, path)


def _unpack(array, path):
    if array.dtype.names:
        names = set(array.dtype.names)
        if "image" not in names:
            raise NpyFormatError(f"{path}: structured array needs an 'image' field, has {names}")
        mass_field = next((f for f in ("mass", "mass_eV", "log10_m_axion") if f in names), None)
        record = array.reshape(-1)[0] if array.shape else array[()]
        mass = None if mass_field is None else record[mass_field]
        if mass_field == "log10_m_axion":
            mass = 10.0 ** float(mass)
        return record["image"], mass
    if array.dtype == object:
        if array.shape == ():
            item = array[()]
            if isinstance(item, dict):
                image = next((item[k] for k in ("image", "img", "data") if k in item), None)
                mass = next((item[k] for k in ("mass", "mass_eV", "m", "label") if k in item), None)
                if image is None:
                    raise NpyFormatError(f"{path}: dict without an 'image' entry: {sorted(item)}")
                return image, mass
            if isinstance(item, (tuple, list)) and len(item) == 2:
                return item[0], item[1]
        if array.shape == (2,):
            return array[0], array[1]
        raise NpyFormatError(f"{path}: unsupported object array of shape {array.shape}; expected "
                             "[image, mass] or a dict with 'image'")
    return array, None


def _log10_mass(mass, path) -> float:
    """Axion masses are stored in eV (~1e-23); some forks store log10 already."""
    if mass is None:
        return math.nan
    try:
        value = float(np.asarray(mass).reshape(()))
    except (TypeError, ValueError) as err:
        raise NpyFormatError(f"{path}: the mass label {mass!r} is not a number") from err
    if 0 < value < 1e-15:
        return math.log10(value)
    if -30 < value < -15:
        return value
    raise NpyFormatError(f"{path}: mass label {value!r} is neither an axion mass in eV "
                         "(0 < m < 1e-15) nor its log10 (-30 < log10 m < -15)")
