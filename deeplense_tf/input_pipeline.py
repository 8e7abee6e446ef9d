"""From a prepared `deeplense_lensing` directory to batches for training and evaluation.

Order of operations for training (per epoch, so a resumed run replays the same data):
  read TFRecords -> select image + targets -> cache (in memory, if it fits)
  -> shuffle (seed, epoch) -> skip batches already trained (resume) -> augment per
  example (stateless, seeded by (seed, epoch, index)) -> batch (drop remainder: static
  shapes under distribution) -> prefetch.
Evaluation reads in file order, batches without dropping, never augments.

Images stay raw: normalization and target scaling live inside the model (so an exported
model takes raw images and returns physical units). This module computes the
training-split statistics the model is built with.

Augmentation: the 8 symmetries of the square (4 rotations x optional flip), drawn per
example inside the graph. Scalar targets that are invariant under rotation (masses,
Einstein radius, Sigma_sub, ...) are unchanged; positions rotate, spin-2 quantities
(ellipticity, shear) rotate by twice the angle, axis angles (vortex orientation) by the
angle modulo pi. In pixel coordinates (x along columns, y along rows, both increasing
with the index) `tf.image.rot90` maps a feature at (x, y) to (y, -x) and
`tf.image.flip_left_right` maps it to (-x, y).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

# Targets that are not rotation-invariant, and how they transform.
POSITION_PAIRS = (("lens_center_x", "lens_center_y"), ("source_center_x", "source_center_y"))
SPIN2_PAIRS = (("lens_e1", "lens_e2"), ("shear_gamma1", "shear_gamma2"),
               ("source_e1", "source_e2"))
AXIS_ANGLES = ("vortex_angle",)  # orientation of a line, defined modulo pi


class DataError(ValueError):
    """A data set that is missing or cannot serve the request; the message says which."""


def dataset_path(data_dir: str, dataset: str) -> epath.Path:
    """DIR/deeplense_lensing/CONFIG/VERSION for `dataset` = 'deeplense_lensing/CONFIG[:VERSION]'
    (the newest prepared version when none is given)."""
    name, _, version = dataset.partition(":")
    if name.count("/") != 1:
        raise DataError(f"--dataset: expected 'deeplense_lensing/CONFIG[:VERSION]', got {dataset!r}")
    root = epath.Path(data_dir)
    config_dir = root / name
    if not config_dir.is_dir():
        builder_dir = root / name.split("/")[0]
        available = sorted(p.name for p in builder_dir.iterdir()) if builder_dir.is_dir() else []
        raise DataError(
            f"--dataset={dataset}: no prepared data set in {config_dir}; configs prepared in "
            f"{builder_dir}: {available or 'none'}. Build it with `python -m "
            f"deeplense_tf.build_dataset --config={name.split('/')[1]} --data_dir={data_dir}`.")
    versions = sorted((p for p in config_dir.iterdir() if (p / "dataset_info.json").exists()),
                      key=lambda p: tuple(int(x) for x in p.name.split(".")) if p.name.replace(".", "").isdigit() else (-1,))
    if version:
        versions = [p for p in versions if p.name == version]
    if not versions:
        raise DataError(f"--dataset={dataset}: {config_dir} holds no complete build"
                        f"{' of version ' + version if version else ''} (an interrupted build "
                        "leaves only an 'incomplete.*' folder); build it again.")
    return versions[-1]


def load_builder(data_dir: str, dataset: str):
    """The prepared data set, read without importing the simulator."""
    return tfds.builder_from_directory(str(dataset_path(data_dir, dataset)))


def available_targets(builder) -> list[str]:
    """Scalar float features usable as regression targets (top level and `params`)."""
    features = builder.info.features
    names = [k for k, f in features.items()
             if isinstance(f, tfds.features.Scalar) and f.np_dtype == np.float32]
    if "params" in features:
        names += [k for k in features["params"].keys() if k not in names]
    return names


def _partners(targets) -> list[str]:
    """Targets plus the other component of any position or spin-2 pair they belong to."""
    needed = list(targets)
    for a, b in POSITION_PAIRS + SPIN2_PAIRS:
        if (a in targets or b in targets):
            needed += [n for n in (a, b) if n not in needed]
    return needed


def check_targets(builder, targets) -> None:
    if not targets:
        raise DataError("--targets: name at least one target")
    known = available_targets(builder)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise DataError(f"--targets: {unknown} not in {builder.info.full_name}; accepted: {known}")


def _select(example, names):
    """Image plus the named scalars, read from the top level or from `params`."""
    labels = {}
    for name in names:
        if name in example and name != "params":
            labels[name] = tf.cast(example[name], tf.float32)
        else:
            labels[name] = tf.cast(example["params"][name], tf.float32)
    return example["image"], labels


def dihedral(image, labels, k, flip):
    """Applies flip (x -> -x, if `flip`) then k quarter turns ((x, y) -> (y, -x) each) to an
    (H, W, C) image and transforms the labels accordingly. Works eagerly and in graphs."""
    k = tf.cast(k, tf.int32) % 4
    flip = tf.cast(flip, tf.bool)
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    image = tf.image.rot90(image, k)
    labels = dict(labels)
    sign = tf.where(flip, -1.0, 1.0)
    quarter = tf.cast(k, tf.float32) * (math.pi / 2)
    for a, b in POSITION_PAIRS:
        if a in labels:
            x, y = sign * labels[a], labels[b]
            # Quarter turns k = 0..3 map (x, y) to (x, y), (y, -x), (-x, -y), (-y, x): exact.
            labels[a] = tf.gather(tf.stack([x, y, -x, -y]), k)
            labels[b] = tf.gather(tf.stack([y, -x, -y, x]), k)
    for a, b in SPIN2_PAIRS:
        if a in labels:
            e1, e2 = labels[a], sign * labels[b]  # mirror: angle -> pi - angle
            parity = tf.where(k % 2 == 1, -1.0, 1.0)  # a quarter turn rotates spin-2 by pi
            labels[a], labels[b] = parity * e1, parity * e2
    for name in AXIS_ANGLES:
        if name in labels:
            angle = tf.where(flip, math.pi - labels[name], labels[name]) - quarter
            labels[name] = tf.math.floormod(angle, math.pi)
    return image, labels


def _augment(seed):
    def fn(index, image, labels):
        draw = tf.random.stateless_uniform([2], seed=tf.stack([seed, index]), maxval=8,
                                           dtype=tf.int64)
        return dihedral(image, labels, draw[0] % 4, draw[1] % 2 == 1)
    return fn


@dataclasses.dataclass
class Statistics:
    """Training-split statistics the model is built with."""

    target_mean: list[float]
    target_std: list[float]
    pixel_mean: float
    pixel_std: float
    pixel_noise: float  # robust (MAD) spread of the pixels: the asinh stretch's scale
    num_examples: int


class Pipeline:
    """Batches of (raw image, {target: value}) from one prepared data set."""

    def __init__(self, data_dir: str, dataset: str, targets, *, seed: int = 0,
                 cache: bool | None = None, max_cache_fraction: float = 0.4):
        """targets=() reads images only (`unlabelled_batches`: the target domain of
        `deeplense_tf.adaptation`, whose labels are never read)."""
        self.builder = load_builder(data_dir, dataset)
        self.targets = list(targets)
        if self.targets:
            check_targets(self.builder, self.targets)
        self.seed = seed
        self.image_shape = tuple(self.builder.info.features["image"].shape)
        self._needed = _partners(self.targets)
        self._cache = cache
        self._max_cache_fraction = max_cache_fraction
        self._base = {}

    def num_examples(self, split: str) -> int:
        """Examples in `split`, which may be sliced (e.g. 'train[:8000]')."""
        if split.split("[")[0] not in self.builder.info.splits:
            raise DataError(f"split {split!r} not in {self.builder.info.full_name}; available: "
                            f"{list(self.builder.info.splits)}")
        return self.builder.info.splits[split].num_examples

    def _should_cache(self, split):
        if self._cache is not None:
            return self._cache
        import psutil

        size = self.num_examples(split) * (np.prod(self.image_shape) + len(self._needed)) * 4
        return size < self._max_cache_fraction * psutil.virtual_memory().available

    def _read(self, split):
        """Decoded (image, labels) in file order, cached after the first pass if it fits."""
        if split not in self._base:
            self.num_examples(split)
            ds = self.builder.as_dataset(split=split, shuffle_files=False,
                                         read_config=tfds.ReadConfig(try_autocache=False))
            needed = self._needed
            ds = ds.map(lambda ex: _select(ex, needed), num_parallel_calls=tf.data.AUTOTUNE)
            if self._should_cache(split):
                ds = ds.cache()
            self._base[split] = ds
        return self._base[split]

    def train_epoch(self, batch_size: int, epoch: int, *, augment: bool = True,
                    skip_batches: int = 0, split: str = "train") -> tf.data.Dataset:
        """One epoch of shuffled, augmented, full batches; deterministic in (seed, epoch)."""
        n = self.num_examples(split)
        if batch_size > n:
            raise DataError(f"batch size {batch_size} exceeds the {n} examples of {split!r}")
        ds = self._read(split).shuffle(n, seed=self.seed * 1_000_003 + epoch,
                                       reshuffle_each_iteration=False)
        ds = ds.enumerate()
        if skip_batches:
            ds = ds.skip(skip_batches * batch_size)
        if augment:
            seed = tf.constant(self.seed * 1_000_003 + epoch, tf.int64)
            ds = ds.map(lambda i, ex: _augment(seed)(i, *ex), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
        else:
            ds = ds.map(lambda i, ex: ex)
        ds = ds.map(self._keep_targets).batch(batch_size, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    def unlabelled_batches(self, batch_size: int, first_pass: int, num_batches: int, *,
                           augment: bool = True, skip_batches: int = 0,
                           split: str = "train") -> tf.data.Dataset:
        """`num_batches` full batches of images only, after the first `skip_batches`: `split`
        reshuffled (and augmented) afresh for each pass over it, passes numbered from
        `first_pass`; deterministic in (seed, first_pass, skip_batches), so a resumed run
        sees the same batches."""
        n = self.num_examples(split)
        if batch_size > n:
            raise DataError(f"batch size {batch_size} exceeds the {n} examples of {split!r} "
                            f"in {self.builder.info.full_name}")
        per_pass = n // batch_size
        passes = max(1, math.ceil((skip_batches + num_batches) / per_pass))

        def one_pass(index):
            seed = self.seed * 1_000_003 + 7_919 + index
            ds = self._read(split).shuffle(n, seed=seed, reshuffle_each_iteration=False)
            ds = ds.enumerate()
            if augment:
                augment_fn = _augment(tf.constant(seed, tf.int64))
                ds = ds.map(lambda i, ex: augment_fn(i, *ex)[0],
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            else:
                ds = ds.map(lambda i, ex: ex[0])
            return ds.batch(batch_size, drop_remainder=True)

        ds = one_pass(first_pass)
        for index in range(first_pass + 1, first_pass + passes):
            ds = ds.concatenate(one_pass(index))
        return ds.skip(skip_batches).take(num_batches).prefetch(tf.data.AUTOTUNE)

    def eval_dataset(self, split: str, batch_size: int) -> tf.data.Dataset:
        """All of `split` in file order, last batch partial, no augmentation."""
        return (self._read(split).map(self._keep_targets).batch(batch_size)
                .prefetch(tf.data.AUTOTUNE))

    def _keep_targets(self, image, labels):
        return image, {t: labels[t] for t in self.targets}

    def statistics(self, split: str = "train", max_examples: int = 5000) -> Statistics:
        """Target mean/std over the whole split; pixel statistics over a subsample."""
        sums = np.zeros(len(self.targets))
        squares = np.zeros(len(self.targets))
        count = 0
        pixels = []
        for images, labels in self.eval_dataset(split, 256).as_numpy_iterator():
            values = np.stack([labels[t] for t in self.targets], axis=1).astype(np.float64)
            if not np.isfinite(values).all():
                raise DataError(f"{split}: non-finite values in targets {self.targets}")
            sums += values.sum(0)
            squares += (values**2).sum(0)
            count += len(values)
            if sum(len(p) for p in pixels) < max_examples:
                pixels.append(images.astype(np.float64))
        mean = sums / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0))
        std = np.where(std > 0, std, 1.0)  # A constant target: scale 1.
        pix = np.concatenate(pixels)
        median = np.median(pix)
        return Statistics(target_mean=mean.tolist(), target_std=std.tolist(),
                          pixel_mean=float(pix.mean()), pixel_std=float(pix.std()),
                          pixel_noise=float(1.4826 * np.median(np.abs(pix - median))),
                          num_examples=count)
