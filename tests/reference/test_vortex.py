"""The exact-likelihood reference posterior of the axion mass."""

import dataclasses
import math

import numpy as np
import pytest

from deeplense_tf.reference import vortex
from deeplense_tf.simulation import priors, recipes
from deeplense_tf.simulation.simulator import example_rng

from .conftest import small_recipe


@pytest.fixture(scope="module")
def model_ii():
    return vortex.VortexReference(recipes.get("model_ii_axion"))


def test_likelihood_is_the_generators_noise_model_on_its_own_rendering(model_ii):
    """The model image is the simulator's noiseless image, and ln L equals a direct sum of
    Gaussian log densities with the simulator's noise variance."""
    sim = recipes.get("model_ii_axion").simulator()
    lens = sim.simulate(example_rng(3, 2, 7), keep_noiseless=True)
    p = lens.params
    model = model_ii.model_image(p["log10_m_axion"], p["vortex_angle"], p["source_center_x"],
                                 p["source_center_y"])
    np.testing.assert_allclose(model, lens.noiseless, rtol=1e-5, atol=1e-6)
    variance = sim.noise_variance(model, p["exposure_time"])
    d = lens.image.astype(np.float64)
    direct = -0.5 * np.sum((d - model) ** 2 / variance + np.log(2 * math.pi * variance))
    got = model_ii.log_likelihood(lens.image, p["log10_m_axion"], p["vortex_angle"],
                                  p["source_center_x"], p["source_center_y"])
    assert got == pytest.approx(direct, rel=1e-12)


def test_source_centre_integral_matches_direct_quadrature(model_ii):
    """Laplace's method over the source centre against a 2-D grid sum of the likelihood."""
    sim = recipes.get("model_ii_axion").simulator()
    lens = sim.simulate(example_rng(3, 2, 1))
    p = lens.params
    image = lens.image.astype(np.float64)
    rays = model_ii.rays(p["log10_m_axion"], p["vortex_angle"])
    laplace, centre = model_ii.source_marginal(image, rays, np.array([0.0, 0.0]))
    assert np.abs(centre - [p["source_center_x"], p["source_center_y"]]).max() < 2e-3
    half = 8e-4  # ~6 posterior sigmas of the centre at this S/N
    grid = np.linspace(-half, half, 33)
    logs = np.array([[model_ii.log_likelihood_of_model(
        image, model_ii.model_image(0, 0, centre[0] + dx, centre[1] + dy, rays))
        for dx in grid] for dy in grid])
    top = logs.max()
    cell = (grid[1] - grid[0]) ** 2
    direct = top + math.log(np.trapezoid(np.trapezoid(np.exp(logs - top), dx=1.0), dx=1.0) * cell)
    direct -= math.log(0.7 * 0.7)  # the uniform prior's density on the 0.7" x 0.7" box
    assert laplace == pytest.approx(direct, abs=0.02)


def test_noiseless_image_posterior_peaks_at_the_truth(small):
    sim = small_recipe(log10_m_axion=priors.Fixed(-23.0)).simulator(noise=False)
    lens = sim.simulate(example_rng(1, 0, 0))
    posterior = vortex.VortexReference(small).posterior(lens.image)
    _, std = posterior.mean_and_std()
    assert 0 < std < 0.05
    assert abs(posterior.map_log10_m + 23.0) < 0.25 * std
    assert abs(posterior.median + 23.0) < 0.5 * std
    assert abs(posterior.map_angle - lens.params["vortex_angle"]) < 0.05


def test_mode_check_finds_the_truth_beaten_only_when_the_map_is_wrong(small):
    from deeplense_tf.reference import runner

    reference = vortex.VortexReference(small)
    lens = small_recipe().simulator().simulate(example_rng(2, 0, 3))
    p = lens.params
    posterior = reference.posterior(lens.image)
    arrays = runner.stack([runner.summarize(posterior, p["log10_m_axion"], 0)])
    nuisances = {k: np.array([p[k]]) for k in runner.NUISANCES}
    args = (reference, lens.image[None], np.array([p["log10_m_axion"]]), nuisances)
    assert runner.mode_gaps(*args, arrays)[0] < runner.MODE_GAP_NATS
    arrays["map_log10_m"] = arrays["map_log10_m"] + 0.5  # a MAP the quadrature did not find
    assert runner.mode_gaps(*args, arrays)[0] > runner.MODE_GAP_NATS
    with pytest.raises(runner.ReferenceError, match="vortex_angle"):
        runner.mode_gaps(reference, lens.image[None], np.array([p["log10_m_axion"]]),
                         {"source_center_x": nuisances["source_center_x"]}, arrays)


