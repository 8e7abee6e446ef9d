r"""Dark-matter estimates for a folder of survey cut-outs (or images), one row per image.

  python -m deeplense_tf.predict --model=hybrid_model_ii_axion \
      --input=CUTOUTS/ [--catalogue=CATALOGUE.csv] --output=predictions.csv
  python -m deeplense_tf.predict --model=RUN/model.keras --instrument=euclid \
      --input='cutouts/**/*.fits' --output=predictions.parquet
  python -m deeplense_tf.predict --model=exports/axion/3 --input=stack.npy --output=p.fits
  python -m deeplense_tf.predict --model=NAME --data_dir=DATA \
      --input=tfds:deeplense_lensing/model_ii_axion/test --output=p.csv

`--model`: a shipped model's name, a `.keras` file, or a SavedModel directory (as
`export` writes). `--input`: a folder or glob of FITS files (read, converted and
resampled onto the model's instrument grid by `deeplense_tf.realdata`, in worker
processes while the model runs), an `.npy` stack of images already on that grid, or a
prepared TFDS split. `--output`: `.csv`, `.parquet` or `.fits` (a table), written whole
or not at all.

Columns: name, file, ra, dec, status (`ok` or `skipped`), reason (why an image was
skipped), centre (where the lens position came from), noise_sigma (median per-pixel
sigma), noise_added (white noise added to reach the training noise level), and per target: the estimate, `_std`, `_q16`, `_q50`, `_q84` (a calibrated
model's intervals; a Gaussian's otherwise), `true_<target>` when the catalogue knows it,
then `ood_score` and `ood_flag` (1: do not trust this estimate; NaN when the model has
no OOD score). In Python: `predict_files(...)` and `predict_images(...)` return the same
table as an `astropy.table.Table` (`.to_pandas()` turns it into a DataFrame).
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
from absl import app, flags

from deeplense_tf import console


_Z16 = 0.994458  # the central 68% interval of a Gaussian: mean +- 0.9945 sigma


class Predictor:
    """A model from a shipped name, a .keras file or a SavedModel, called on raw images."""

    def __init__(self, model: str, instrument: str | None = None):
        from deeplense_tf import pretrained

        self.instrument = instrument
        self.name = model
        if os.path.isdir(model) and os.path.exists(os.path.join(model, "saved_model.pb")):
            self._saved_model(model)
        else:
            path = pretrained.resolve(model)  # a shipped name, pretrained:NAME, or a path
            name = pretrained.shipped_name(model)
            if name is not None:
                meta = pretrained.info(name)
                if instrument is not None and instrument != meta["instrument"]:
                    raise ValueError(f"--instrument={instrument}: {name} was trained on "
                                     f"{meta['instrument']!r} images")
                self.instrument = meta["instrument"]
            elif not (os.path.isfile(path) and path.endswith(".keras")):
                raise FileNotFoundError(f"--model={model}: not a shipped model "
                                        f"({pretrained.list()}), a .keras file or a SavedModel "
                                        "directory")
            self._keras(pretrained.load_model(model))
        stds = [k[:-len("_std")] for k in self.output_names if k.endswith("_std")]
        self.targets = stds or [k for k in self.output_names
                                if not k.startswith("ood_") and "_q" not in k]

    def _keras(self, model):
        self._model = model
        self.image_shape = tuple(model.input_shape[1:])
        self.output_names = sorted(model.output)

        import tensorflow as tf

        call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._call = lambda images: {k: v.numpy() for k, v in call(images).items()}

    def _saved_model(self, path):
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        signature = loaded.signatures["serving_default"]
        spec = signature.structured_input_signature[1]
        if "image" not in spec:
            raise ValueError(f"--model={path}: its serving_default takes {list(spec)}, not 'image'")
        self.image_shape = tuple(spec["image"].shape[1:])
        self.output_names = sorted(signature.structured_outputs)
        self._loaded = loaded  # keeps the signature's variables alive
        self._call = lambda images: {k: v.numpy() for k, v in signature(image=tf.constant(images)).items()}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[1:] != self.image_shape:
            raise ValueError(f"images of shape {images.shape[1:]}; {self.name} takes "
                             f"{self.image_shape}")
        return self._call(images)


def estimate_columns(outputs: dict, targets) -> dict[str, np.ndarray]:
    """Per target: estimate, _std, _q16, _q50, _q84 (and _q025, _q975 when calibrated),
    then ood_score and ood_flag (NaN without an OOD score)."""
    columns = {}
    for t in targets:
        mean = np.asarray(outputs[t], np.float64)
        columns[t] = mean
        if t + "_std" in outputs:
            std = np.asarray(outputs[t + "_std"], np.float64)
            columns[t + "_std"] = std
            columns[t + "_q16"] = np.asarray(outputs.get(t + "_q16", mean - _Z16 * std), np.float64)
            columns[t + "_q50"] = mean
            columns[t + "_q84"] = np.asarray(outputs.get(t + "_q84", mean + _Z16 * std), np.float64)
            for q in ("_q025", "_q975"):
                if t + q in outputs:
                    columns[t + q] = np.asarray(outputs[t + q], np.float64)
    from deeplense_tf.models.layers import CORR_PREFIX

    for key in sorted(k for k in outputs if k.startswith(CORR_PREFIX)):
        columns[key] = np.asarray(outputs[key], np.float64)
    n = len(next(iter(columns.values())))
    columns["ood_score"] = np.asarray(outputs.get("ood_score", np.full(n, np.nan)), np.float64)
    columns["ood_flag"] = np.asarray(outputs.get("ood_flag", np.full(n, np.nan)), np.float64)
    return columns


class _Rows:
    """Collects rows (dicts) and the column order."""

    def __init__(self):
        self.rows = []

    def add(self, **row):
        self.rows.append(row)

    def table(self):
        """The rows in input order (`_order`), as an astropy Table."""
        from astropy.table import Table

        self.rows.sort(key=lambda row: row.get("_order", 0))
        for row in self.rows:
            row.pop("_order", None)
        names = []
        for row in self.rows:
            names += [k for k in row if k not in names]
        columns = {}
        for name in names:
            values = [row.get(name) for row in self.rows]
            if all(isinstance(v, str) or v is None for v in values):
                columns[name] = np.array(["" if v is None else v for v in values], dtype=str)
            else:
                columns[name] = np.array([math.nan if v is None else float(v) for v in values])
        return Table(columns, names=names) if names else Table()


def _predict_batches(predictor, batch, rows):
    if not batch:
        return
    images = np.stack([b[0] for b in batch])
    columns = estimate_columns(predictor(images), predictor.targets)
    for i, (_, meta) in enumerate(batch):
        rows.add(**meta, status="ok", reason="", **{k: v[i] for k, v in columns.items()})
    batch.clear()


def predict_files(inputs, model, *, instrument: str | None = None, catalogue: str | None = None,
                  method: str = "auto", num_workers: int | None = None, batch_size: int = 256,
                  progress: bool = False, band: str | None = None,
                  zero_point: float | None = None, match_noise: bool = True):
    """The table of estimates for FITS cut-outs: `inputs` a folder, a glob pattern, a file
    or a list of files; `model` a name, path or `Predictor`. Bad files become rows with
    status 'skipped' and the reason."""
    from deeplense_tf.realdata import prepare
    from deeplense_tf.simulation import instruments, parallel

    predictor = model if isinstance(model, Predictor) else Predictor(model, instrument)
    if predictor.instrument is None:
        raise ValueError(f"--instrument: {predictor.name} does not say which instrument it "
                         f"takes; give one of {sorted(k for k in ('euclid', 'hst'))}")
    inst = instruments.get(predictor.instrument)
    if (inst.num_pix, inst.num_pix, 1) != predictor.image_shape:
        raise ValueError(f"--instrument={predictor.instrument}: its {inst.num_pix}-px grid "
                         f"does not match the model's input {predictor.image_shape}")
    paths = inputs if isinstance(inputs, (list, tuple)) else prepare.list_fits(inputs)
    from deeplense_tf.datasets.deeplense_lensing.deeplense_lensing_dataset_builder import FITS_TARGETS

    known = prepare.read_catalogue(catalogue, tuple(FITS_TARGETS) + tuple(predictor.targets))
    workers = parallel.default_num_workers() if num_workers is None else num_workers
    items = prepare.prepare_many(paths, inst, known, num_workers=workers, method=method,
                                 band=band, zero_point=zero_point, match_noise=match_noise)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(paths), unit="cutout", desc="predict")
    rows, batch = _Rows(), []
    for order, item in enumerate(items):
        meta = {"_order": order, "name": item.name, "file": item.path, "model": predictor.name,
                "dataset": f"fits:{predictor.instrument}"}
        truth = {f"true_{t}": item.entry.labels.get(t, math.nan) for t in predictor.targets
                 if t in item.entry.labels}
        if item.error:
            rows.add(**meta, ra=item.entry.ra, dec=item.entry.dec, status="skipped",
                     reason=item.error, **truth)
            continue
        p = item.prepared
        meta.update(ra=p.ra, dec=p.dec, centre=p.centre_source,
                    noise_sigma=float(np.median(p.noise_sigma)), noise_added=p.noise_added,
                    **truth)
        batch.append((p.image[..., None], meta))
        if len(batch) >= batch_size:
            _predict_batches(predictor, batch, rows)
    _predict_batches(predictor, batch, rows)
    return rows.table()


def predict_images(images, model, *, names=None, batch_size: int = 256, instrument=None,
                   truths=None, dataset: str = ""):
    """The table of estimates for images already on the model's grid, (N, H, W[, 1]) in
    counts/s at its instrument's zero point. `truths` ({name: (N,) values}, optional) adds a
    `true_<target>` column for each of the model's targets it holds; `dataset` names where
    the images come from (a `dataset` column, which `population` checks)."""
    predictor = model if isinstance(model, Predictor) else Predictor(model, instrument)
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
        images = images[None]
    names = list(names) if names is not None else [f"image_{i}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"names: {len(names)} for {len(images)} images")
    truths = {f"true_{t}": np.asarray(truths[t], np.float64) for t in predictor.targets
              if truths is not None and t in truths}
    for key, values in truths.items():
        if values.shape != (len(images),):
            raise ValueError(f"truths[{key[5:]!r}]: {values.shape[0] if values.ndim else 0} "
                             f"values for {len(images)} images")
    rows = _Rows()
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        good = np.flatnonzero(finite)
        columns = estimate_columns(predictor(chunk[good]), predictor.targets) if len(good) else {}
        at = {g: j for j, g in enumerate(good)}
        for i in range(len(chunk)):
            meta = {"name": names[start + i], "file": "", "ra": math.nan, "dec": math.nan,
                    "model": predictor.name, "dataset": dataset,
                    **{k: v[start + i] for k, v in truths.items()}}
            if i in at:
                rows.add(**meta, status="ok", reason="",
                         **{k: v[at[i]] for k, v in columns.items()})
            else:
                rows.add(**meta, status="skipped",
                         reason=f"{names[start + i]}: NaN or infinite pixels")
    return rows.table()


def _tfds_images(spec: str, data_dir: str):
    """(images, names, stored values) of 'tfds:deeplense_lensing/CONFIG[:VERSION]/SPLIT';
    the stored values are every float parameter and target of the examples, by name."""
    import tensorflow_datasets as tfds

    from deeplense_tf import input_pipeline

    body = spec[len("tfds:"):]
    dataset, _, split = body.rpartition("/")
    if not dataset or not split or not data_dir:
        raise ValueError(f"--input={spec}: expected tfds:deeplense_lensing/CONFIG[:VERSION]/SPLIT "
                         "with --data_dir")
    builder = input_pipeline.load_builder(data_dir, dataset)
    if split not in builder.info.splits:
        raise ValueError(f"--input={spec}: no split {split!r}; available "
                         f"{list(builder.info.splits)}")
    images, names, truths = [], [], {}
    for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))):
        images.append(ex["image"])
        names.append(ex["name"].decode() if "name" in ex else f"{split}[{i}]")
        for key, value in {**ex.get("params", {}), **ex}.items():
            if np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.floating):
                truths.setdefault(key, []).append(float(value))
    truths = {k: np.asarray(v) for k, v in truths.items() if len(v) == len(images)}
    return np.stack(images), names, truths


def write_table(table, path: str) -> None:
    """`.csv`, `.parquet` or `.fits`, written under a temporary name then renamed."""
    suffix = os.path.splitext(path)[1].lower()
    formats = {".csv": "ascii.csv", ".parquet": "parquet", ".fits": "fits", ".fit": "fits"}
    if suffix not in formats:
        raise ValueError(f"--output={path}: expected a .csv, .parquet or .fits file name")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=directory, prefix=".tmp-")
    os.close(fd)
    try:
        table.write(tmp, format=formats[suffix], overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model", None, "Shipped model name, .keras file or SavedModel directory.",
                        required=True)
    flags.DEFINE_string("input", None, "FITS folder / glob / file, an .npy stack, or "
                        "tfds:deeplense_lensing/CONFIG/SPLIT.", required=True)
    flags.DEFINE_string("output", None, "predictions.csv, .parquet or .fits.", required=True)
    flags.DEFINE_string("instrument", None, "The model's instrument (euclid, hst), for models "
                        "that are not shipped ones.")
    flags.DEFINE_string("catalogue", None, "CSV/ECSV/FITS table: file or name, ra, dec, labels.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (for a tfds: input).")
    flags.DEFINE_enum("resample", "auto", ["auto", "adaptive", "interp", "exact"],
                      "Resampling onto the instrument grid (deeplense_tf.realdata.resample).")
    flags.DEFINE_string("band", None, "Band extension to read from multi-band files.")
    flags.DEFINE_float("zero_point", None, "AB zero point of files whose header has none.")
    flags.DEFINE_bool("match_noise", True, "Add white noise up to the instrument's simulated "
                      "background rms where a cut-out's is lower (realdata.resample.match_noise).")
    flags.DEFINE_integer("num_workers", None, "Processes reading FITS files (default: cores).")
    flags.DEFINE_integer("batch_size", 256, "Images per model call.")


def main(argv):
    del argv
    console.setup()
    source = FLAGS.input
    if source.startswith("tfds:"):
        images, names, truths = _tfds_images(source, FLAGS.data_dir)
        table = predict_images(images, Predictor(FLAGS.model, FLAGS.instrument), names=names,
                               batch_size=FLAGS.batch_size, truths=truths,
                               dataset=source[len("tfds:"):].rpartition("/")[0])
    elif source.endswith(".npy"):
        if not os.path.isfile(source):
            raise app.UsageError(f"--input={source}: no such file")
        images = np.load(source, allow_pickle=False)
        stem = os.path.splitext(os.path.basename(source))[0]
        table = predict_images(images, Predictor(FLAGS.model, FLAGS.instrument),
                               names=[f"{stem}[{i}]" for i in range(len(images))],
                               batch_size=FLAGS.batch_size, dataset=os.path.abspath(source))
    else:
        table = predict_files(source, FLAGS.model, instrument=FLAGS.instrument,
                              catalogue=FLAGS.catalogue, method=FLAGS.resample,
                              num_workers=FLAGS.num_workers, batch_size=FLAGS.batch_size,
                              progress=True, band=FLAGS.band, zero_point=FLAGS.zero_point,
                              match_noise=FLAGS.match_noise)
    write_table(table, FLAGS.output)
    status = np.asarray(table["status"])
    skipped = np.flatnonzero(status != "ok")
    flagged = int(np.nansum(np.asarray(table["ood_flag"], np.float64))) if "ood_flag" in table.colnames else 0
    print(f"{len(table)} images: {len(table) - len(skipped)} predicted ({flagged} flagged out of "
          f"distribution), {len(skipped)} skipped")
    for i in skipped[:20]:
        print(f"  skipped {table['reason'][i]}")
    print(f"Predictions: {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
