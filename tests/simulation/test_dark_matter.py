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


def test_wdm_bad_input_names_what_was_expected():
    with pytest.raises(ValueError, match="non-empty \\(low < high\\)"):
        substructure.WDMSubhalos(log10_m_hm=Uniform(10.0, 7.0))
    with pytest.raises(ValueError, match="mass_function"):
        substructure.WDMSubhalos(mass_function=(4.2, 2.5, 0.2))
    with pytest.raises(ValueError, match="no twin for substructure 'axion'"):
        information.delta_chi2("model_ii_axion", 2)
    with pytest.raises(ValueError, match="mixes classes"):
        information.delta_chi2("euclid_classes", 2)
    with pytest.raises(ValueError, match="is not a parameter"):
        information.delta_chi2("euclid_wdm", 2, target="log10_m_axion")
