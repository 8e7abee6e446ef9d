"""`deeplense_lensing`: simulated strong-lensing images and the released DeepLense files.

Simulation configs are named after their recipe (see
`deeplense_tf.simulation.recipes`); each has a `_tiny` variant for tests. `npy_model_*`
configs import the released DeepLense `.npy` files from the manual directory.

Build with `python -m deeplense_tf.build_dataset --config=NAME --data_dir=DIR`, or
`tfds.builder('deeplense_lensing/NAME', data_dir=DIR).download_and_prepare()` after
`import deeplense_tf`. TFDS writes into a temporary directory and renames it when the
build completes, so an interrupted build never looks like a prepared data set.

Simulation configs generate in local worker processes by default, or through an
Apache Beam pipeline (Dataflow, Flink, Spark, ...) when the download config carries
Beam options or a runner (`--beam_pipeline_options` of `build_dataset` and of `tfds
build`); both paths write the same examples under the same keys (beam_generation.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from deeplense_tf import deeplense_npy
from deeplense_tf.simulation import parallel, recipes
from deeplense_tf.simulation.substructure import CLASS_NAMES

SPLITS = ("train", "validation", "test")  # Index i seeds split i: disjoint streams.


@dataclasses.dataclass
class LensingConfig(tfds.core.BuilderConfig):
    """A simulation recipe (or a released DeepLense model) with split sizes and seed."""

    recipe: str = ""
    train_size: int = 30_000
    validation_size: int = 5_000
    test_size: int = 5_000
    seed: int = 0
    npy_model: str = ""  # "Model_I", ...: import released files instead of simulating.
    npy_num_pix: int = 0
    fits_instrument: str = ""  # "euclid", "hst": real FITS cut-outs resampled to this grid.

    def split_size(self, split: str) -> int:
        return getattr(self, f"{split}_size")


_SIZED = re.compile(r"^(?P<base>\w+?)__(?P<train>\d+)_(?P<validation>\d+)_(?P<test>\d+)_seed(?P<seed>\d+)$")


def sized_config_name(base: str, train_size: int, validation_size: int, test_size: int,
                      seed: int) -> str:
    """Name of a simulation config with other split sizes or seed, e.g.
    `euclid_axion__2000_500_500_seed0`; `tfds.load` accepts such names too."""
    return f"{base}__{train_size}_{validation_size}_{test_size}_seed{seed}"


def _simulation_configs():
    configs = []
    for name, recipe in recipes.RECIPES.items():
        configs.append(LensingConfig(name=name, recipe=name, description=recipe.description))
        configs.append(LensingConfig(
            name=f"{name}_tiny", recipe=name, train_size=24, validation_size=8, test_size=8,
            seed=1, description=f"Tiny variant of {name} for tests. {recipe.description}"))
    return configs


def _npy_configs():
    models = (("Model_I", 150), ("Model_II", 64), ("Model_III", 64))
    return [LensingConfig(
        name=f"npy_{model.lower()}", npy_model=model, npy_num_pix=num_pix,
        train_size=0, validation_size=0, test_size=0,
        description=f"Released DeepLense {model} files ({num_pix} px): manual_dir/{model}/<class>/"
                    "*.npy for train and validation (every tenth file in the order of a hash of "
                    f"its path) and manual_dir/{model}_test/<class>/*.npy for test.")
        for model, num_pix in models]


# Targets a catalogue of real cut-outs may know (NaN where it does not).
FITS_TARGETS = ("log10_m_axion", "log10_sigma_sub")


def _fits_configs():
    from deeplense_tf.simulation import instruments

    configs = []
    for name in ("euclid", "hst"):
        instrument = instruments.get(name)
        configs.append(LensingConfig(
            name=f"fits_{name}", fits_instrument=name, train_size=0, validation_size=0,
            test_size=0,
            description=f"Real FITS cut-outs from manual_dir resampled onto the {name} grid "
                        f"({instrument.num_pix} px of {instrument.pixel_scale_arcsec}\"), in "
                        "counts/s at its zero point, with a per-pixel noise sigma; names, "
                        "positions, labels and splits from an optional catalogue "
                        "(deeplense_tf.realdata)."))
    return configs


def simulated_example(recipe, split: str, index: int, count: int, lens) -> tuple[str, dict]:
    """The (key, example) pair of simulated example `index` of `count` in `split`, for both
    generation paths. Keys are zero-padded so that they sort in index order."""
    example = {
        "image": lens.image[..., None],
        "substructure": lens.substructure,
        "params": {k: np.float32(v) for k, v in lens.params.items()},
    }
    for target in recipe.targets:
        example[target] = np.float32(lens.params[target])
    return f"{split}_{index:0{len(str(max(count - 1, 0)))}d}", example


def beam_generation():
    """The Beam side of the builder (beam_generation.py), imported only when used."""
    try:
        from deeplense_tf.datasets.deeplense_lensing import beam_generation as module
    except ImportError as err:
        if err.name is None or err.name.split(".")[0] != "apache_beam":
            raise
        raise ImportError("Generating through Apache Beam needs apache-beam: install the beam "
                          "extra: pip install 'deeplense_tf[beam]'") from err
    return module


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for deeplense_lensing."""

    # README.md, CITATIONS.bib and TAGS.txt sit beside this file, wherever it is installed.
    pkg_dir_path = epath.Path(__file__).parent
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: DeepLense Models I-III recipes with their defects fixed, "
                 "randomized Euclid/HST axion, CDM and FDM sets, a classification set, and "
                 "import of the released .npy files.",
    }
    BUILDER_CONFIGS = _simulation_configs() + _npy_configs() + _fits_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Only the `npy_model_*` and `fits_*` configs read the manual directory. npy: put the
    released DeepLense folders there as `Model_II/{axion,cdm,no_sub}/*.npy` and
    `Model_II_test/...` (or the same for Model_I / Model_III). Axion files of the released
    sets are pickled object arrays: building them needs `allow_pickle=True` (see
    deeplense_tf.deeplense_npy). fits: the cut-outs (*.fits, *.fits.gz, in sub-folders
    too) and, optionally, `catalogue.csv` / `catalogue.ecsv` (or `catalogue=PATH`) with
    columns file or name, ra, dec, labels and split (deeplense_tf.realdata.prepare).
    """

    def __init__(self, *, num_workers: int | None = None, allow_pickle: bool = False,
                 catalogue: str | None = None, progress: bool = False, **kwargs):
        """`num_workers`: simulation (or FITS reading) processes (default: all cores);
        `allow_pickle`: whether pickled `.npy` files may be loaded (npy configs only);
        `catalogue`: table of the cut-outs (fits configs only); `progress`: show a bar
        per split over the examples generated locally (`console.Progress`), for a
        command that has turned TFDS's own bars off."""
        self._num_workers = num_workers
        self._allow_pickle = allow_pickle
        self._catalogue = catalogue
        self._progress = progress
        self._beam = False
        super().__init__(**kwargs)

    def download_and_prepare(self, *, download_config=None, **kwargs):
        """Generates through Beam when `download_config` carries Beam options or a runner,
        locally otherwise. TFDS picks the path per split by what `_generate_examples`
        returns (a generator is written by this process, a `beam.PTransform` joins a Beam
        pipeline), so the builder decides here, and the local default needs no
        apache-beam. Beam options are checked here, before anything is simulated."""
        self._beam = download_config is not None and (
            download_config.beam_options is not None or download_config.beam_runner is not None)
        if self._beam:
            config = self.builder_config
            if config.npy_model or config.fits_instrument:
                raise ValueError(
                    f"deeplense_lensing/{config.name}: Beam generation is for simulation "
                    "configs; the npy and fits imports read a manual directory on this "
                    "machine: build them without Beam options")
            if download_config.beam_options is not None:
                self._check_beam_options(download_config.beam_options)
        return super().download_and_prepare(download_config=download_config, **kwargs)

    def _check_beam_options(self, options):
        """Refuses bad options (beam_generation.check_options); a local data_dir with a
        remote runner is an error for Dataflow (its workers cannot reach it) and a warning
        for the others (a cluster may mount one folder everywhere)."""
        values = beam_generation().check_options(options)
        if "://" in str(self.data_dir) or beam_generation().is_local_runner(values):
            return
        where = (f"data_dir={self.data_dir}: the workers of runner={values['runner']} write the "
                 "shards themselves and this process reads their shard lengths back")
        if values["runner"].split(".")[-1].lower().startswith("dataflow"):
            raise ValueError(f"{where}; give a gs:// data_dir")
        logging.warning("%s; unless every worker mounts this folder, use gs://, s3:// or hdfs://",
                        where)

    def _create_builder_config(self, builder_config, version=None, **kwargs):
        """Also accepts `sized_config_name(...)` names: a registered simulation config
        with other split sizes and seed, stored under its own name."""
        if isinstance(builder_config, str) and builder_config not in self.builder_configs:
            match = _SIZED.match(builder_config)
            base = self.builder_configs.get(match["base"]) if match else None
            if base is not None and not base.npy_model:
                builder_config = dataclasses.replace(
                    base, name=builder_config, seed=int(match["seed"]),
                    **{f"{s}_size": int(match[s]) for s in SPLITS},
                    description=f"{base.description} Split sizes and seed: {builder_config}.")
        return super()._create_builder_config(builder_config, version=version, **kwargs)

    @property
    def _recipe(self):
        return recipes.get(self.builder_config.recipe)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config.fits_instrument:
            return self._fits_info()
        if config.npy_model:
            num_pix, targets, params = config.npy_num_pix, ("log10_m_axion",), ()
        else:
            recipe = self._recipe
            num_pix, targets, params = recipe.num_pix, recipe.targets, recipe.param_names
        features = {
            "image": tfds.features.Tensor(shape=(num_pix, num_pix, 1), dtype=np.float32,
                                          encoding=tfds.features.Encoding.ZLIB,
                                          doc="Surface brightness per pixel (image units)."),
            "substructure": tfds.features.ClassLabel(names=CLASS_NAMES),
        }
        for target in targets:
            features[target] = tfds.features.Scalar(dtype=np.float32, doc=f"Target {target}.")
        if params:
            features["params"] = tfds.features.FeaturesDict(
                {name: tfds.features.Scalar(dtype=np.float32) for name in params})
        if config.npy_model:
            features["source_file"] = tfds.features.Text(doc="Path relative to manual_dir.")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", targets[0]) if len(targets) == 1 else None,
            homepage="https://github.com/ML4SCI/DeepLense",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        if config.fits_instrument:
            return self._fits_split_generators(dl_manager.manual_dir)
        if config.npy_model:
            return self._npy_split_generators(dl_manager.manual_dir)
        for split in SPLITS:
            if config.split_size(split) < 0:
                raise ValueError(f"{split}_size: must be >= 0, got {config.split_size(split)}")
        return {split: self._generate_examples(split) for split in SPLITS
                if config.split_size(split) > 0}

    def _generate_examples(self, split):
        """Simulated examples of `split`: a `beam.PTransform` when generating through Beam,
        else a generator over local worker processes (npy configs use `_generate_npy`)."""
        config, recipe = self.builder_config, self._recipe
        count, split_index = config.split_size(split), SPLITS.index(split)
        if self._beam:
            return beam_generation().SimulateSplit(config.recipe, config.seed, split, split_index,
                                                   count)
        lenses = parallel.simulate_split(recipe, config.seed, split_index, count,
                                         num_workers=self._num_workers)
        return self._with_progress(
            (simulated_example(recipe, split, index, count, lens) for index, lens in lenses),
            count, f"simulate {split}", "image")

    def _with_progress(self, examples, total, desc, unit):
        if not self._progress:
            yield from examples
            return
        from deeplense_tf import console

        with console.Progress(total=total, desc=desc, unit=unit) as bar:
            for example in examples:
                yield example
                bar.update()

    def _npy_split_generators(self, manual_dir):
        model = self.builder_config.npy_model
        train_dir, test_dir = epath.Path(manual_dir) / model, epath.Path(manual_dir) / f"{model}_test"
        for folder in (train_dir, test_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"manual_dir: expected the folder {folder} (released DeepLense {model} files "
                    f"as {folder.name}/<class>/*.npy with classes {sorted(set(deeplense_npy.CLASS_ALIASES.values()))})")
        train_files = self._npy_files(train_dir, manual_dir)
        # Every tenth file in the order of a hash of its path: a deterministic ~10%
        # that does not depend on file names sorting by class or index.
        by_hash = sorted(train_files, key=lambda f: (zlib.crc32(f[0].encode()), f[0]))
        validation = {f[0] for f in by_hash[::10]}
        files = {"train": [f for f in train_files if f[0] not in validation],
                 "validation": [f for f in train_files if f[0] in validation],
                 "test": self._npy_files(test_dir, manual_dir)}
        return {split: self._with_progress(self._generate_npy(split_files), len(split_files),
                                           f"import {split}", "file")
                for split, split_files in files.items()}

    @staticmethod
    def _npy_files(folder, manual_dir):
        files = []
        for class_dir in sorted(folder.iterdir()):
            if not class_dir.is_dir():
                continue
            label = deeplense_npy.CLASS_ALIASES.get(class_dir.name.lower())
            if label is None:
                raise ValueError(f"{class_dir}: unknown class folder; expected one of "
                                 f"{sorted(deeplense_npy.CLASS_ALIASES)}")
            for path in sorted(class_dir.glob("*.npy")):
                files.append((str(path.relative_to(manual_dir)), path, label))
        if not files:
            raise FileNotFoundError(f"{folder}: no <class>/*.npy files found")
        return files

    def _generate_npy(self, files):
        num_pix = self.builder_config.npy_num_pix
        for rel, path, label in files:
            with path.open("rb") as fileobj:
                image, log10_m = deeplense_npy.read_example(fileobj, str(path), self._allow_pickle)
            if image.shape != (num_pix, num_pix):
                raise deeplense_npy.NpyFormatError(
                    f"{path}: image of shape {image.shape}, expected ({num_pix}, {num_pix}) for "
                    f"{self.builder_config.npy_model}")
            if label == "axion" and math.isnan(log10_m):
                raise deeplense_npy.NpyFormatError(f"{path}: axion file without a mass label")
            yield rel, {"image": image[..., None], "substructure": label,
                        "log10_m_axion": np.float32(log10_m), "source_file": rel}

    # ----------------------------------------------------------------- real cut-outs

    def _fits_info(self):
        from deeplense_tf.simulation import instruments

        n = instruments.get(self.builder_config.fits_instrument).num_pix
        image = dict(shape=(n, n, 1), dtype=np.float32, encoding=tfds.features.Encoding.ZLIB)
        features = {
            "image": tfds.features.Tensor(**image, doc="Counts/s per pixel at the instrument's "
                                                       "zero point, on its grid."),
            "noise_sigma": tfds.features.Tensor(**image, doc="Per-pixel noise sigma, same unit."),
            "substructure": tfds.features.ClassLabel(names=CLASS_NAMES,
                                                     doc="-1: unknown (real data)"),
            "name": tfds.features.Text(),
            "source_file": tfds.features.Text(doc="Path relative to manual_dir."),
            "ra": tfds.features.Scalar(dtype=np.float64, doc="Lens centre, degrees."),
            "dec": tfds.features.Scalar(dtype=np.float64, doc="Lens centre, degrees."),
            "pixel_scale_in": tfds.features.Scalar(dtype=np.float32,
                                                   doc="Cut-out's own pixel scale, arcsec."),
            "flux_scale": tfds.features.Scalar(dtype=np.float32, doc="File units -> counts/s "
                                                                     "at the instrument's zero point."),
        }
        for target in FITS_TARGETS:
            features[target] = tfds.features.Scalar(dtype=np.float32,
                                                    doc=f"Known {target}, else NaN.")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            homepage="https://github.com/ML4SCI/DeepLense",
            metadata=tfds.core.MetadataDict())

    def _fits_split_generators(self, manual_dir):
        from deeplense_tf.realdata import prepare
        from deeplense_tf.simulation import instruments

        instrument = instruments.get(self.builder_config.fits_instrument)
        manual_dir = epath.Path(manual_dir)
        if not manual_dir.is_dir():
            raise FileNotFoundError(f"manual_dir: expected a folder of FITS cut-outs, got "
                                    f"{manual_dir}")
        catalogue_path = self._catalogue
        if catalogue_path is None:
            for name in ("catalogue.ecsv", "catalogue.csv", "catalogue.fits"):
                if (manual_dir / name).exists():
                    catalogue_path = str(manual_dir / name)
        catalogue = prepare.read_catalogue(catalogue_path, FITS_TARGETS)
        paths = [p for p in prepare.list_fits(str(manual_dir))
                 if not epath.Path(p).name.startswith("catalogue.")]
        workers = self._num_workers or parallel.default_num_workers()
        by_split, skipped = {s: [] for s in SPLITS}, []
        for item in prepare.prepare_many(paths, instrument, catalogue, num_workers=workers):
            if item.error:
                logging.warning("skipped: %s", item.error)
                skipped.append({"file": str(epath.Path(item.path).relative_to(manual_dir)),
                                "reason": item.error})
            else:
                by_split[item.entry.split or "test"].append(item)
        self.info.metadata["skipped"] = skipped
        self.info.metadata["catalogue"] = epath.Path(catalogue_path).name if catalogue_path else None
        if not any(by_split.values()):
            raise ValueError(f"manual_dir={manual_dir}: none of the {len(paths)} FITS files "
                             f"could be used; first reasons: {[s['reason'] for s in skipped[:3]]}")
        return {split: self._with_progress(self._generate_fits(items, manual_dir), len(items),
                                           f"write {split}", "cut-out")
                for split, items in by_split.items() if items}

    def _generate_fits(self, items, manual_dir):
        for item in items:
            p = item.prepared
            rel = str(epath.Path(item.path).relative_to(manual_dir))
            example = {
                "image": p.image[..., None], "noise_sigma": p.noise_sigma[..., None],
                "substructure": -1, "name": item.name, "source_file": rel,
                "ra": p.ra, "dec": p.dec, "pixel_scale_in": np.float32(p.pixel_scale_in),
                "flux_scale": np.float32(p.flux_scale),
            }
            for target in FITS_TARGETS:
                example[target] = np.float32(item.entry.labels.get(target, math.nan))
            yield rel, example

