"""Shared pytest configuration and fixtures."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """DIR holding deeplense_lensing/euclid_axion_tiny (24 train, 8 validation, 8 test)."""
    from deeplense_tf import build_dataset

    data_dir = tmp_path_factory.mktemp("data")
    build_dataset.build("euclid_axion_tiny", str(data_dir), num_workers=1)
    return str(data_dir)


@pytest.fixture(autouse=True)
def _absl_verbosity_at_info():
    """Every test starts at absl's default verbosity (INFO), whatever an earlier test's
    command set: tests read the log lines our commands write at INFO."""
    from absl import logging as absl_logging

    saved = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    yield
    absl_logging.set_verbosity(saved)
