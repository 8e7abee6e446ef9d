"""`predict`: one row per cut-out from FITS folders, .npy stacks, TFDS splits; shipped,
.keras and SavedModel models; bad files listed with their reason; outputs whole."""

import math
import os

import keras
import numpy as np
import pytest
from astropy.table import Table

from deeplense_tf import export, models, predict
from deeplense_tf.realdata import prepare
from deeplense_tf.simulation import instruments


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = models.build_regressor("resnet18", variant="test", image_shape=(64, 64, 1),
                                   targets=["log10_m_axion"], target_mean=[-23.0],
                                   target_std=[0.6], normalization="asinh", asinh_scale=0.01)
    dense = model.get_layer("head_dense")
    rng = np.random.default_rng(0)
    dense.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in dense.get_weights()])
    path = str(tmp_path_factory.mktemp("model") / "m.keras")
    model.save(path)
    return path


def test_folder_of_cutouts_gives_a_row_each_and_matches_in_memory_predictions(
        euclid_cutouts, model_path):
    table = predict.predict_files(str(euclid_cutouts), model_path, instrument="euclid",
                                  catalogue=str(euclid_cutouts / "catalogue.csv"), num_workers=1)
    assert len(table) == 6
    by_file = {os.path.basename(f): i for i, f in enumerate(table["file"])}
    for bad, words in (("small.fits", "refused rather than padded"),
                       ("broken.fits", "truncated or corrupt FITS file")):
        row = table[by_file[bad]]
        assert row["status"] == "skipped" and words in row["reason"]
        assert math.isnan(row["log10_m_axion"])
    model = keras.saving.load_model(model_path, compile=False)
    euclid = instruments.get("euclid")
    entries = prepare.read_catalogue(str(euclid_cutouts / "catalogue.csv"), ["log10_m_axion"])
    for i in range(4):
        row = table[by_file[f"lens{i}.fits"]]
        assert row["status"] == "ok" and row["name"] == f"J{i:04d}" and row["centre"] == "catalogue"
        item = prepare.prepare_one(str(euclid_cutouts / f"lens{i}.fits"), euclid,
                                   entries[f"lens{i}"])
        direct = model(item.prepared.image[None, ..., None])
        assert row["log10_m_axion"] == pytest.approx(float(direct["log10_m_axion"][0]), rel=1e-5)
        std = float(direct["log10_m_axion_std"][0])
        assert row["log10_m_axion_q84"] - row["log10_m_axion_q16"] == pytest.approx(
            2 * 0.994458 * std, rel=1e-4)
        assert math.isnan(row["ood_score"])  # this model has no OOD score
    assert table[by_file["lens0.fits"]]["true_log10_m_axion"] == pytest.approx(
        entries["lens0"].labels["log10_m_axion"])
    assert math.isnan(table[by_file["lens3.fits"]]["true_log10_m_axion"])


def test_workers_give_the_same_table(euclid_cutouts, model_path):
    one = predict.predict_files(str(euclid_cutouts), model_path, instrument="euclid", num_workers=1)
    two = predict.predict_files([str(p) for p in sorted(euclid_cutouts.glob("*.fits"))] * 3,
                                model_path, instrument="euclid", num_workers=2, batch_size=4)
    assert len(two) == 18
    np.testing.assert_allclose(np.asarray(two["log10_m_axion"][:6], float),
                               np.asarray(one["log10_m_axion"], float), rtol=1e-5)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".fits"])
def test_output_formats_are_written_whole(tmp_path, euclid_cutouts, model_path, suffix):
    table = predict.predict_files(str(euclid_cutouts), model_path, instrument="euclid",
                                  num_workers=1)
    path = str(tmp_path / f"p{suffix}")
    predict.write_table(table, path)
    if suffix == ".parquet":  # astropy reads Parquet only through pandas; pyarrow reads it
        import pyarrow.parquet

        back = pyarrow.parquet.read_table(path).to_pydict()
    else:
        back = Table.read(path)
    assert len(back["name"]) == len(table)
    np.testing.assert_allclose(np.asarray(back["log10_m_axion"], float),
                               np.asarray(table["log10_m_axion"], float), equal_nan=True)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    with pytest.raises(ValueError, match="expected a .csv, .parquet or .fits"):
        predict.write_table(table, str(tmp_path / "p.xlsx"))
    assert not (tmp_path / "p.xlsx").exists()


def test_npy_stacks_and_saved_models_give_the_same_estimates(tmp_path, model_path):
    rng = np.random.default_rng(3)
    images = rng.normal(0.5, 0.2, (5, 64, 64)).astype(np.float32)
    images[2, 10, 10] = np.nan
    from_keras = predict.predict_images(images, model_path)
    assert list(from_keras["status"]) == ["ok", "ok", "skipped", "ok", "ok"]
    assert "NaN or infinite" in from_keras["reason"][2]
    version = export.export_saved_model(model_path, str(tmp_path / "exports"), "axion")
    from_saved = predict.predict_images(images, predict.Predictor(version))
    np.testing.assert_allclose(np.asarray(from_saved["log10_m_axion"], float),
                               np.asarray(from_keras["log10_m_axion"], float), rtol=1e-5,
                               equal_nan=True)


def test_tfds_split_input(tiny_data, model_path):
    images, names, truths = predict._tfds_images("tfds:deeplense_lensing/euclid_axion_tiny/test",
                                                 tiny_data)
    assert images.shape == (8, 64, 64, 1) and names[0] == "test[0]"
    assert truths["log10_m_axion"].shape == (8,) and "theta_e" in truths
    table = predict.predict_images(images, model_path, names=names, truths=truths,
                                   dataset="deeplense_lensing/euclid_axion_tiny")
    assert list(table["status"]) == ["ok"] * 8
    np.testing.assert_allclose(np.asarray(table["true_log10_m_axion"], float),
                               truths["log10_m_axion"])
    assert set(table["dataset"]) == {"deeplense_lensing/euclid_axion_tiny"}
    assert set(table["model"]) == {model_path}
    with pytest.raises(ValueError, match=r"truths\['log10_m_axion'\]: 3 values for 8 images"):
        predict.predict_images(images, model_path, truths={"log10_m_axion": np.zeros(3)})
    with pytest.raises(ValueError, match="no split 'nope'"):
        predict._tfds_images("tfds:deeplense_lensing/euclid_axion_tiny/nope", tiny_data)


def test_model_and_instrument_mistakes_are_named(euclid_cutouts, model_path):
    with pytest.raises(FileNotFoundError, match="nowhere.keras: neither an existing .* nor a shipped model"):
        predict.Predictor("nowhere.keras")
    with pytest.raises(ValueError, match="--instrument: .* does not say which instrument"):
        predict.predict_files(str(euclid_cutouts), model_path)
    with pytest.raises(ValueError, match="trained on 'euclid' images"):
        predict.Predictor("hybrid_model_ii_axion", instrument="hst")
    with pytest.raises(FileNotFoundError, match="no such file, folder"):
        prepare.list_fits(str(euclid_cutouts / "none"))
