"""The `fits_*` configs of `deeplense_lensing`: real cut-outs as a TFDS data set that
`eda`, `evaluate` and the input pipeline read like the simulated ones."""

import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deeplense_tf import build_dataset, evaluate, input_pipeline, models
from deeplense_tf.realdata import prepare
from deeplense_tf.simulation import instruments


@pytest.fixture(scope="module")
def fits_data(euclid_cutouts, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("fitsdata"))
    build_dataset.build("fits", data_dir, manual_dir=str(euclid_cutouts), instrument="euclid",
                        num_workers=1)
    return data_dir


def test_cutouts_become_examples_and_bad_files_are_listed(fits_data, euclid_cutouts):
    builder = input_pipeline.load_builder(fits_data, "deeplense_lensing/fits_euclid")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2, "test": 2}
    skipped = {s["file"]: s["reason"] for s in builder.info.metadata["skipped"]}
    assert set(skipped) == {"small.fits", "broken.fits"}
    assert builder.info.metadata["catalogue"] == "catalogue.csv"
    entries = prepare.read_catalogue(str(euclid_cutouts / "catalogue.csv"), ["log10_m_axion"])
    euclid = instruments.get("euclid")
    examples = list(tfds.as_numpy(builder.as_dataset(split="test")))
    for ex in examples:
        stem = ex["source_file"].decode().removesuffix(".fits")
        item = prepare.prepare_one(str(euclid_cutouts / f"{stem}.fits"), euclid, entries[stem])
        np.testing.assert_array_equal(ex["image"][..., 0], item.prepared.image)
        assert ex["name"].decode() == entries[stem].name and ex["substructure"] == -1
        assert ex["ra"] == pytest.approx(entries[stem].ra) and ex["pixel_scale_in"] == pytest.approx(0.1)
        assert math.isnan(ex["log10_sigma_sub"])
    labels = sorted(float(ex["log10_m_axion"]) for ex in examples)
    assert math.isnan(labels[-1]) or math.isnan(labels[0])  # lens3 has no label


def test_evaluate_and_eda_read_it_unchanged(fits_data, tmp_path):
    from deeplense_tf import eda

    model = models.build_regressor("resnet18", variant="test", image_shape=(64, 64, 1),
                                   targets=["log10_m_axion"], target_mean=[-23.0],
                                   target_std=[0.6])
    results = evaluate.evaluate(model, fits_data, "deeplense_lensing/fits_euclid")
    report = results["targets"]["log10_m_axion"]
    assert report["model"]["count"] == 1 and report["unlabelled_examples"] == 1
    summary = eda.run(fits_data, "deeplense_lensing/fits_euclid", str(tmp_path / "eda"),
                      split="train", departure_samples=0)
    assert "unknown" in summary["splits"]["train"]["per_class"]


def test_config_and_flag_mistakes_are_named(tmp_path):
    with pytest.raises(ValueError, match="--config=fits needs --instrument"):
        build_dataset.make_builder("fits", str(tmp_path))
    with pytest.raises(ValueError, match="--instrument=euclid: only for --config=fits"):
        build_dataset.make_builder("model_ii_axion", str(tmp_path), instrument="euclid")
    with pytest.raises(ValueError, match="--catalogue: only for fits configs"):
        build_dataset.make_builder("model_ii_axion", str(tmp_path), catalogue="c.csv")
