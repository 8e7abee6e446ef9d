"""From files and a catalogue to images on a model's grid: the one path for `fits`
data sets and `predict`.

    for item in prepare_many(paths, instrument, catalogue):
        item.path, item.prepared (a `resample.Prepared`) or item.error (why it was skipped)

A catalogue (CSV, ECSV or a FITS table; `read_catalogue`) names each cut-out (column
`file` with the file name, or `name` matching the file name without extension) and may
give `ra`/`dec` of the lens in degrees, known labels (any column named after a target,
e.g. `log10_m_axion`) and a `split` (train / validation / test).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import zlib

import numpy as np

from deeplense_tf.realdata import fits as fits_io
from deeplense_tf.realdata import resample
from deeplense_tf.realdata.fits import RealDataError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


def list_fits(spec: str) -> list[str]:
    """FITS files of a folder (recursively), a glob pattern, or a single file, sorted."""
    if os.path.isdir(spec):
        paths = [os.path.join(root, f) for root, _, files in os.walk(spec) for f in files
                 if f.lower().endswith(FITS_SUFFIXES)]
    elif any(ch in spec for ch in "*?["):
        paths = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        raise FileNotFoundError(f"--input={spec}: no such file, folder or matching files")
    if not paths:
        raise FileNotFoundError(f"--input={spec}: no FITS files ({', '.join(FITS_SUFFIXES)})")
    return sorted(paths)


def stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


@dataclasses.dataclass
class Entry:
    """One catalogue row."""

    name: str | None = None
    ra: float | None = None
    dec: float | None = None
    labels: dict = dataclasses.field(default_factory=dict)
    split: str | None = None


def read_catalogue(path: str | None, targets=()) -> dict[str, Entry]:
    """{file stem: Entry} from a CSV/ECSV/FITS table, or {} without a path."""
    if not path:
        return {}
    from astropy.table import Table

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--catalogue={path}: no such file")
    try:
        fmt = "ascii.ecsv" if path.endswith(".ecsv") else ("ascii.csv" if path.endswith(".csv")
                                                            else None)
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as error:  # astropy raises many types for bad tables
        raise ValueError(f"--catalogue={path}: unreadable table ({type(error).__name__}: "
                         f"{error})") from None
    columns = {c.lower(): c for c in table.colnames}
    key = columns.get("file") or columns.get("name")
    if key is None:
        raise ValueError(f"--catalogue={path}: needs a 'file' or 'name' column; has "
                         f"{table.colnames}")
    if ("ra" in columns) != ("dec" in columns):
        raise ValueError(f"--catalogue={path}: give both 'ra' and 'dec' (degrees) or neither")
    out = {}
    for row in table:
        ident = stem(str(row[key]).strip())
        entry = Entry(name=str(row[columns["name"]]).strip() if "name" in columns else ident)
        if "ra" in columns:
            ra, dec = float(row[columns["ra"]]), float(row[columns["dec"]])
            if math.isfinite(ra) and math.isfinite(dec):
                entry.ra, entry.dec = ra, dec
        for target in targets:
            if target.lower() in columns:
                value = row[columns[target.lower()]]
                entry.labels[target] = float(value) if value is not None and not np.ma.is_masked(value) else math.nan
        if "split" in columns:
            entry.split = str(row[columns["split"]]).strip().lower()
            if entry.split not in ("train", "validation", "test"):
                raise ValueError(f"--catalogue={path}: row {ident!r} has split "
                                 f"{entry.split!r}; expected train, validation or test")
        if ident in out:
            raise ValueError(f"--catalogue={path}: {ident!r} appears twice")
        out[ident] = entry
    return out


@dataclasses.dataclass
class Item:
    path: str
    name: str
    entry: Entry
    prepared: resample.Prepared | None = None
    error: str | None = None


def prepare_one(path: str, instrument, entry: Entry | None = None, *, method: str = "auto",
                band: str | None = None, zero_point: float | None = None,
                match_noise: bool = True) -> Item:
    """Reads and resamples one file (and matches its noise to the instrument's, see
    `resample.match_noise`); a bad file gives an Item with `error` set."""
    entry = entry or Entry()
    name = entry.name or stem(path)
    try:
        cutout = fits_io.read_cutout(path, instrument, band=band, zero_point=zero_point)
        centre = (entry.ra, entry.dec) if entry.ra is not None else None
        prepared = resample.to_instrument_grid(cutout, instrument, center=centre, method=method)
        if match_noise:
            prepared = resample.match_noise(prepared, instrument,
                                            zlib.crc32(os.path.basename(path).encode()))
        if entry.name is None:
            name = cutout.name if cutout.name != stem(path) else name
        return Item(path, name, entry, prepared=prepared)
    except RealDataError as error:
        return Item(path, name, entry, error=str(error))


_WORKER_ARGS = None


def _init(instrument, kwargs):
    global _WORKER_ARGS
    _WORKER_ARGS = (instrument, kwargs)


def _work(task):
    path, entry = task
    instrument, kwargs = _WORKER_ARGS
    return prepare_one(path, instrument, entry, **kwargs)


def prepare_many(paths, instrument, catalogue: dict[str, Entry] | None = None, *,
                 num_workers: int = 1, method: str = "auto", band: str | None = None,
                 zero_point: float | None = None, match_noise: bool = True, chunksize: int = 8):
    """Yields an `Item` per path, in order; with num_workers > 1 the files are read and
    resampled in spawned processes, ahead of the consumer."""
    from deeplense_tf.simulation import parallel

    catalogue = catalogue or {}
    kwargs = dict(method=method, band=band, zero_point=zero_point, match_noise=match_noise)
    tasks = [(p, catalogue.get(stem(p), Entry())) for p in paths]
    if num_workers <= 1 or len(tasks) < 2 * chunksize:
        for path, entry in tasks:
            yield prepare_one(path, instrument, entry, **kwargs)
        return
    with parallel.spawn_pool(num_workers, _init, (instrument, kwargs)) as pool:
        yield from pool.imap(_work, tasks, chunksize=chunksize)
