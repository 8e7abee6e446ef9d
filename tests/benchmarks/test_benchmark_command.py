"""`python -m deeplense_tf.benchmark` end to end on a tiny model: JSON, markdown,
TensorBoard event files and a profiler trace, every row with its fields."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROW_FIELDS = {"key", "model", "variant", "image_size", "xla", "replicas", "params",
              "flops_per_image", "status", "train", "inference"}
TRAIN_FIELDS = {"status", "batch_size", "step_ms", "images_per_s", "compile_s", "first_call_s",
                "peak_rss_mb", "peak_accelerator_mb", "repeats_done"}
INFERENCE_FIELDS = {"status", "batch_size", "latency_ms", "images_per_s", "compile_s", "peak_rss_mb"}


def _tags(run_dir):
    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    command = [sys.executable, "-m", "deeplense_tf.benchmark", f"--output_dir={out}", "--quick",
               "--models=vit", "--image_sizes=64", "--xla=false", "--replicas=1",
               "--train_batch_size=4", "--inference_batch_sizes=1,4", "--scaling_models=vit",
               "--scaling_batch_sizes=1,2", "--scaling_image_sizes=", "--scaling_patch_sizes=",
               "--simulation=false", "--pipeline_train_size=16", "--profile", "--profile_steps=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "benchmark.json") as f:
        return out, json.load(f), done.stdout


def test_every_row_has_its_fields(quick_run):
    _, results, _ = quick_run
    (row,) = results["rows"]
    assert ROW_FIELDS <= set(row) and row["status"] == "ok", row.get("reason")
    assert row["params"] > 0 and row["flops_per_image"] > 0
    assert TRAIN_FIELDS <= set(row["train"]) and row["train"]["images_per_s"] > 0
    assert set(row["inference"]) == {"1", "4"}
    for measured in row["inference"].values():
        assert INFERENCE_FIELDS <= set(measured) and measured["images_per_s"] > 0
    assert row["train"]["peak_rss_mb"] >= row["train"]["rss_before_mb"] > 0
    assert results["machine"]["cores"] >= 1 and results["command"]


def test_scaling_data_chain_and_ratio(quick_run):
    _, results, _ = quick_run
    (sweep,) = results["scaling"]["batch"]
    assert [p["batch_size"] for p in sweep["points"]] == [1, 2]
    assert all(p["status"] == "ok" for p in sweep["points"])
    assert sweep["fit"]["step_ms_per_image"] is not None and results["statements"]
    assert results["scaling"]["image_size"] == [] and results["scaling"]["tokens"] == []
    pipeline = results["data_chain"]["input_pipeline"]["64"]
    assert pipeline["cached_images_per_s"] > 0 and pipeline["from_records_images_per_s"] > 0
    (ratio,) = results["pipeline_to_training"]
    assert ratio["ratio_cached"] == pytest.approx(
        pipeline["cached_images_per_s"] / results["rows"][0]["train"]["images_per_s"])


def test_markdown_tensorboard_and_profile(quick_run):
    out, results, stdout = quick_run
    table = (out / "benchmark.md").read_text()
    assert table.strip() in stdout  # The command prints what it writes.
    for heading in ("## Training", "## Inference", "## Training against the input pipeline",
                    "## Scaling", "## Profile"):
        assert heading in table
    assert "| vit | test | 64 |" in table
    tags = _tags(out / "xla_off-1_replica")
    for tag in ("train/images_per_s/vit-test_64px", "inference/batch_1_latency_ms/vit-test_64px",
                "memory/train_peak_rss_mb/vit-test_64px", "cost/params/vit-test_64px"):
        assert tag in tags
    assert "scaling/batch/vit-test/train_images_per_s" in _tags(out / "scaling")
    assert "data/input_pipeline_cached_images_per_s/64px" in _tags(out / "data_chain")
    assert "report/tables" in _tags(out / "report")
    assert glob.glob(str(out / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
