"""Importing released DeepLense .npy files: every layout, pickle opt-in, bad files."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deeplense_tf import build_dataset, deeplense_npy

RNG = np.random.default_rng(0)


def _image(shape=(64, 64)):
    return RNG.random(shape).astype(np.float32)


def _save(path, array, allow_pickle=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=allow_pickle)


def _object_pair(image, mass):
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = image, mass
    return pair


def _read(array, allow_pickle=True):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    buffer.seek(0)
    return deeplense_npy.read_example(buffer, "x.npy", allow_pickle=allow_pickle)


@pytest.mark.parametrize("make, log10_m", [
    (lambda img: _object_pair(img, 1e-23), -23.0),
    (lambda img: img, None),
    (lambda img: img[None], None),
    (lambda img: img[..., None], None),
    (lambda img: np.array({"image": img, "mass": 10**-22.5}, dtype=object), -22.5),
    (lambda img: np.array((img, 10**-23.5), dtype=[("image", "f4", img.shape), ("mass", "f8")]),
     -23.5),
    (lambda img: _object_pair(img, -22.2), -22.2),  # log10 stored already
])
def test_every_layout_reads_the_same_image(make, log10_m):
    image = _image()
    read, mass = _read(make(image))
    np.testing.assert_array_equal(read, image)
    if log10_m is None:
        assert np.isnan(mass)
    else:
        assert mass == pytest.approx(log10_m)


def test_pickled_layouts_need_an_explicit_opt_in():
    with pytest.raises(deeplense_npy.NpyFormatError, match="allow_pickle=True"):
        _read(_object_pair(_image(), 1e-23), allow_pickle=False)


@pytest.mark.parametrize("array, words", [
    (np.zeros((3, 64, 64), np.float32), "2-D numeric image"),
    (np.array(["a", "b"]), "2-D numeric image"),
    (np.full((64, 64), np.nan, np.float32), "NaN"),
])
def test_malformed_arrays_are_named(array, words):
    with pytest.raises(deeplense_npy.NpyFormatError, match=f"x.npy: .*{words}"):
        _read(array)


def test_implausible_mass_label_is_named():
    with pytest.raises(deeplense_npy.NpyFormatError, match="mass label 3.0"):
        _read(_object_pair(_image(), 3.0))


def _release(root, per_class=4, pickled_axion=True):
    for folder, n in (("Model_II", per_class), ("Model_II_test", 2)):
        for i in range(n):
            _save(root / folder / "no_sub" / f"{i}.npy", _image())
            _save(root / folder / "cdm" / f"{i}.npy", _image()[None])
            mass = 10 ** RNG.uniform(-24, -22)
            if pickled_axion:
                _save(root / folder / "axion" / f"{i}.npy", _object_pair(_image(), mass), True)
            else:
                _save(root / folder / "axion" / f"{i}.npy",
                      np.array((_image(), mass), dtype=[("image", "f4", (64, 64)), ("mass", "f8")]))


def test_release_with_pickled_axion_files_builds_only_when_allowed(tmp_path):
    _release(tmp_path / "manual")
    with pytest.raises(deeplense_npy.NpyFormatError, match="axion/0.npy: refusing to load"):
        build_dataset.build("npy_model_ii", str(tmp_path / "data"),
                            manual_dir=str(tmp_path / "manual"))
    builder = build_dataset.build("npy_model_ii", str(tmp_path / "data"),
                                  manual_dir=str(tmp_path / "manual"), allow_pickle=True)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    assert splits["train"] + splits["validation"] == 12 and splits["test"] == 6
    labels = builder.info.features["substructure"]
    for ex in builder.as_dataset(split="test"):
        name = labels.int2str(int(ex["substructure"]))
        assert np.isnan(ex["log10_m_axion"].numpy()) == (name != "axion")
        assert name in ex["source_file"].numpy().decode()


def test_truncated_file_stops_the_build_naming_it_and_leaves_nothing_complete(tmp_path):
    _release(tmp_path / "manual", pickled_axion=False)
    bad = tmp_path / "manual" / "Model_II" / "cdm" / "2.npy"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(deeplense_npy.NpyFormatError, match="cdm/2.npy: truncated or corrupt"):
        build_dataset.build("npy_model_ii", str(tmp_path / "data"),
                            manual_dir=str(tmp_path / "manual"))
    assert not build_dataset.make_builder("npy_model_ii", str(tmp_path / "data")).is_prepared()


def test_wrong_image_size_and_unknown_class_folder_are_named(tmp_path):
    _release(tmp_path / "manual", pickled_axion=False)
    _save(tmp_path / "manual" / "Model_II" / "cdm" / "big.npy", _image((150, 150)))
    with pytest.raises(ValueError, match=r"big.npy: image of shape \(150, 150\), expected \(64, 64\)"):
        build_dataset.build("npy_model_ii", str(tmp_path / "d1"), manual_dir=str(tmp_path / "manual"))
    (tmp_path / "manual" / "Model_II" / "cdm" / "big.npy").unlink()
    _save(tmp_path / "manual" / "Model_II" / "wimp" / "0.npy", _image())
    with pytest.raises(ValueError, match="wimp: unknown class folder"):
        build_dataset.build("npy_model_ii", str(tmp_path / "d2"), manual_dir=str(tmp_path / "manual"))


def test_missing_manual_directory_is_named(tmp_path):
    with pytest.raises(Exception, match="Model_II"):
        build_dataset.build("npy_model_ii", str(tmp_path / "data"),
                            manual_dir=str(tmp_path / "nowhere"))
