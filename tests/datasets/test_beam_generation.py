"""Generating `deeplense_lensing` through Apache Beam: the same examples as the local path,
and bad Beam options refused before anything is simulated."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import deeplense_tf  # noqa: F401  (registers the builder)
from deeplense_tf import build_dataset
from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as dl
from deeplense_tf.simulation import parallel, recipes

# The FnApiRunner is what Beam's DirectRunner runs batch pipelines on; named directly,
# no PrismRunner download is attempted. Two worker processes, so the DoFn is pickled
# and unpickled by name as on a cluster.
TWO_PROCESSES = "runner=FnApiRunner,direct_num_workers=2,direct_running_mode=multi_processing"


def _decoded(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _assert_same(a, b, where=""):
    """Equal nested features, values and dtypes exactly."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where


def test_beam_and_local_builds_hold_the_same_examples(tmp_path):
    """Every decoded example, in file order. TFDS stores no key, but both of its writers
    order a split by a hash of the key, so equal sequences mean the same examples under
    the same keys (the keys themselves are compared in the next test)."""
    pytest.importorskip("apache_beam")
    local = build_dataset.build("euclid_classes_tiny", str(tmp_path / "local"), num_workers=1)
    beam = build_dataset.build("euclid_classes_tiny", str(tmp_path / "beam"),
                               beam_options=TWO_PROCESSES)
    for split in dl.SPLITS:
        assert (beam.info.splits[split].num_examples
                == local.info.splits[split].num_examples == local.builder_config.split_size(split))
        first, second = _decoded(local, split), _decoded(beam, split)
        assert len(first) == len(second)
        for i, (a, b) in enumerate(zip(first, second)):
            _assert_same(a, b, f"{split}[{i}]")
    classes = {ex["substructure"] for ex in _decoded(beam, "train")}
    assert len(classes) == len(recipes.get("euclid_classes").simulator().class_names)


def test_beam_transform_yields_the_local_keys_and_examples():
    beam = pytest.importorskip("apache_beam")
    from apache_beam.testing.util import assert_that, equal_to

    from deeplense_tf.datasets.deeplense_lensing import beam_generation

    recipe, seed, count = recipes.get("euclid_classes"), 3, 11
    split_index = dl.SPLITS.index("validation")

    def fingerprint(key, example):
        return key, example["substructure"], example["image"].tobytes(), tuple(
            (name, value.tobytes()) for name, value in sorted(example["params"].items()))

    local = [fingerprint(*dl.simulated_example(recipe, "validation", index, count, lens))
             for index, lens in parallel.simulate_split(recipe, seed, split_index, count,
                                                        num_workers=1)]
    assert [key for key, *_ in local] == [f"validation_{i:02d}" for i in range(count)]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        examples = pipeline | beam_generation.SimulateSplit("euclid_classes", seed, "validation",
                                                            split_index, count)
        assert_that(examples | beam.MapTuple(fingerprint), equal_to(local))


@pytest.mark.parametrize("options, words", [
    ("runner=NoSuchRunner", r"runner=NoSuchRunner: unknown runner; expected one of .*FnApiRunner"),
    ("runner=nosuch.module.Runner", r"runner=nosuch.module.Runner: cannot be loaded"),
    ("runner=collections.OrderedDict", "not a PipelineRunner"),
    ("direct_num_wrkers=2", r"'direct_num_wrkers': not an Apache Beam option .*did you mean "
                            r"'direct_num_workers'"),
    ("runner=FnApiRunner,flavour=vanilla", "'flavour': not an Apache Beam option"),
    ("runner", r"'runner': needs a value, e.g. runner=VALUE"),
    ("runner=", r"'runner=': empty value"),
    ("=FnApiRunner", "empty name"),
    ("runner=FnApiRunner,,direct_num_workers=2", "empty item"),
    ("--runner=FnApiRunner", "without dashes, as runner=FnApiRunner"),
    ("save_main_session=true", "'save_main_session': a switch that takes no value"),
    ("direct_num_workers=two", "'direct_num_workers': invalid int value: 'two'"),
    ("direct_running_mode=multi_process", "'direct_running_mode': invalid choice"),
])
def test_bad_beam_options_are_named_before_any_work(tmp_path, monkeypatch, options, words):
    pytest.importorskip("apache_beam")

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated despite bad options")

    monkeypatch.setattr(parallel, "simulate_split", no_simulation)
    with pytest.raises(ValueError, match=words):
        build_dataset.build("euclid_axion_tiny", str(tmp_path), beam_options=options)
    assert not list(tmp_path.iterdir())


def test_beam_options_from_tfds_build_are_checked_too(tmp_path):
    """`tfds build --beam_pipeline_options` hands the builder ready PipelineOptions."""
    pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import PipelineOptions

    builder = build_dataset.make_builder("euclid_axion_tiny", str(tmp_path))
    config = tfds.download.DownloadConfig(
        beam_options=PipelineOptions(["--runner=FnApiRunner", "--direct_num_wrkers=2"]))
    with pytest.raises(ValueError, match="did you mean 'direct_num_workers'"):
        builder.download_and_prepare(download_config=config)


@pytest.mark.parametrize("kwargs, words", [
    (dict(config="npy_model_ii"), "Beam generation is for simulation configs"),
    (dict(config="euclid_axion_tiny", num_workers=2), "--num_workers: local generation only"),
    (dict(config="euclid_axion_tiny", beam_options="runner=DataflowRunner"),
     "runner=DataflowRunner(: submitting to Dataflow needs| .*give a gs://)"),
])
def test_beam_requests_the_builder_cannot_serve_are_refused(tmp_path, kwargs, words):
    pytest.importorskip("apache_beam")
    kwargs.setdefault("beam_options", "runner=FnApiRunner")
    with pytest.raises(ValueError, match=words):
        build_dataset.build(data_dir=str(tmp_path), manual_dir=str(tmp_path), **kwargs)


def _without_beam(monkeypatch):
    """As if apache-beam were not installed."""
    from deeplense_tf.datasets import deeplense_lensing

    monkeypatch.setitem(sys.modules, "apache_beam", None)  # import raises ImportError
    monkeypatch.delitem(sys.modules, f"{deeplense_lensing.__name__}.beam_generation",
                        raising=False)
    monkeypatch.delattr(deeplense_lensing, "beam_generation", raising=False)


def test_without_apache_beam_beam_options_say_what_to_install(tmp_path, monkeypatch):
    _without_beam(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install 'deeplense_tf\[beam\]'"):
        build_dataset.build("euclid_axion_tiny", str(tmp_path), beam_options="runner=FnApiRunner")


def test_local_build_needs_no_beam_and_reports_progress(tmp_path, monkeypatch, caplog):
    _without_beam(monkeypatch)
    caplog.set_level("INFO")
    builder = build_dataset.build("euclid_axion", str(tmp_path), train_size=3, validation_size=2,
                                  test_size=0, num_workers=1, progress=True)
    assert builder.info.splits["train"].num_examples == 3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("simulate ")]
    assert [line.split(" in ")[0] for line in lines] == ["simulate train: 3 images",
                                                         "simulate validation: 2 images"]


def test_command_line_refuses_bad_beam_options_at_once(tmp_path):
    pytest.importorskip("apache_beam")
    result = subprocess.run(
        [sys.executable, "-m", "deeplense_tf.build_dataset", "--config=euclid_axion_tiny",
         f"--data_dir={tmp_path}", "--beam_pipeline_options=runner=FnApiRunner,direct_num_wrkers=2"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "did you mean 'direct_num_workers'" in result.stderr
    assert not list(tmp_path.iterdir())
