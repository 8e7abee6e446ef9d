r"""Builds a `deeplense_lensing` data set into TFRecords.

  python -m deeplense_tf.build_dataset --config=euclid_axion --data_dir=DIR \
      [--train_size=N --validation_size=N --test_size=N --seed=S --num_workers=W]
  python -m deeplense_tf.build_dataset --config=npy_model_ii --data_dir=DIR \
      --manual_dir=RELEASED_FILES [--allow_pickle]
  python -m deeplense_tf.build_dataset --config=fits --instrument=euclid --data_dir=DIR \
      --manual_dir=CUTOUTS [--catalogue=CATALOGUE.csv]
  python -m deeplense_tf.build_dataset --list

The data set lands in DIR/deeplense_lensing/CONFIG/VERSION and is read back with
`tfds.load('deeplense_lensing/CONFIG', data_dir=DIR)` after `import deeplense_tf`, or
with `tfds.builder_from_directory(...)` without importing the simulator.
"""

from __future__ import annotations

import dataclasses
import json

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a program, so that importing `build`, `make_builder` and
    `summary` from here never clashes with another program's flags (e.g. --data_dir)."""
    flags.DEFINE_string("config", None, "Builder config name (see --list).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory to write into.")
    flags.DEFINE_integer("train_size", None, "Override the number of training examples.")
    flags.DEFINE_integer("validation_size", None, "Override the validation size.")
    flags.DEFINE_integer("test_size", None, "Override the test size.")
    flags.DEFINE_integer("seed", None, "Override the config's seed.")
    flags.DEFINE_integer("num_workers", None, "Simulation processes (default: all cores).")
    flags.DEFINE_string("manual_dir", None, "Released DeepLense files (npy configs) or FITS "
                        "cut-outs (fits configs).")
    flags.DEFINE_string("instrument", None, "With --config=fits: the grid to resample onto "
                        "(euclid or hst), i.e. the config fits_<instrument>.")
    flags.DEFINE_string("catalogue", None, "fits configs: CSV/ECSV/FITS table of the cut-outs "
                        "(file or name, ra, dec, labels, split); default manual_dir/catalogue.*")
    flags.DEFINE_bool("allow_pickle", False,
                      "Load pickled .npy files (runs code from them: trusted files only).")
    flags.DEFINE_bool("list", False, "List the configs and exit.")


def config_names() -> list[str]:
    from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as dl

    return [c.name for c in dl.Builder.BUILDER_CONFIGS]


def make_builder(config: str, data_dir: str, *, train_size=None, validation_size=None,
                 test_size=None, seed=None, num_workers=None, allow_pickle=False,
                 instrument=None, catalogue=None):
    """The builder of `config` with optional split-size and seed overrides (`fits` with an
    `instrument` names the config fits_<instrument>)."""
    import tensorflow_datasets as tfds

    from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as dl

    configs = {c.name: c for c in dl.Builder.BUILDER_CONFIGS}
    if config == "fits":
        fits_names = [c for c in configs if c.startswith("fits_")]
        if f"fits_{instrument}" not in configs:
            raise ValueError(f"--config=fits needs --instrument, one of "
                             f"{[c[len('fits_'):] for c in fits_names]}; got {instrument!r}")
        config = f"fits_{instrument}"
    elif instrument is not None:
        raise ValueError(f"--instrument={instrument}: only for --config=fits")
    if catalogue is not None and not (config in configs and configs[config].fits_instrument):
        raise ValueError(f"--catalogue: only for fits configs, not {config!r}")
    if config not in configs:
        raise ValueError(f"--config: unknown config {config!r}; expected one of {sorted(configs)}")
    overrides = {k: v for k, v in dict(train_size=train_size, validation_size=validation_size,
                                       test_size=test_size, seed=seed).items() if v is not None}
    for key, value in overrides.items():
        if key != "seed" and value < 0:
            raise ValueError(f"--{key}: must be >= 0, got {value}")
    chosen = configs[config]
    if overrides:
        if chosen.npy_model or chosen.fits_instrument:
            raise ValueError(f"--config={config}: split sizes and seed of an import come from "
                             "the files; do not override them")
        sizes = {f"{s}_size": overrides.get(f"{s}_size", chosen.split_size(s)) for s in dl.SPLITS}
        config = dl.sized_config_name(config.split("__")[0], **sizes,
                                      seed=overrides.get("seed", chosen.seed))
    extra = {"catalogue": catalogue} if catalogue is not None else {}
    return tfds.builder(f"deeplense_lensing/{config}", data_dir=data_dir,
                        num_workers=num_workers, allow_pickle=allow_pickle, **extra)


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
    if FLAGS.list:
        print("\n".join(config_names()))
        return
    if not FLAGS.config or not FLAGS.data_dir:
        raise app.UsageError("--config and --data_dir are required (or --list)")
    builder = build(FLAGS.config, FLAGS.data_dir, manual_dir=FLAGS.manual_dir,
                    train_size=FLAGS.train_size, validation_size=FLAGS.validation_size,
                    test_size=FLAGS.test_size, seed=FLAGS.seed, num_workers=FLAGS.num_workers,
                    allow_pickle=FLAGS.allow_pickle, instrument=FLAGS.instrument,
                    catalogue=FLAGS.catalogue)
    print(json.dumps(summary(builder), indent=2, default=str))
    skipped = builder.info.metadata.get("skipped") if builder.info.metadata else None
    if skipped:
        print(f"{len(skipped)} file(s) skipped:")
        for entry in skipped:
            print(f"  {entry['file']}: {entry['reason']}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
