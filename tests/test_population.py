"""Population inference on simulated populations with an exactly calibrated estimator:
the posterior of the population parameters must cover the truth at its nominal rate and
shrink as 1/sqrt(N); a biased estimator's bias must show up in the study."""

import json

import numpy as np
import pytest
from astropy.table import Table

from deeplense_tf import population

PRIOR = (-24.0, -22.0)


def _calibrated_lenses(rng, truth, scale=(0.05, 0.3)):
    """Observations x = theta + s eps: under a flat prior on PRIOR the posterior of theta is
    N(x, s) truncated to PRIOR, which is what `infer` assumes of a calibrated model."""
    std = rng.uniform(*scale, size=truth.size)
    return truth + std * rng.standard_normal(truth.size), std


def _population(rng, size, mu, sigma):
    values = []
    while len(values) < size:
        draw = rng.normal(mu, sigma, size)
        values += list(draw[(draw >= PRIOR[0]) & (draw <= PRIOR[1])])
    return np.array(values[:size])


def test_normal_population_posterior_covers_the_truth_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    hits68 = hits95 = 0
    trials = 150
    for _ in range(trials):
        mu = rng.uniform(-23.5, -22.5)
        truth = _population(rng, 40, mu, 0.2)
        mean, std = _calibrated_lenses(rng, truth)
        post = population.infer(mean, std, PRIOR, "normal", mu_points=161, sigma_points=30)["mu"]
        hits68 += post["q16"] <= mu <= post["q84"]
        hits95 += post["q025"] <= mu <= post["q975"]
    # Binomial standard deviation over 150 trials: 0.038 at 68%, 0.018 at 95%.
    assert 0.68 - 0.12 < hits68 / trials < 0.68 + 0.12
    assert hits95 / trials > 0.95 - 0.06


def test_posterior_width_shrinks_as_one_over_sqrt_n():
    rng = np.random.default_rng(1)
    widths = {}
    for size in (25, 400):
        w = []
        for _ in range(8):
            truth = _population(rng, size, -23.0, 0.2)
            mean, std = _calibrated_lenses(rng, truth)
            post = population.infer(mean, std, PRIOR, "normal")["mu"]
            w.append(post["q84"] - post["q16"])
        widths[size] = np.median(w)
    assert widths[25] / widths[400] == pytest.approx(4.0, rel=0.25)


def test_delta_population_recovers_a_shared_value():
    rng = np.random.default_rng(2)
    truth = np.full(200, -22.7)
    mean, std = _calibrated_lenses(rng, truth, scale=(0.2, 0.2))
    post = population.infer(mean, std, PRIOR, "delta")["theta"]
    assert post["q025"] <= -22.7 <= post["q975"]
    assert post["std"] == pytest.approx(0.2 / np.sqrt(200), rel=0.2)


def _table(path, mean, std, truth, model="m.keras", dataset="deeplense_lensing/x"):
    Table({"name": [f"i{k}" for k in range(len(mean))], "model": [model] * len(mean),
           "dataset": [dataset] * len(mean), "status": ["ok"] * len(mean),
           "log10_m_axion": mean, "log10_m_axion_std": std,
           "true_log10_m_axion": truth}).write(str(path), format="ascii.csv")
    return str(path)


def test_study_measures_coverage_and_finds_a_models_bias(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.uniform(*PRIOR, 6000)
    mean, std = _calibrated_lenses(rng, truth, scale=(0.1, 0.1))
    biased = mean + np.where(truth > -23.0, 0.1, 0.0)  # the model is biased above -23
    lenses = population.read_predictions(_table(tmp_path / "p.csv", biased, std, truth),
                                         "log10_m_axion")
    result = population.study(lenses, PRIOR, sizes=(20, 200), num_populations=60,
                              sigma_pop=0.15, num_bins=2, seed=0)
    small, large = result["sizes"]["20"], result["sizes"]["200"]
    assert large["median_half_width"] < small["median_half_width"] / 2.5
    low_bin, high_bin = large["bins"]
    assert abs(low_bin["bias"]) < 3 * low_bin["bias_error"] + 0.01  # unbiased below -23
    assert high_bin["bias"] > 0.05 and high_bin["coverage_68"] < 0.3
    crossover = list(result["bias_dominates_at"].values())
    assert crossover[1] is not None and crossover[1] < 200


def test_cli_writes_results(tmp_path, capsys):
    rng = np.random.default_rng(4)
    truth = rng.uniform(*PRIOR, 3000)
    mean, std = _calibrated_lenses(rng, truth)
    path = _table(tmp_path / "p.csv", mean, std, truth)
    out = tmp_path / "out" / "population.json"
    population.main([f"--predictions={path}", "--target=log10_m_axion", "--prior=-24,-22",
                     f"--output={out}", "--study=20", "--study_populations=10"])
    result = json.loads(out.read_text())
    assert result["inference"]["num_lenses"] == 3000
    assert result["study"]["sizes"]["20"]["populations"] == 10
    assert "68% cov." in capsys.readouterr().out


def test_bad_input_is_named(tmp_path):
    rng = np.random.default_rng(5)
    truth = rng.uniform(*PRIOR, 50)
    mean, std = _calibrated_lenses(rng, truth)
    a = _table(tmp_path / "a.csv", mean, std, truth, model="a.keras")
    b = _table(tmp_path / "b.csv", mean, std, truth, model="b.keras")
    c = _table(tmp_path / "c.csv", mean, std, truth, model="a.keras", dataset="deeplense_lensing/y")
    with pytest.raises(ValueError, match="different models"):
        population.read_predictions([a, b], "log10_m_axion")
    with pytest.raises(ValueError, match="different data sets"):
        population.read_predictions([a, c], "log10_m_axion")
    with pytest.raises(ValueError, match="--target=log10_m_hm: .* has no estimates of it; it "
                                         r"has \['log10_m_axion'\]"):
        population.read_predictions(a, "log10_m_hm")
    with pytest.raises(FileNotFoundError, match="no such file"):
        population.read_predictions(str(tmp_path / "nope.csv"), "log10_m_axion")
    with pytest.raises(ValueError, match="expected LOW < HIGH"):
        population.infer(mean, std, (-22.0, -24.0))
    with pytest.raises(ValueError, match="--population=hier"):
        population.infer(mean, std, PRIOR, "hier")
    assert population.training_prior("hybrid_model_ii_axion", "log10_m_axion") == PRIOR
    with pytest.raises(ValueError, match="no uniform prior on 'theta_e'"):
        population.training_prior("hybrid_model_ii_axion", "theta_e")
    with pytest.raises(ValueError, match="not a shipped model"):
        population.training_prior("a.keras", "log10_m_axion")
    Table({"log10_m_axion": mean}).write(str(tmp_path / "point.csv"), format="ascii.csv")
    with pytest.raises(ValueError, match="no uncertainty"):
        population.read_predictions(str(tmp_path / "point.csv"), "log10_m_axion")
    no_truth = population.Lenses("log10_m_axion", mean, std, None, "a", "x")
    with pytest.raises(ValueError, match="no 'true_log10_m_axion' column"):
        population.study(no_truth, PRIOR)
