"""Reference runs over a split: chunks, resuming, corrupt chunks, the floor's metrics,
and `evaluate --reference`."""

import json
import os

import numpy as np
import pytest

from deeplense_tf.reference import runner
from deeplense_tf.simulation.simulator import example_rng


def _images(recipe, n):
    sim = recipe.simulator()
    lenses = [sim.simulate(example_rng(9, 2, i)) for i in range(n)]
    return (np.stack([lens.image for lens in lenses]),
            np.array([lens.params["log10_m_axion"] for lens in lenses], np.float32))


def test_chunks_resume_and_a_corrupt_chunk_is_named_not_dropped(small, tmp_path):
    images, truths = _images(small, 3)
    out = str(tmp_path / "ref")
    logs = []
    first = runner.run(small, images, truths, out, dataset="d", split="test", chunk_size=1,
                       log=logs.append)
    assert first["count"] == 3 and "0 done before, 3 to go" in logs[0]
    assert sorted(os.listdir(os.path.join(out, "chunks"))) == [
        "chunk_000000_000001.npz", "chunk_000001_000002.npz", "chunk_000002_000003.npz"]
    stored = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert stored["floor_mae"] == pytest.approx(first["floor_mae"])
    assert (tmp_path / "ref" / "report.md").exists() and (tmp_path / "ref" / "reference.png").exists()

    bad = tmp_path / "ref" / "chunks" / "chunk_000001_000002.npz"
    bad.write_bytes(bad.read_bytes()[:100])  # a truncated file
    with pytest.raises(runner.ReferenceError, match="chunk_000001_000002.npz: a corrupt"):
        runner.run(small, images, truths, out, dataset="d", split="test", chunk_size=1)
    assert len(os.listdir(os.path.join(out, "chunks"))) == 3  # nothing deleted
    bad.unlink()
    logs = []
    again = runner.run(small, images, truths, out, dataset="d", split="test", chunk_size=1,
                       log=logs.append)
    assert "2 done before, 1 to go" in logs[0]
    assert again["floor_mae"] == pytest.approx(first["floor_mae"], abs=1e-12)


def test_another_runs_directory_and_bad_arguments_are_refused(small, tmp_path):
    images, truths = _images(small, 1)
    out = str(tmp_path / "ref")
    runner.run(small, images, truths, out, dataset="d", split="test", chunk_size=1)
    with pytest.raises(runner.ReferenceError, match=r"holds a run of other \['chunk_size'\]"):
        runner.run(small, images, truths, out, dataset="d", split="test", chunk_size=2)
    with pytest.raises(runner.ReferenceError, match="another run"):
        runner.read_chunk(os.path.join(out, "chunks", "chunk_000000_000001.npz"), 0, 1,
                          truths + 0.5)
    with pytest.raises(runner.ReferenceError, match="same, non-zero length"):
        runner.run(small, images, truths[:0], str(tmp_path / "x"), dataset="d", split="test")
    with pytest.raises(runner.ReferenceError, match="not finished"):
        runner.load(str(tmp_path / "nowhere"))


def test_floor_metrics_follow_their_definitions():
    rng = np.random.default_rng(0)
    n = 4000
    truth = rng.uniform(-24, -22, n)
    median = truth + rng.normal(0, 0.1, n)
    arrays = {"truth": truth, "median": median, "mean": median, "std": np.full(n, 0.1),
              "pit": rng.uniform(0, 1, n), "cpu_seconds": np.ones(n), "evaluations": np.ones(n)}
    m = runner.metrics(arrays)
    assert m["floor_mae"] == pytest.approx(np.mean(np.abs(median - truth)))
    assert m["coverage_68"] == pytest.approx(0.68, abs=0.03)
    assert m["coverage_95"] == pytest.approx(0.95, abs=0.015)
    assert abs(m["coverage_95"] - 0.95) < 1.5 * m["coverage_binomial_2sigma_95"]
    np.testing.assert_allclose(m["calibration"]["empirical"], m["calibration"]["nominal"], atol=0.03)
    assert sum(b["count"] for b in m["binned"]) == n
    assert sum(m["pit_histogram"]) == n and m["pit_ks_pvalue"] > 0.01
    # PITs pulled toward 0.5: a posterior too wide for its truths.
    too_wide = runner.metrics(dict(arrays, pit=0.5 + 0.8 * (arrays["pit"] - 0.5)))
    assert too_wide["pit_ks_pvalue"] < 1e-6 and too_wide["pit_histogram"][0] == 0