@pytest.mark.slow
def test_intervals_cover_the_truth_at_one_mass_over_noise_draws(small):
    """60 images at log10 m_a = -23 (angle, source centre and noise drawn anew each time):
    the posterior's PIT values are uniform and its 68% intervals hold ~68% of them."""
    from scipy import stats

    reference = vortex.VortexReference(small)
    sim = small_recipe(log10_m_axion=priors.Fixed(-23.0)).simulator()
    pits = np.array([reference.posterior(sim.simulate(example_rng(5, 0, i)).image).cdf(-23.0)[0]
                     for i in range(60)])
    coverage = np.mean(np.abs(pits - 0.5) <= 0.34)
    assert abs(coverage - 0.68) < 3 * math.sqrt(0.68 * 0.32 / 60)
    assert stats.kstest(pits, "uniform").pvalue > 0.01


@pytest.mark.slow
@pytest.mark.parametrize("truth", [-22.6, -23.0])
def test_quadrature_equals_a_dense_grid_in_mass_and_angle(small, truth):
    """Against no adaptivity at all: ln ∫ L dθ on a uniform 48-angle grid at 61 masses
    across the posterior's window (a broad plateau posterior, and a 0.02 dex one)."""
    from scipy.special import logsumexp

    from deeplense_tf.reference import quadrature

    reference = vortex.VortexReference(small)
    lens = small_recipe(log10_m_axion=priors.Fixed(truth)).simulator().simulate(
        example_rng(3, 0, 0))
    posterior = reference.posterior(lens.image)
    inside = posterior.log10_m[posterior.log_density > posterior.log_density.max() - 15]
    masses = np.linspace(max(inside.min() - 0.01, -24.0), min(inside.max() + 0.01, -22.0), 61)
    angles = np.arange(48) * math.pi / 48
    centre = np.array(posterior.map_source_center)
    grid = np.array([[reference.source_marginal(lens.image, reference.rays(m, t), centre)[0]
                      for t in angles] for m in masses])
    dense = quadrature.quantile(masses, logsumexp(grid, axis=1), [0.16, 0.5, 0.84])
    _, std = posterior.mean_and_std()
    np.testing.assert_allclose(posterior.quantile([0.16, 0.5, 0.84]), dense, atol=0.05 * std + 2e-4)


def test_doubling_the_quadrature_barely_moves_the_posterior(small):
    lens = small.simulator().simulate(example_rng(2, 0, 3))
    base = vortex.VortexReference(small).posterior(lens.image)
    fine = vortex.VortexReference(small, vortex.Settings().doubled()).posterior(lens.image)
    _, std = base.mean_and_std()
    np.testing.assert_allclose(fine.quantile([0.16, 0.5, 0.84]), base.quantile([0.16, 0.5, 0.84]),
                               atol=0.1 * std + 1e-3)
    assert fine.evaluations > base.evaluations


@pytest.mark.parametrize("name, words", [
    ("euclid_axion", r"free parameters \['deflector.theta_e ~ Uniform'"),
    ("model_i_axion", r"instrument.exposure_time_s ~ Uniform"),
    ("euclid_cdm", r"substructure classes \['cdm'\]"),
])
def test_recipes_with_other_nuisances_are_refused_by_name(name, words):
    with pytest.raises(vortex.UnsupportedRecipe, match=words):
        vortex.VortexReference(recipes.get(name))


