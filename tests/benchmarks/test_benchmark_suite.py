"""The benchmark's plan, bookkeeping and fits, without running any model."""

import math

import pytest

from deeplense_tf.benchmarks import scaling, suite


def _config(**kwargs):
    defaults = dict(models=["vit:test"], image_sizes=[64], xla=[False, True], replicas=[1, 2],
                    scaling_models=[], train_batch_size=4, inference_batch_sizes=[1, 4])
    return suite.BenchmarkConfig(**{**defaults, **kwargs}).validate()


def _row(rows, xla, replicas):
    return next(r for r in rows if r["xla"] == xla and r["replicas"] == replicas)


def test_cpu_plan_skips_xla_with_replicas_and_runs_the_default_first():
    cells, rows, sweeps, _ = suite.plan(_config(), num_gpus=0, profile_dir=None)
    assert len(rows) == 4 and len(cells) == 3  # XLA + 2 CPU replicas never starts.
    skipped = _row(rows, True, 2)
    assert skipped["status"] == "skipped" and "XLA" in skipped["reason"]
    assert skipped["train"]["status"] == "skipped" and skipped["train"]["reason"]
    assert all(m["reason"] for m in skipped["inference"].values())
    first = cells[0].spec
    assert first["replicas"] == 1 and first["points"][0]["xla"] is False
    two = _row(rows, False, 2)
    assert {m["reason"] for m in two["inference"].values()} == {suite.INFERENCE_ONE_REPLICA}
    assert sweeps == {"batch": [], "image_size": [], "tokens": []}


def test_gpu_plan_defaults_to_xla_and_needs_a_gpu_per_replica():
    cells, rows, _, _ = suite.plan(_config(), num_gpus=1, profile_dir=None)
    assert cells[0].spec["points"][0]["xla"] is True
    for xla in (False, True):
        assert "need 2 GPUs" in _row(rows, xla, 2)["reason"]


def test_scaling_plan_has_a_sweep_per_kind_and_tokens_only_for_the_vit():
    config = _config(scaling_models=["resnet18:test", "vit:test"], scaling_batch_sizes=[4, 1],
                     scaling_image_sizes=[64, 32], scaling_patch_sizes=[4, 16])
    cells, _, sweeps, _ = suite.plan(config, num_gpus=0, profile_dir=None)
    assert [s["model"] for s in sweeps["batch"]] == ["resnet18", "vit"]
    assert [p["batch_size"] for p in sweeps["batch"][0]["points"]] == [1, 4]
    assert [s["model"] for s in sweeps["tokens"]] == ["vit"]
    assert [p["tokens"] for p in sweeps["tokens"][0]["points"]] == [16, 256]
    resnet_sizes = sweeps["image_size"][0]
    assert all(p["overrides"] == {"stem": "s1"} for p in resnet_sizes["points"])
    sweep_cells = [c for c in cells if c.name.startswith("scaling_")]
    assert len(sweep_cells) == 5 and all(c.spec.get("warmup") for c in sweep_cells)
    # After the default rows and the other XLA setting, before the two-replica rows.
    assert {c.priority for c in sweep_cells} == {3}
    assert [c.priority for c in cells] == sorted(c.priority for c in cells)


@pytest.mark.parametrize("kwargs, match", [
    ({"models": ["resnet50"]}, "resnet18"),
    ({"train_batch_size": 3}, "not divisible"),
    ({"image_sizes": [0]}, "image_sizes"),
])
def test_bad_configs_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _config(**kwargs)


def _outcome(lines, **kwargs):
    return {"lines": lines, "returncode": 0, "timed_out": False, "reason": "", **kwargs}


def test_a_cell_stopped_at_its_limit_keeps_what_it_measured():
    cells, rows, _, _ = suite.plan(_config(xla=[False], replicas=[1]), num_gpus=0, profile_dir=None)
    (cell,), (row,) = cells, rows
    key = row["key"]
    lines = [{"measurement": "process", "import_s": 3.0, "warmup_s": 0.0, "baseline_rss_mb": 500.0,
              "precision": "float32"},
             {"key": key, "measurement": "cost", "status": "ok", "params": 10, "flops_per_image": 20},
             {"key": key, "measurement": "train", "status": "ok", "images_per_s": 5.0}]
    suite._merge(cell, _outcome(lines, returncode=-9, timed_out=True, reason="stopped at 60 s"))
    assert row["params"] == 10 and row["train"]["status"] == "ok"
    assert row["inference"]["1"] == {"batch_size": 1, "status": "skipped", "reason": "stopped at 60 s"}
    assert row["status"] == "partial" and row["reason"] == "stopped at 60 s"
    assert row["process"]["baseline_rss_mb"] == 500.0