def test_coverage_is_nominal_by_posterior_median_where_by_truth_it_is_not():
    # Exact posteriors of a toy with a plateau: below -23 the image pins the mass (sigma
    # 0.01, the posterior a Gaussian cut at -24 and -23); above, it only says "above
    # -23", so the posterior is flat on [-23, -22].
    from scipy.stats import norm
    rng = np.random.default_rng(1)
    n = 8000
    truth = rng.uniform(-24, -22, n)
    plateau = truth >= -23
    observed = truth + rng.normal(0, 0.01, n)
    sharp = ~plateau
    lo, hi = norm.cdf(-24, observed[sharp], 0.01), norm.cdf(-23, observed[sharp], 0.01)
    median, pit = np.full(n, -22.5), truth + 23
    median[sharp] = norm.ppf(lo + (hi - lo) / 2, observed[sharp], 0.01)
    pit[sharp] = (norm.cdf(truth[sharp], observed[sharp], 0.01) - lo) / (hi - lo)
    arrays = {"truth": truth, "median": median, "mean": median, "std": np.full(n, 0.1),
              "pit": pit, "cpu_seconds": np.ones(n), "evaluations": np.ones(n)}
    m = runner.metrics(arrays)
    assert m["coverage_68"] == pytest.approx(0.68, abs=0.02)
    by_truth = {r["low"]: r for r in m["binned"]}
    assert by_truth[-22.2]["coverage_68"] < 0.3  # a plateau's end: mostly outside
    assert by_truth[-22.6]["coverage_68"] > 0.95  # its middle: always inside
    rows = [r for r in m["coverage_by_posterior_median"] if r["count"]]
    assert sum(r["count"] for r in rows) == n
    for r in rows:
        assert abs(r["coverage_68"] - 0.68) < 1.5 * r["binomial_2sigma_68"], r
        assert abs(r["coverage_95"] - 0.95) < 0.03, r


def test_mode_check_counts_missed_modes_and_bounds_the_floor():
    n = 10
    truth = np.linspace(-23.9, -22.1, n)
    median = truth + 0.1
    arrays = {"truth": truth, "median": median, "mean": median, "std": np.full(n, 0.1),
              "pit": np.full(n, 0.5), "cpu_seconds": np.ones(n), "evaluations": np.ones(n),
              "mode_gap": np.where(np.arange(n) < 3, 200.0, -2.0)}
    m = runner.metrics(arrays)
    assert m["mode_missed"] == pytest.approx(0.3)
    assert m["floor_mae_lower_bound"] == pytest.approx(0.07)
    assert m["floor_mae"] == pytest.approx(0.1)
    assert m["binned"][0]["mode_missed"] == 1.0 and m["binned"][-1]["mode_missed"] == 0.0
    assert "mode_missed" not in runner.metrics({k: v for k, v in arrays.items()
                                                if k != "mode_gap"})


def test_recipe_names_of_configs():
    assert runner.recipe_of_config("model_ii_axion") == "model_ii_axion"
    assert runner.recipe_of_config("model_ii_axion_tiny") == "model_ii_axion"
    assert runner.recipe_of_config("model_iii_axion__100_10_10_seed3") == "model_iii_axion"


@pytest.fixture(scope="module")
def model_ii_tiny(tmp_path_factory):
    from deeplense_tf import build_dataset

    data_dir = tmp_path_factory.mktemp("data")
    build_dataset.build("model_ii_axion_tiny", str(data_dir), num_workers=1)
    return str(data_dir)