def test_bad_images_are_refused(small):
    reference = vortex.VortexReference(small)
    with pytest.raises(ValueError, match=r"expected shape \(24, 24\)"):
        reference.posterior(np.zeros((64, 64)))
    image = np.zeros((24, 24))
    image[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        reference.posterior(image)


def _run_with(small, log_l):
    """A posterior run on a small-recipe image whose slices are `log_l(m, theta)`."""
    lens = small.simulator().simulate(example_rng(2, 0, 3))
    run = vortex._PosteriorRun(vortex.VortexReference(small), lens.image.astype(np.float64))
    run.slice_value = lambda m, t: float(log_l(m, t))
    return run


def test_tooth_integral_follows_a_ridge_to_its_analytic_marginal(small):
    """A narrow peak sheared along a ridge (as the comb's teeth are): the stratified 2-D
    integral's rows give ln ∫ L dθ / π within Monte Carlo noise of the exact marginal."""
    m0, t0, sm, st, slope = -23.6, 1.0, 3e-4, 2e-4, 1.4

    def log_l(m, t):
        dm, dt = m - m0, (t - t0 + math.pi / 2) % math.pi - math.pi / 2
        return 100.0 - 0.5 * ((dm / sm) ** 2 + ((dt - slope * dm) / st) ** 2)

    run = _run_with(small, log_l)
    run.best = (log_l(m0, t0), m0, t0, run.best[3])
    tooth = run.tooth(m0 + 2e-4, t0 + 3e-4)  # started on the flank
    assert abs(tooth.m_center - m0) < 2e-5 and tooth.peak == pytest.approx(100.0, abs=0.05)
    assert tooth.slope == pytest.approx(slope, rel=0.2)
    exact = (100.0 + math.log(math.sqrt(2 * math.pi) * st / math.pi)
             - 0.5 * ((tooth.rows_m - m0) / sm) ** 2)
    central = np.abs(tooth.rows_m - m0) < 2 * sm
    np.testing.assert_allclose(tooth.rows_value[central], exact[central], atol=0.15)
    lo, hi = tooth.m_range
    assert lo < m0 - 5 * sm and hi > m0 + 5 * sm  # the box holds the whole peak
    assert tooth.holds(m0, t0) and not tooth.holds(m0 + 0.009, t0)


def test_merged_teeth_replace_the_nodes_they_cover_and_overlapping_teeth_add():
    xs = np.linspace(-24.0, -23.0, 11)
    ys = np.zeros(11)

    def tooth(centre, value):
        rows = centre + np.linspace(-0.01, 0.01, 5)
        return vortex.Tooth(m_center=centre, theta_center=0.0, slope=0.0,
                            box=(-0.0125, 0.0125, -1e-3, 1e-3), rows_m=rows,
                            rows_value=np.full(5, value), peak=value, ess=100.0)

    x, y = vortex.merge_teeth(xs, ys, [tooth(-23.5, 5.0)])
    assert np.all(np.diff(x) > 0) and len(x) == 10 + 5  # node -23.5 gave way to 5 rows
    assert np.all(y[np.abs(x + 23.5) <= 0.0125] == 5.0) and np.all(y[np.abs(x + 23.5) > 0.0125] == 0.0)
    x, y = vortex.merge_teeth(xs, ys, [tooth(-23.5, 5.0), tooth(-23.495, 5.0)])
    both = (x >= -23.495 - 0.01) & (x <= -23.5 + 0.01)
    np.testing.assert_allclose(y[both], 5.0 + math.log(2.0))


@pytest.mark.slow
def test_comb_stage_finds_the_truths_tooth_where_the_grids_land_on_an_alias(model_ii):
    """A Model II image at log10 m_a = -23.6 whose quadrature alone integrates an alias
    0.0094 dex from the truth (PIT 1.0): the comb's scan finds the truth's tooth."""
    recipe = recipes.get("model_ii_axion")
    vortex_prior = dict(recipe.substructures)["axion"]
    fixed = dataclasses.replace(recipe, substructures={
        "axion": dataclasses.replace(vortex_prior, log10_m_axion=priors.Fixed(-23.6))})
    lens = fixed.simulator().simulate(example_rng(11, 0, 6))
    alone = vortex.VortexReference(recipe, vortex.Settings(comb_span=0)).posterior(lens.image)
    assert abs(alone.median + 23.6) > 5e-3  # the grids alone settle on the alias
    posterior = model_ii.posterior(lens.image)
    _, std = posterior.mean_and_std()
    assert abs(posterior.median + 23.6) < 5e-4 and std < 1e-3
    assert 0.025 < posterior.cdf(-23.6)[0] < 0.975


def test_tooth_survives_a_top_its_grid_cannot_reproduce(small):
    """A pattern-search top far above every later slice (a source fit that settled
    elsewhere) must not leave the tooth's grid without live cells."""
    m0, t0 = -23.6, 1.0
    calls = {"n": 0}

    def log_l(m, t):
        calls["n"] += 1
        bump = 200.0 if calls["n"] == 1 else 0.0  # only the first slice is that high
        return bump - 0.5 * (((m - m0) / 3e-4) ** 2 + ((t - t0) / 1e-3) ** 2)

    run = _run_with(small, log_l)
    run.best = (200.0, m0, t0, run.best[3])
    tooth = run.tooth(m0, t0)
    assert np.isfinite(tooth.rows_value).any() and abs(tooth.slope) < 1.0
