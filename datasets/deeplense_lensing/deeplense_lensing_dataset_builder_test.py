"""TFDS's standard builder test over every tiny simulation config, the npy import and the
FITS import."""

import tensorflow_datasets as tfds
from etils import epath

from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as builder
from deeplense_tf.simulation import real_sources

_DUMMY = epath.Path(builder.__file__).parent / "dummy_data"


class SimulatedConfigsTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [c.name for c in builder.Builder.BUILDER_CONFIGS
                                    if c.name.endswith("_tiny")]
    SPLITS = {"train": 24, "validation": 8, "test": 8}
    EXAMPLE_DIR = _DUMMY
    SKIP_CHECKSUMS = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The real-source configs cut their galaxies from scikit-image's Hubble Deep Field
        # file: read it (cached) before each test forbids opening files.
        real_sources.hdf_catalogue()


class NpyImportTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["npy_model_ii"]
    SPLITS = {"train": 13, "validation": 2, "test": 3}
    EXAMPLE_DIR = _DUMMY
    SKIP_CHECKSUMS = True


class FitsImportTest(tfds.testing.DatasetBuilderTestCase):
    """Two Euclid-style cut-outs (dummy_data/fits, written by deeplense_tf.realdata.mock)."""

    DATASET_CLASS = builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["fits_euclid"]
    SPLITS = {"test": 2}
    EXAMPLE_DIR = _DUMMY
    SKIP_CHECKSUMS = True


if __name__ == "__main__":
    tfds.testing.test_main()
