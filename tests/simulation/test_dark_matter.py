"""Warm dark matter and the vectorized truncated-NFW deflection, each against an
independent computation (lenstronomy's profile, the published formulas, direct
integration of the thinned mass function)."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import integrate

from deeplense_tf.simulation import cosmology, information, recipes, substructure
from deeplense_tf.simulation.priors import Fixed, Uniform
from deeplense_tf.simulation.simulator import LensSimulator, example_rng


def test_tnfw_deflection_equals_lenstronomy_profile_by_profile():
    from lenstronomy.LensModel.Profiles.tnfw import TNFW

    rng = np.random.default_rng(3)
    sub = (np.arange(96) + 0.5) / 2 - 24
    x, y = np.meshgrid(sub * 0.1, sub * 0.1)
    m = 40
    xs, ys = rng.uniform(-2, 2, m), rng.uniform(-2, 2, m)
    rs = 10 ** rng.uniform(-2.5, -0.5, m)
    alpha_rs = 10 ** rng.uniform(-4, -2, m)
    r_trunc = rs * rng.uniform(2, 20, m)
    xs[0], ys[0] = x[7, 9], y[7, 9]  # a halo exactly on a ray
    xs[1], ys[1] = x[20, 20] + rs[1], y[20, 20]  # a ray exactly at R = rs (F's branch point)
    ax, ay = substructure.tnfw_deflection(x, y, xs, ys, rs, alpha_rs, r_trunc)
    bx, by = np.zeros_like(x), np.zeros_like(y)
    for i in range(m):
        dax, day = TNFW().derivatives(x, y, rs[i], alpha_rs[i], r_trunc[i], xs[i], ys[i])
        bx += dax
        by += day
    scale = np.abs(bx).max()
    assert np.all(np.isfinite(ax)) and np.all(np.isfinite(ay))
    np.testing.assert_allclose(ax, bx, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(ay, by, rtol=0, atol=1e-10 * scale)


def test_tnfw_deflection_far_away_is_that_of_its_total_mass():
    rs, alpha_rs, tau = 0.05, 2e-3, 6.0
    r = np.array([[200.0, 400.0]])
    ax, _ = substructure.tnfw_deflection(r, np.zeros_like(r), [0.0], [0.0], [rs], [alpha_rs],
                                         [tau * rs])
    rho0 = alpha_rs / (4 * rs**2 * (1 + math.log(0.5)))
    total = substructure.tnfw_total_mass(rs, rho0, tau)
    np.testing.assert_allclose(ax, total / (math.pi * r), rtol=1e-3)


def test_wdm_suppression_formulas_match_the_published_ones():
    # Lovell et al. 2020 at m = m_hm: (1 + 4.2^2.5)^-0.2; Bose et al. 2016 at m = m_hm.
    assert substructure.wdm_mass_function_suppression(1e8, 1e8) == pytest.approx(
        (1 + 4.2**2.5) ** -0.2, rel=1e-12)
    assert substructure.wdm_concentration_suppression(1e9, 1e8) == pytest.approx(
        (1 + 6.0) ** -0.17, rel=1e-12)
    m = np.logspace(6, 11, 50)
    s = substructure.wdm_mass_function_suppression(m, 1e9)
    assert np.all(np.diff(s) > 0) and s[-1] > 0.99 and s[0] < 0.02  # (4200^2.5)^-0.2 = 0.015
    # pyHalo's thermal-relic relation: 2.32 keV at m_hm = 1e9, Omega_m = 0.25, h = 0.7.
    assert substructure.thermal_relic_mass_kev(1e9, 0.25, 0.7) == pytest.approx(2.32)
    assert substructure.thermal_relic_mass_kev(1e8, 0.25, 0.7) == pytest.approx(2.32 * 10**0.3)


def _expected_survival(model, m_hm):
    p = model.slope

    def weight(m):
        return m**p

    kept = integrate.quad(lambda m: weight(m) * substructure.wdm_mass_function_suppression(m, m_hm),
                          model.m_min, model.m_max, limit=200)[0]
    return kept / integrate.quad(weight, model.m_min, model.m_max)[0]


@pytest.mark.parametrize("log10_m_hm", [8.0, 9.5])
def test_wdm_population_is_the_cdm_one_thinned_at_the_published_rate(log10_m_hm):
    geometry = cosmology.geometry()
    model = substructure.WDMSubhalos(log10_m_hm=Fixed(log10_m_hm), profile="point_mass")
    kept = total = 0
    for i in range(300):
        params = model.draw(np.random.default_rng(i), geometry).params
        kept += params["n_subhalos"]
        total += params["n_subhalos_cdm"]
        assert params["m_wdm_kev"] == pytest.approx(float(
            substructure.thermal_relic_mass_kev(10**log10_m_hm, 0.3, 0.7)))
    expected = _expected_survival(model, 10**log10_m_hm)
    binomial_sigma = math.sqrt(expected * (1 - expected) / total)
    assert abs(kept / total - expected) < 4 * binomial_sigma, (kept / total, expected)


def test_wdm_twin_shares_every_draw_but_the_suppression():
    recipe = recipes.get("euclid_wdm")
    model = recipe.substructures["wdm"]
    twin = information.twin_of(model)
    sim, twin_sim = (LensSimulator(recipe.instrument, recipe.deflector, recipe.source, {"wdm": m},
                                   noise=False) for m in (model, twin))
    a = sim.simulate(example_rng(5, 2, 1))
    b = twin_sim.simulate(example_rng(5, 2, 1))
    for key in ("theta_e", "source_center_x", "log10_m_hm", "n_subhalos_cdm", "exposure_time"):
        assert a.params[key] == b.params[key]
    assert b.params["n_subhalos"] == b.params["n_subhalos_cdm"] >= a.params["n_subhalos"]
    # The no-suppression limit: WDM with a tiny half-mode mass renders the CDM twin.
    light = dataclasses.replace(model, log10_m_hm=Fixed(3.0))
    c, d = (LensSimulator(recipe.instrument, recipe.deflector, recipe.source, {"wdm": m},
                          noise=False).simulate(example_rng(5, 2, 1))
            for m in (light, information.twin_of(light)))
    # (concentrations differ by (1 + 60e3/1e8)^-0.17 - 1 ~ 1e-4 at the smallest subhalo)
    np.testing.assert_allclose(c.image, d.image, rtol=2e-4, atol=1e-9)
    assert c.params["n_subhalos"] == d.params["n_subhalos"]


def test_information_grows_with_the_half_mode_mass():
    rows = information.delta_chi2("euclid_wdm", 24, seed=1)
    x = np.array([r["log10_m_hm"] for r in rows])
    d = np.array([r["delta_chi2"] for r in rows])
    assert np.all(d >= 0)
    assert np.median(d[x > 9.5]) > 10 * np.median(d[x < 8.0])
    bins = information.binned(rows, "log10_m_hm", num_bins=3)
    assert sum(b["count"] for b in bins) == 24


def test_binned_delta_chi2_keeps_smooth_differences_and_never_gains():
    """Binning loses nothing on a difference that is constant within blocks (in units of
    a uniform variance), loses everything on one that alternates pixel by pixel, and is
    never above the unbinned value (Cauchy-Schwarz)."""
    variance = np.full((8, 8), 2.0)
    smooth = np.kron(np.arange(16.0).reshape(4, 4), np.ones((2, 2)))
    full = float((smooth ** 2 / variance).sum())
    assert information.binned_delta_chi2(smooth, variance, 1) == pytest.approx(full)
    assert information.binned_delta_chi2(smooth, variance, 2) == pytest.approx(full)
    checker = np.indices((8, 8)).sum(axis=0) % 2 * 2.0 - 1.0
    assert information.binned_delta_chi2(checker, variance, 2) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        diff, var = rng.normal(size=(8, 8)), rng.uniform(0.5, 2.0, (8, 8))
        assert information.binned_delta_chi2(diff, var, 2) <= (diff ** 2 / var).sum() + 1e-12
    with pytest.raises(ValueError, match="dividing the 8x8 image, got 3"):
        information.binned_delta_chi2(smooth, variance, 3)


def test_wdm_bad_input_names_what_was_expected():
    with pytest.raises(ValueError, match="non-empty \\(low < high\\)"):
        substructure.WDMSubhalos(log10_m_hm=Uniform(10.0, 7.0))
    with pytest.raises(ValueError, match="mass_function"):
        substructure.WDMSubhalos(mass_function=(4.2, 2.5, 0.2))
    with pytest.raises(ValueError, match="no twin for substructure 'fdm'"):
        information.delta_chi2("euclid_fdm", 2)
    with pytest.raises(ValueError, match="mixes classes"):
        information.delta_chi2("euclid_classes", 2)
    with pytest.raises(ValueError, match="is not a parameter"):
        information.delta_chi2("euclid_wdm", 2, target="log10_m_axion")
    with pytest.raises(ValueError, match="dividing the recipe's 64 px, got 3"):
        information.delta_chi2("euclid_wdm", 2, binning=3)


# ------------------------------------------------------------------------------ SIDM


def test_sidm_collapse_time_matches_the_published_formula_in_si_units():
    from astropy import constants, units as u

    rho_s = 8.6e6 * u.Msun / u.kpc**3
    r_s = 1.87 * u.kpc
    sigma_over_m = 10 * u.cm**2 / u.g
    expected = (150 / 0.75 / (sigma_over_m * rho_s * r_s)
                / np.sqrt(4 * np.pi * constants.G * rho_s)).to(u.Gyr).value
    got = substructure.sidm_collapse_time_gyr(8.6e6, 1.87, 10.0)
    assert got == pytest.approx(expected, rel=1e-4)
    # A hundred times the cross-section collapses a hundred times sooner.
    assert substructure.sidm_collapse_time_gyr(8.6e6, 1.87, 1000.0) == pytest.approx(got / 100)


def test_sidm_profile_evolution_starts_at_nfw_and_ends_collapsed():
    rs, rc = substructure.sidm_profile_evolution(np.array([0.0, 0.2, 1.0, 5.0]))
    assert rs[0] == pytest.approx(1.0) and rc[0] == 0.0
    assert 0.2 < rc[1] < 0.23  # the largest core, ~0.22 r_s
    assert rs[2] == pytest.approx(0.5170, abs=1e-3) and rc[2] == pytest.approx(0.0397, abs=1e-3)
    assert rs[3] == rs[2] and rc[3] == rc[2]  # capped at t_c, where the fit ends


def test_tnfwc_halo_keeps_its_total_mass_and_deflects_as_its_projected_mass():
    from lenstronomy.LensModel.Profiles.nfw_core_truncated import TNFWC

    rs, rc, rt, total = 0.2, 0.05, 1.2, 3e-3
    (kwargs,) = substructure.tnfwc_profiles([rs], [rc], [rt], [total])
    profile = TNFWC()
    rho0 = profile.alpha2rho0(kwargs["alpha_Rs"], rs, rc, rt)
    # Total mass: 4 pi r^2 rho(r) integrated over all space.
    mass_3d = integrate.quad(lambda r: 4 * np.pi * r**2 * profile.density(r, rs, rho0, rc, rt),
                             0, np.inf, limit=400)[0]
    assert mass_3d == pytest.approx(total, rel=1e-3)
    # Deflection at R = the projected mass inside R over pi R (Sigma_crit, arcsec units).
    for radius in (0.03, 0.3, 2.0):
        sigma = lambda r: 2 * integrate.quad(  # noqa: E731
            lambda z: profile.density(np.hypot(r, z), rs, rho0, rc, rt), 0, np.inf, limit=200)[0]
        inside = integrate.quad(lambda r: 2 * np.pi * r * sigma(r), 0, radius, limit=200)[0]
        ax, _ = substructure.tnfwc_deflection(np.array([radius]), np.array([0.0]), [0.0], [0.0],
                                              [kwargs])
        assert ax[0] == pytest.approx(inside / (np.pi * radius), rel=2e-3)


def test_sidm_twin_shares_the_draws_and_the_signal_grows_with_the_cross_section():
    model = substructure.SIDMSubhalos()
    geometry = cosmology.geometry()
    a = model.draw(np.random.default_rng(4), geometry)
    b = information.twin_of(model).draw(np.random.default_rng(4), geometry)
    assert a.params["n_subhalos"] == b.params["n_subhalos"]
    assert b.params["sidm_core_ratio_median"] == 0.0 < a.params["sidm_core_ratio_median"]
    first, again = (information.delta_chi2("euclid_sidm", 1, seed=3)[0] for _ in range(2))
    assert first["delta_chi2"] == again["delta_chi2"]  # reproducible from the seed
    rows = information.delta_chi2("euclid_sidm", 16, seed=2)
    x = np.array([r["log10_sigma_over_m"] for r in rows])
    d = np.array([r["delta_chi2"] for r in rows])
    assert np.median(d[x > 2]) > 3 * np.median(d[x < 1])


def test_sidm_bad_input_names_what_was_expected():
    with pytest.raises(ValueError, match="cores need extended halos"):
        substructure.SIDMSubhalos(profile="point_mass")
    with pytest.raises(ValueError, match="must exceed the lens redshift 0.5"):
        substructure.SIDMSubhalos(formation_redshift=0.3).age_gyr(cosmology.geometry())


def test_tnfwc_deflection_equals_lenstronomy():
    from lenstronomy.LensModel.Profiles.nfw_core_truncated import TNFWC

    rng = np.random.default_rng(6)
    sub = (np.arange(64) + 0.5) / 2 - 16
    x, y = np.meshgrid(sub * 0.1, sub * 0.1)
    rs = 10 ** rng.uniform(-2, -0.5, 12)
    kwargs = substructure.tnfwc_profiles(rs, rs * rng.uniform(0.01, 0.3, 12),
                                         rs * rng.uniform(3, 20, 12), 10 ** rng.uniform(-4, -2, 12))
    xs, ys = rng.uniform(-1.5, 1.5, 12), rng.uniform(-1.5, 1.5, 12)
    xs[0], ys[0] = x[5, 5], y[5, 5]
    ax, ay = substructure.tnfwc_deflection(x, y, xs, ys, kwargs)
    bx, by = np.zeros_like(x), np.zeros_like(y)
    for cx, cy, kw in zip(xs, ys, kwargs):
        dax, day = TNFWC().derivatives(x, y, center_x=cx, center_y=cy, **kw)
        bx += dax
        by += day
    scale = np.abs(bx).max()
    np.testing.assert_allclose(ax, bx, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(ay, by, rtol=0, atol=1e-9 * scale)


def test_axion_twin_is_the_compact_limit_and_reproduces_physics_md():
    # PHYSICS.md: Delta chi^2 against the m_a -> infinity limit falls from ~3e4 at -23.8 to
    # ~0.1 at -22.2 (noise-free Euclid 64 px).
    rows = information.delta_chi2("model_ii_axion", 30, seed=0)
    x = np.array([r["log10_m_axion"] for r in rows])
    d = np.array([r["delta_chi2"] for r in rows])
    assert np.median(d[x < -23.5]) > 3e3
    assert np.median(d[x > -22.4]) < 5


def test_hst_point_mass_population_draws_the_truncated_nfw_sets_lenses():
    # The point-mass HST set exists to train a backbone for hst_cdm_population: example i
    # must be the same lens, source and subhalo draw, only the subhalo profile differs.
    point, tnfw = (recipes.get(n) for n in ("hst_cdm_population_point_mass", "hst_cdm_population"))
    assert point.targets == tnfw.targets == ("log10_sigma_sub", "shmf_slope")
    assert point.substructures["cdm"].profile == "point_mass"
    assert tnfw.substructures["cdm"].profile == "tnfw"
    a, b = (LensSimulator(r.instrument, r.deflector, r.source, r.substructures, noise=False)
            .simulate(example_rng(3, 0, 2)) for r in (point, tnfw))
    assert a.image.shape == b.image.shape == (150, 150)
    assert a.params == b.params
    assert a.params["n_subhalos"] > 0
    assert not np.allclose(a.image, b.image, rtol=1e-4, atol=1e-6)


def test_refit_absorbs_a_change_of_the_smooth_model_and_not_subhalos():
    recipe = recipes.get("euclid_cdm_point_mass")
    (name, model), = recipe.substructures.items()
    twin = LensSimulator(recipe.instrument, recipe.deflector, recipe.source,
                         {name: information.twin_of(model)}, noise=False)
    lens = twin.simulate(example_rng(4, 2, 0))
    p = dict(lens.params)
    # The same smooth model with a 1% larger Einstein radius and a shifted source: a large
    # Delta chi^2 against the twin, nothing once the lens and source are refitted.
    q = dict(p, theta_e=p["theta_e"] * 1.01, source_center_x=p["source_center_x"] + 0.01)
    x, y = twin.ray_grid
    ax, ay = twin.macro_deflection({k: q[k] for k in recipe.deflector.sample(np.random.default_rng(0))})
    image = twin.render(x - ax, y - ay, {k: q[k] for k in recipe.source.sample(np.random.default_rng(0))})
    variance = twin.noise_variance(lens.image.astype(np.float64), p["exposure_time"])
    plain = float(((image - lens.image) ** 2 / variance).sum())
    chi2, fitted = information.refit_macro_model(twin, image, p, variance)
    assert plain > 100
    assert chi2 < 1e-6 * plain
    assert fitted["theta_e"] == pytest.approx(q["theta_e"], rel=1e-6)
    # Subhalos are not a smooth model: part of their Delta chi^2 survives the refit.
    rows = information.delta_chi2("euclid_cdm_point_mass", 2, seed=1, refit=True,
                                  refit_max_nfev=30)
    for row in rows:
        assert 0 < row["delta_chi2_refit"] <= row["delta_chi2"]
    assert max(r["delta_chi2_refit"] for r in rows) > 1


def test_refit_holds_the_twins_substructure_fixed():
    # WDM's twin is the full CDM population: refitted with those subhalos held fixed, the
    # twin's own image is fitted exactly at the true values; the smooth model alone (the
    # CDM twin's case) cannot fit it, so without them the refit would count the CDM
    # subhalos as WDM's signal.
    recipe = recipes.get("euclid_wdm_point_mass")
    (name, model), = recipe.substructures.items()
    twin = LensSimulator(recipe.instrument, recipe.deflector, recipe.source,
                         {name: information.twin_of(model)}, noise=False)
    lens = twin.simulate(example_rng(5, 2, 0), keep_deflection=True)
    assert lens.params["n_subhalos"] > 0
    image = lens.image.astype(np.float64)
    variance = twin.noise_variance(image, lens.params["exposure_time"])
    held, _ = information.refit_macro_model(twin, image, lens.params, variance, max_nfev=5,
                                            fixed_deflection=lens.substructure_deflection)
    smooth, _ = information.refit_macro_model(twin, image, lens.params, variance, max_nfev=5)
    assert held < 1e-6
    assert smooth > 1
    # Through delta_chi2 (no clipping there): the refit starts at the twin, so it never
    # ends above the plain Delta chi^2; it would for WDM if the subhalos were dropped.
    rows = information.delta_chi2("euclid_wdm_point_mass", 2, seed=1, refit=True,
                                  refit_max_nfev=20)
    for row in rows:
        assert 0 <= row["delta_chi2_refit"] <= row["delta_chi2"]


def test_refit_refuses_recipes_it_does_not_model():
    with pytest.raises(ValueError, match="refit: recipe 'euclid_axion_lens_light' has realism"):
        information.delta_chi2("euclid_axion_lens_light", 1, refit=True)
