"""The Beam-against-local benchmark: its start-up fit, and a tiny run of both paths."""

import json

import pytest

from deeplense_tf.benchmarks import beam as beam_benchmark


def test_two_builds_separate_start_up_from_cost_per_image():
    small = {"images": 10, "wall_s": 12.0, "cpu_s": 13.0}
    large = {"images": 110, "wall_s": 22.0, "cpu_s": 33.0}
    fit = beam_benchmark._fit(small, large)
    assert fit["seconds_per_image"] == pytest.approx(0.1)
    assert fit["start_up_s"] == pytest.approx(11.0)
    assert fit["cpu_s_per_image"] == pytest.approx(0.2)
    assert fit["start_up_cpu_s"] == pytest.approx(11.0)


@pytest.mark.slow
def test_tiny_run_times_both_paths_and_writes_json(tmp_path):
    pytest.importorskip("apache_beam")
    output = tmp_path / "beam.json"
    results = beam_benchmark.run(num_images=6, small_images=3, repeats=1, output=str(output))
    saved = json.loads(output.read_text())
    assert saved["num_images"] == 6 and saved["machine"]["cores"] >= 1
    for path in ("local", "beam"):
        assert saved[path]["images_per_s"] > 0 and len(saved[path]["runs"]) == 1
        assert saved[path]["runs"][0]["cpu_s"] > 0
    assert saved["ratio_beam_to_local"] > 0
    assert "| Beam, runner=FnApiRunner" in beam_benchmark.markdown(results)