def test_a_crashed_cell_is_failed_with_the_reason():
    cells, rows, _, _ = suite.plan(_config(xla=[False], replicas=[1]), num_gpus=0, profile_dir=None)
    suite._merge(cells[0], _outcome([], returncode=-11, reason="process failed (killed by SIGSEGV)"))
    assert rows[0]["status"] == "failed" and "SIGSEGV" in rows[0]["reason"]
    assert rows[0]["train"]["status"] == "failed"


def _sweep(points, label="m"):
    return {"label": label, "points": points}


def _point(x_name, x, images_per_s, flops, peak=600.0, batch=8, **extra):
    train = {"status": "ok", "images_per_s": images_per_s, "seconds_per_call": batch / images_per_s,
             "batch_size": batch, "peak_rss_mb": peak, "rss_before_mb": 500.0}
    return {x_name: x, "flops_per_image": flops, "train": train,
            "process": {"baseline_rss_mb": 500.0}, **extra}


def test_batch_fit_recovers_fixed_and_per_image_cost():
    points = []
    for b in (1, 4, 16, 64):
        step = 0.010 + 0.002 * b
        p = _point("batch_size", b, b / step, 1.0, peak=600 + 3 * b, batch=b)
        points.append(p)
    fit = scaling.fit_batch(_sweep(points))
    assert fit["cost_measure"] == "wall time"  # No CPU times in these points.
    assert fit["step_fixed_ms"] == pytest.approx(10, rel=1e-6)
    assert fit["step_ms_per_image"] == pytest.approx(2, rel=1e-6)
    assert fit["amortizing_batch"] == pytest.approx(50)
    assert fit["peak_rss_mb_per_image"] == pytest.approx(3)
    assert "10 ms + 2.0 ms per image of wall time" in fit["statement"]


def test_growth_fit_states_linear_pixels_and_the_token_crossover():
    pixels = [64**2, 96**2, 150**2]
    linear = [_point("pixels", x, 1e6 / x, 10.0 * x, peak=500 + x / 100) for x in pixels]
    fit = scaling.fit_growth(_sweep(linear), "pixels")
    assert fit["cost_measure"] == "wall time"  # No CPU times in these points.
    assert fit["time_slope"] == pytest.approx(1.0) and fit["flops_slope"] == pytest.approx(1.0)
    assert fit["memory_slope"] == pytest.approx(1.0)
    assert "about linear" in fit["statement"]

    a, b = 2e-4, 1e-6  # Seconds per image: crossover at a / b = 200 tokens.
    tokens = [_point("tokens", n, 1 / (a * n + b * n * n), a * n + b * n * n) for n in (16, 64, 256, 1024)]
    fit = scaling.fit_growth(_sweep(tokens), "tokens")
    assert fit["time_crossover_tokens"] == pytest.approx(200, rel=1e-3)
    assert 1.0 < fit["time_slope"] < 2.0
    assert "N = 200 in wall time" in fit["statement"] and fit["top_time_slope"] > fit["time_slope"]


def test_fits_say_when_too_few_points_were_measured():
    failed = {"tokens": 16, "train": {"status": "skipped", "reason": "time"}}
    assert "too few" in scaling.fit_growth(_sweep([failed]), "tokens")["statement"]
    assert "too few" in scaling.fit_batch(_sweep([failed]))["statement"]
    assert scaling.loglog_slope([1], [1]) is None and not math.isnan(scaling.loglog_slope([1, 2], [1, 4]))


def test_the_flagfile_parses_into_the_full_matrix():
    import pathlib

    from absl import flags

    from deeplense_tf import benchmark

    values = flags.FlagValues()  # Its own: other programs' flags live in flags.FLAGS.
    benchmark.define_flags(values)
    flagfile = pathlib.Path(__file__).resolve().parents[2] / "configs" / "benchmark.cfg"
    values(["benchmark", f"--flagfile={flagfile}", "--output_dir=unused"])
    config = benchmark.config_from_flags(values).validate()
    assert config.models == ["resnet18", "resnet34", "vit", "hybrid"]
    assert config.image_sizes == [64, 150] and config.xla == [False, True]
    assert config.replicas == [1, 2] and config.inference_batch_sizes == [1, 64, 256]
    assert 0 < config.time_budget_s < 600
    cells, rows, _, _ = suite.plan(config, num_gpus=0, profile_dir=None)
    assert len(rows) == 4 * 2 * 2 * 2 and len(cells) == 4 * 2 * 3 + 5
