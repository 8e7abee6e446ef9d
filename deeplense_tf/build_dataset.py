r"""Builds a `deeplense_lensing` data set into TFRecords.

  python -m deeplense_tf.build_dataset --config=euclid_axion --data_dir=DIR \
      [--train_size=N --validation_size=N --test_size=N --seed=S --num_workers=W]
  python -m deeplense_tf.build_dataset --config=npy_model_ii --data_dir=DIR \
      --manual_dir=RELEASED_FILES [--allow_pickle]
  python -m deeplense_tf.build_dataset --list

The data set lands in DIR/deeplense_lensing/CONFIG/VERSION and is read back with
`tfds.load('deeplense_lensing/CONFIG', data_dir=DIR)` after `import deeplense_tf`, or
with `tfds.builder_from_directory(...)` without importing the simulator.
"""

from __future__ import annotations

import dataclasses
import json

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Builder config name (see --list).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write into.")
_TRAIN = flags.DEFINE_integer("train_size", None, "Override the number of training examples.")
_VALIDATION = flags.DEFINE_integer("validation_size", None, "Override the validation size.")
_TEST = flags.DEFINE_integer("test_size", None, "Override the test size.")
_SEED = flags.DEFINE_integer("seed", None, "Override the config's seed.")
_WORKERS = flags.DEFINE_integer("num_workers", None, "Simulation processes (default: all cores).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Released DeepLense files (npy configs).")
_ALLOW_PICKLE = flags.DEFINE_bool(
    "allow_pickle", False, "Load pickled .npy files (runs code from them: trusted files only).")
_LIST = flags.DEFINE_bool("list", False, "List the configs and exit.")


def config_names() -> list[str]:
    from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as dl

    return [c.name for c in dl.Builder.BUILDER_CONFIGS]


def make_builder(config: str, data_dir: str, *, train_size=None, validation_size=None,
                 test_size=None, seed=None, num_workers=None, allow_pickle=False):
    """The builder of `config` with optional split-size and seed overrides."""
    import tensorflow_datasets as tfds

    from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as dl

    configs = {c.name: c for c in dl.Builder.BUILDER_CONFIGS}
    if config not in configs:
        raise ValueError(f"--config: unknown config {config!r}; expected one of {sorted(configs)}")
    overrides = {k: v for k, v in dict(train_size=train_size, validation_size=validation_size,
                                       test_size=test_size, seed=seed).items() if v is not None}
    for key, value in overrides.items():
        if key != "seed" and value < 0:
            raise ValueError(f"--{key}: must be >= 0, got {value}")
    chosen = configs[config]
    if overrides:
        if chosen.npy_model:
            raise ValueError(f"--config={config}: split sizes and seed of an npy import come from "
                             "the files; do not override them")
        sizes = {f"{s}_size": overrides.get(f"{s}_size", chosen.split_size(s)) for s in dl.SPLITS}
        config = dl.sized_config_name(config.split("__")[0], **sizes,
                                      seed=overrides.get("seed", chosen.seed))
    return tfds.builder(f"deeplense_lensing/{config}", data_dir=data_dir,
                        num_workers=num_workers, allow_pickle=allow_pickle)


def build(config: str, data_dir: str, *, manual_dir: str | None = None, **kwargs):
    """Builds (or finds already built) `config` in `data_dir`; returns the builder."""
    import tensorflow_datasets as tfds

    builder = make_builder(config, data_dir, **kwargs)
    if builder.is_prepared():
        return builder
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def summary(builder) -> dict:
    info = builder.info
    return {
        "name": info.full_name,
        "path": str(builder.data_dir),
        "splits": {name: split.num_examples for name, split in info.splits.items()},
        "features": {name: str(feature.shape) for name, feature in info.features.items()
                     if name != "params"},
        "supervised_keys": info.supervised_keys,
    }


def main(argv):
    del argv
    if _LIST.value:
        print("\n".join(config_names()))
        return
    if not _CONFIG.value or not _DATA_DIR.value:
        raise app.UsageError("--config and --data_dir are required (or --list)")
    builder = build(_CONFIG.value, _DATA_DIR.value, manual_dir=_MANUAL_DIR.value,
                    train_size=_TRAIN.value, validation_size=_VALIDATION.value,
                    test_size=_TEST.value, seed=_SEED.value, num_workers=_WORKERS.value,
                    allow_pickle=_ALLOW_PICKLE.value)
    print(json.dumps(summary(builder), indent=2, default=str))


if __name__ == "__main__":
    app.run(main)