@pytest.mark.slow
def test_evaluate_sets_a_model_beside_the_floor(model_ii_tiny, tmp_path):
    from deeplense_tf import evaluate, models
    from deeplense_tf.reference import __main__ as cli
    from deeplense_tf.simulation import recipes

    dataset = "deeplense_lensing/model_ii_axion_tiny"
    with pytest.raises(runner.ReferenceError, match="--split=nope: not in"):
        cli.read_split(model_ii_tiny, dataset, "nope", 2)
    images, truths, recipe, nuisances = cli.read_split(model_ii_tiny, dataset, "test", 2)
    assert images.shape == (2, 64, 64) and recipe == "model_ii_axion"
    assert sorted(nuisances) == sorted(runner.NUISANCES)
    ref_dir = str(tmp_path / "ref")
    summary = runner.run(recipes.get(recipe), images, truths, ref_dir, dataset=dataset,
                         split="test", nuisances=nuisances)
    # The true nuisances reach the mode check: one finite gap per image.
    with np.load(os.path.join(ref_dir, "posteriors.npz")) as data:
        assert data["mode_gap"].shape == (2,) and np.isfinite(data["mode_gap"]).all()
    assert summary["mode_missed"] in (0.0, 0.5, 1.0)

    model = models.build_regressor("resnet18", variant="test", image_shape=(64, 64, 1),
                                   targets=["log10_m_axion"], target_mean=[-23.0],
                                   target_std=[0.6])
    results = evaluate.evaluate(model, model_ii_tiny, dataset, reference=ref_dir)
    ref = results["targets"]["log10_m_axion"]["reference"]
    assert ref["count"] == 2
    assert ref["model_mae"] == pytest.approx(np.mean(np.abs(-23.0 - truths)), abs=1e-4)
    assert sum(r["count"] for r in ref["binned"]) == 2
    evaluate.write_report(results, str(tmp_path / "eval"), "untrained")
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "Against the information floor" in text
    assert (tmp_path / "eval" / "log10_m_axion_floor.png").exists()

    # A reference of other images (the data set rebuilt differently) is refused.
    with np.load(os.path.join(ref_dir, "posteriors.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["truth"] = arrays["truth"] + 0.25
    np.savez(os.path.join(ref_dir, "posteriors.npz"), **arrays)
    with pytest.raises(ValueError, match="targets differ"):
        evaluate.evaluate(model, model_ii_tiny, dataset, reference=ref_dir)
    with pytest.raises(ValueError, match="not log10_m_axion on .* 'validation'"):
        evaluate.evaluate(model, model_ii_tiny, dataset, split="validation", reference=ref_dir)


def test_simulated_calibration_images_and_restricted_prior(small, tmp_path):
    """Fresh images with their truths and nuisances; a restricted prior is the posterior's
    prior too; priors outside the recipe's are refused."""
    narrow = runner.restrict_prior(small, -23.1, -22.9)
    images, truths, nuisances = runner.simulate_images(narrow, 3, seed=4)
    assert images.shape == (3, 24, 24) and images.dtype == np.float32
    assert np.all((truths >= -23.1) & (truths <= -22.9))
    assert set(nuisances) == set(runner.NUISANCES) and len(nuisances["vortex_angle"]) == 3
    again, truths_again, _ = runner.simulate_images(narrow, 3, seed=4)
    np.testing.assert_array_equal(again, images)  # reproducible: resuming re-simulates them
    np.testing.assert_array_equal(truths_again, truths)
    assert not np.array_equal(runner.simulate_images(narrow, 1, seed=5)[0][0], images[0])
    summary = runner.run(narrow, images, truths, str(tmp_path / "sbc"), dataset="simulated",
                         split="seed 4", chunk_size=3, nuisances=nuisances)
    assert summary["count"] == 3
    post = np.load(tmp_path / "sbc" / "posteriors.npz")
    assert post["nodes"][0][0] == pytest.approx(-23.1) and np.nanmax(post["nodes"]) == pytest.approx(-22.9)
    for low, high in ((-22.9, -23.1), (-25.0, -23.0), (-23.0, float("nan"))):
        with pytest.raises(runner.ReferenceError, match="expected low < high inside"):
            runner.restrict_prior(small, low, high)


def test_chunks_stored_with_fewer_node_columns_are_padded(small, tmp_path):
    """A chunk written when fewer posterior nodes were stored per image still joins a run."""
    images, truths = _images(small, 1)
    out = tmp_path / "ref"
    runner.run(small, images, truths, str(out), dataset="d", split="test", chunk_size=1)
    path = out / "chunks" / "chunk_000000_000001.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["nodes"], arrays["log_density"] = arrays["nodes"][:, :512], arrays["log_density"][:, :512]
    np.savez(path, **arrays)
    chunk = runner.read_chunk(str(path), 0, 1, truths)
    assert chunk["nodes"].shape == (1, runner.MAX_NODES) and np.isnan(chunk["nodes"][0, 512:]).all()
    again = runner.run(small, images, truths, str(out), dataset="d", split="test", chunk_size=1)
    assert again["count"] == 1
