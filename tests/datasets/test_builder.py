"""Behaviour of the deeplense_lensing builder beyond TFDS's standard test."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import deeplense_tf  # noqa: F401  (registers the builder)
from deeplense_tf import build_dataset
from deeplense_tf.simulation import parallel, recipes


def _examples(builder, split):
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return {ex["image"].numpy().tobytes(): ex for ex in ds}


def _decoded_records(builder, split):
    """Every feature of every record, decoded, in file order."""
    import tensorflow as tf

    out = []
    for path in sorted(builder.data_path.glob(f"*-{split}.tfrecord-*")):
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            out.append({k: features[k].SerializeToString(deterministic=True)
                        for k in sorted(features)})
    return out


def test_same_config_builds_the_same_examples_bit_for_bit(tmp_path):
    """Two builds, in two processes with different worker counts, hold identical examples
    (every feature's bytes, in the same order). The files themselves may differ: protobuf
    serializes the feature map in a per-process order."""
    import subprocess
    import sys

    a = build_dataset.build("model_ii_axion_tiny", str(tmp_path / "a"), num_workers=1)
    subprocess.run([sys.executable, "-m", "deeplense_tf.build_dataset",
                    "--config=model_ii_axion_tiny", f"--data_dir={tmp_path / 'b'}",
                    "--num_workers=2"], check=True, capture_output=True, timeout=600)
    b = build_dataset.make_builder("model_ii_axion_tiny", str(tmp_path / "b"))
    for split in ("train", "validation", "test"):
        first, second = _decoded_records(a, split), _decoded_records(b, split)
        assert len(first) == a.info.splits[split].num_examples
        assert first == second, split


def test_parallel_generation_does_not_change_the_images():
    recipe = recipes.get("euclid_classes")
    serial = list(parallel.simulate_split(recipe, 5, 0, 12, num_workers=1, chunk_size=4))
    spread = list(parallel.simulate_split(recipe, 5, 0, 12, num_workers=2, chunk_size=4))
    assert [i for i, _ in spread] == list(range(12))
    for (_, a), (_, b) in zip(serial, spread):
        assert a.image.tobytes() == b.image.tobytes()
        np.testing.assert_array_equal(list(a.params.values()), list(b.params.values()))
    assert [lens.substructure for _, lens in serial[:3]] == ["no_sub", "cdm", "axion"]


def test_workers_keep_freed_memory_unless_the_user_set_malloc(monkeypatch):
    for key in parallel._WORKER_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    env = parallel._worker_env()
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20) and env["OMP_NUM_THREADS"] == "1"
    from deeplense_tf.benchmarks import simulation as simulation_benchmark

    assert simulation_benchmark.MALLOC_ENV["tuned"] == parallel._WORKER_MALLOC_ENV
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert parallel._worker_env()["MALLOC_TRIM_THRESHOLD_"] == "65536"


def test_splits_are_disjoint_and_carry_targets_and_params(tmp_path):
    builder = build_dataset.build("euclid_classes_tiny", str(tmp_path), num_workers=1)
    seen = {}
    for split in ("train", "validation", "test"):
        examples = _examples(builder, split)
        assert len(examples) == builder.info.splits[split].num_examples
        for key in examples:
            assert key not in seen, f"image in both {seen.get(key)} and {split}"
            seen[key] = split
    ex = next(iter(_examples(builder, "train").values()))
    assert set(ex["params"]) == set(recipes.get("euclid_classes").param_names)
    names = builder.info.features["substructure"].names
    assert names == ["no_sub", "cdm", "axion", "fdm", "wdm", "sidm"]  # new classes appended only


def test_targets_are_top_level_features_matching_params(tmp_path):
    builder = build_dataset.build("euclid_cdm_tiny", str(tmp_path), num_workers=1)
    for ex in builder.as_dataset(split="train").take(5):
        assert ex["log10_sigma_sub"].numpy() == ex["params"]["log10_sigma_sub"].numpy()
        assert -2.5 <= ex["log10_sigma_sub"].numpy() <= -0.5
    assert builder.info.supervised_keys == ("image", "log10_sigma_sub")


def test_sized_configs_load_by_name(tmp_path):
    builder = build_dataset.build("euclid_axion", str(tmp_path), train_size=6, validation_size=2,
                                  test_size=0, seed=9, num_workers=1)
    assert builder.builder_config.name == "euclid_axion__6_2_0_seed9"
    ds = tfds.load("deeplense_lensing/euclid_axion__6_2_0_seed9", data_dir=str(tmp_path),
                   split="train")
    assert len(list(ds)) == 6
    again = tfds.builder_from_directory(str(builder.data_path))
    assert again.info.splits["validation"].num_examples == 2


def test_interrupted_build_is_never_taken_for_a_complete_one(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = parallel._simulate_chunk

    def failing(task):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("killed")
        return original(task)

    monkeypatch.setattr(parallel, "_simulate_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        build_dataset.build("euclid_axion", str(tmp_path), train_size=64, validation_size=0,
                            test_size=0, num_workers=1)
    builder = build_dataset.make_builder("euclid_axion", str(tmp_path), train_size=64,
                                         validation_size=0, test_size=0)
    assert not builder.is_prepared()
    with pytest.raises(Exception, match="could not find data"):
        tfds.load("deeplense_lensing/euclid_axion__64_0_0_seed0", data_dir=str(tmp_path),
                  split="train", download=False)
    monkeypatch.setattr(parallel, "_simulate_chunk", original)
    # Re-running the same command completes the build.
    assert build_dataset.build("euclid_axion", str(tmp_path), train_size=64, validation_size=0,
                               test_size=0, num_workers=1).is_prepared()


@pytest.mark.parametrize("kwargs, words", [
    (dict(config="model_iv_axion"), "expected one of"),
    (dict(config="euclid_axion", train_size=-1), "--train_size: must be >= 0"),
    (dict(config="npy_model_ii", train_size=10), "come from the files"),
])
def test_bad_build_requests_are_named(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        build_dataset.make_builder(data_dir=str(tmp_path), **kwargs)
