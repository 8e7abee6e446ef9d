"""The simulation benchmark at tiny sizes: it runs every part and writes valid JSON."""

import json

import pytest

from deeplense_tf.benchmarks import simulation


def test_cases_cover_every_class_on_64_and_150_pixels():
    rows = {(c.recipe.num_pix, c.substructure) for c in simulation.cases()}
    for num_pix in (64, 150):
        for name in ("no_sub", "cdm_tnfw", "cdm_point_mass", "cdm_deeplense", "axion_vortex", "fdm"):
            assert (num_pix, name) in rows


def test_tiny_run_writes_json_with_every_part(tmp_path):
    output = tmp_path / "results.json"
    # Splits of at most one chunk (32) build in process: only the generation part
    # starts worker processes.
    results = simulation.run(
        str(output), images=8, repeats=1, block_seconds=0.02, case_names=["euclid/no_sub"],
        num_workers=2, malloc_variants=("tuned",), build_sizes=(32, 8, 8),
        calibration_sizes=(8, 4, 4), profile_train_size=8, work_dir=str(tmp_path / "work"))
    saved = json.loads(output.read_text())
    assert saved["machine"]["cores"] >= 1 and saved["command"]

    (row,) = saved["generation"]
    assert row["case"] == "euclid/no_sub" and row["num_pix"] == 64 and row["malloc"] == "tuned"
    assert len(row["one_core_blocks"]) == 2 and len(row["all_cores_blocks"]) == 2
    for key in ("one_core_images_per_s", "all_cores_images_per_s", "speedup"):
        assert row[key] > 0, key
    assert row["one_core_cpu_ms_per_image"] >= 0 and "idle_machine_speedup" in row

    build = saved["build"]
    assert build["malloc"] == "tuned"  # what build_dataset's workers get
    assert build["main"]["images"] == 48 and build["calibration"]["images"] == 16
    assert build["main"]["config"] == "euclid_axion__32_8_8_seed0"
    # Tiny builds are too noisy for the linear fit to be meaningful, not to be written.
    assert build["proportional_full_s"] > 0 and build["main"]["bytes_per_image"] > 64 * 64
    assert saved["main_process"]["encode_ms_per_example"] > 0
    parts = saved["profile"]["parts_s"]
    assert "simulating in process (num_workers=1)" in parts
    assert sum(parts.values()) == pytest.approx(saved["profile"]["seconds"], rel=1e-6)

    read = saved["read"]
    assert read["images"] == 32
    assert all(p["images_per_s"] > 0 for p in read["pipelines"].values())
    assert len(read["pipelines"]) == 10
    assert 0.5 < read["zlib_size_ratio"] <= 1.01
    assert saved["main_process"]["encode_image_bytes_ms_per_example"] > 0

    table = simulation.markdown(results)
    assert "| euclid | 64 | no_sub |" in table and "Read-back of 32 images" in table


def test_unknown_names_say_what_was_expected():
    with pytest.raises(ValueError, match="euclid/axion_vortex"):
        simulation.run(None, case_names=["euclid/axion"], skip_build=True)
    with pytest.raises(ValueError, match="tuned"):
        simulation.run(None, malloc_variants=("fast",), skip_build=True)


def test_tuned_malloc_reaches_spawned_processes_only_meanwhile():
    import multiprocessing
    import os

    from deeplense_tf.simulation import parallel

    with parallel.environment(simulation.MALLOC_ENV["tuned"]):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seen = pool.apply(os.getenv, ("MALLOC_TRIM_THRESHOLD_",))
    assert seen == simulation.MALLOC_ENV["tuned"]["MALLOC_TRIM_THRESHOLD_"]
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
