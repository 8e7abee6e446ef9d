"""Physics of the simulator: numbers checked against formulas, not just shapes."""

import math

import numpy as np
import pytest
from astropy import constants, units
from scipy import integrate

from deeplense_tf.simulation import cosmology, instruments, recipes, substructure
from deeplense_tf.simulation.components import MainDeflector, SersicSource
from deeplense_tf.simulation.priors import Fixed, Uniform
from deeplense_tf.simulation.simulator import LensSimulator, example_rng

GEOMETRY = cosmology.geometry(0.5, 1.0)


def test_point_mass_einstein_radius_matches_analytic_formula():
    """theta_E = sqrt(4 G M / c^2 * D_ls / (D_l D_s)), distances from astropy."""
    cosmo = GEOMETRY.cosmo
    d_l = cosmo.angular_diameter_distance(0.5)
    d_s = cosmo.angular_diameter_distance(1.0)
    d_ls = cosmo.angular_diameter_distance(0.5, 1.0)
    for mass in (1e8, 3e10, 1e12):
        theta = np.sqrt(4 * constants.G * mass * units.M_sun / constants.c**2 * d_ls / (d_l * d_s))
        expected = theta.decompose().value * 180 / np.pi * 3600
        assert GEOMETRY.point_mass_theta_e(mass) == pytest.approx(expected, rel=1e-3)


def _fine_instrument():
    return instruments.Instrument(name="fine", num_pix=160, pixel_scale_arcsec=0.005,
                                  psf_fwhm_arcsec=0.005, background_rms=0.0,
                                  exposure_time_s=Fixed(1e4), magnitude_zero_point=25.0)


def test_simulated_ring_of_a_point_mass_sits_at_its_einstein_radius():
    """A compact source behind a point mass (a vortex far shorter than a pixel) images
    into a ring at the analytic Einstein radius."""
    vortex = substructure.AxionVortex(log10_m_axion=Fixed(-17.0))  # length 6e-7 arcsec
    sim = LensSimulator(_fine_instrument(), MainDeflector(theta_e=Fixed(1e-6), e1=0.0, gamma1=0.0),
                        SersicSource(r_sersic=Fixed(0.005), e1=0.0, e2=0.0, center_x=0.0,
                                     center_y=0.0),
                        {"axion": vortex}, noise=False)
    image = sim.simulate(example_rng(0, 0, 0)).image.astype(np.float64)
    n, scale = image.shape[0], 0.005
    coords = (np.arange(n) + 0.5 - n / 2) * scale
    xx, yy = np.meshgrid(coords, coords)
    radius = np.hypot(xx, yy)
    measured = (radius * image).sum() / image.sum()
    expected = GEOMETRY.point_mass_theta_e(3e10)
    assert measured == pytest.approx(expected, abs=scale)


@pytest.mark.parametrize("log10_m, length", [(-22.0, 0.06), (-23.0, 0.6), (-24.0, 6.0)])
def test_vortex_length_follows_axion_mass(log10_m, length):
    vortex = substructure.AxionVortex(log10_m_axion=Fixed(log10_m))
    real = vortex.draw(np.random.default_rng(1), GEOMETRY)
    assert real.params["vortex_length"] == pytest.approx(length, rel=1e-12)
    assert real.params["log10_m_axion"] == log10_m


def test_closed_form_collinear_sum_equals_summing_the_points():
    x, y = np.meshgrid(np.linspace(-3, 3, 61), np.linspace(-3, 3, 61) + 0.013)
    for length, n in [(6.0, 100), (0.6, 100), (0.06, 100), (1.0, 5)]:
        t = np.linspace(-length / 2, length / 2, n)
        angle, theta_e2 = 0.4, 0.03**2
        direct = substructure.point_mass_deflection(
            x, y, 0.1 + t * math.cos(angle), -0.05 + t * math.sin(angle), np.full(n, theta_e2))
        closed = substructure.collinear_point_mass_deflection(x, y, 0.1, -0.05, angle, length, n,
                                                              theta_e2)
        # Each ray to 1e-6 of its own deflection (the far field's series; the digamma
        # form near the segment is exact to rounding).
        error = np.hypot(closed[0] - direct[0], closed[1] - direct[1])
        assert np.all(error <= 1e-6 * np.hypot(*direct))


def test_mean_subhalo_count_matches_sigma_sub_normalization():
    model = substructure.CDMSubhalos(log10_sigma_sub=Fixed(-1.5), profile="point_mass")
    # Independent expectation: Sigma_sub * area * integral of (m/m0)^-1.9 dm/m0.
    area = math.pi * (3.0 * GEOMETRY.kpc_per_arcsec) ** 2
    integral, _ = integrate.quad(lambda m: (m / 1e8) ** -1.9 / 1e8, 1e8, 1e10)
    expected = 10**-1.5 * area * integral
    assert model.mean_count(10**-1.5, GEOMETRY) == pytest.approx(expected, rel=1e-6)
    rng = np.random.default_rng(7)
    counts = [model.draw(rng, GEOMETRY).params["n_subhalos"] for _ in range(400)]
    # Poisson: the mean of 400 draws has standard error sqrt(expected / 400).
    assert abs(np.mean(counts) - expected) < 4 * math.sqrt(expected / 400)
    assert np.var(counts) == pytest.approx(expected, rel=0.3)


def test_subhalo_masses_follow_the_mass_function():
    rng = np.random.default_rng(3)
    masses = substructure._power_law_masses(rng, 200_000, -1.9, 1e8, 1e10)
    assert masses.min() >= 1e8 and masses.max() <= 1e10
    # Fraction below 1e9 for dN/dm ∝ m^-1.9: (1 - 10^-0.9) / (1 - 100^-0.9).
    expected = (1 - 10**-0.9) / (1 - 100**-0.9)
    assert np.mean(masses < 1e9) == pytest.approx(expected, abs=0.005)


def test_tnfw_total_mass_matches_projected_mass_at_large_radius():
    from lenstronomy.LensModel.Profiles.tnfw import TNFW

    profile = TNFW()
    rs, alpha_rs, tau = 0.02, 0.003, 6.0
    rho0 = profile.alpha2rho0(alpha_rs, rs)
    total = substructure.tnfw_total_mass(rs, rho0, tau)
    assert total == pytest.approx(profile.mass_2d(1e4 * rs, rs, rho0, tau * rs), rel=1e-5)


def test_mean_sheet_removal_leaves_no_net_mass():
    """Far outside the disc, subhalos minus the sheet deflect like zero net mass."""
    for profile in ("point_mass", "tnfw"):
        model = substructure.CDMSubhalos(log10_sigma_sub=Fixed(-0.8), profile=profile)
        real = model.draw(np.random.default_rng(5), GEOMETRY)
        assert real.params["n_subhalos"] > 50
        far = np.array([[40.0, 0.0, -40.0]]), np.array([[0.0, 40.0, 0.0]])
        ax, ay = real.deflection(*far)
        unremoved = substructure.CDMSubhalos(log10_sigma_sub=Fixed(-0.8), profile=profile,
                                             remove_mean_sheet=False)
        bx, by = unremoved.draw(np.random.default_rng(5), GEOMETRY).deflection(*far)
        assert np.abs(np.hypot(ax, ay)).max() < 0.02 * np.abs(np.hypot(bx, by)).min()


def _delta_chi2(a, b, sim, exposure):
    return float(((a - b) ** 2 / sim.noise_variance(b, exposure)).sum())


def test_noise_variance_matches_the_noise_model():
    sim = recipes.get("euclid_axion").simulator()
    lens = sim.simulate(example_rng(11, 0, 0), keep_noiseless=True)
    residual = (lens.image.astype(np.float64) - lens.noiseless)
    variance = sim.noise_variance(lens.noiseless, lens.params["exposure_time"])
    pulls = residual / np.sqrt(variance)
    assert pulls.std() == pytest.approx(1.0, abs=0.05)
    assert abs(pulls.mean()) < 0.05
    # The Poisson part matters: bright pixels are noisier than the background.
    bright = lens.noiseless > np.quantile(lens.noiseless, 0.95)
    assert residual[bright].std() > 1.5 * residual[~bright].std()


def test_same_seed_same_image_bit_for_bit_and_different_seed_differs():
    for name in ("model_ii_axion", "euclid_cdm", "euclid_fdm", "euclid_classes"):
        sim_a, sim_b = recipes.get(name).simulator(), recipes.get(name).simulator()
        for cls in sim_a.class_names:
            a = sim_a.simulate(example_rng(3, 1, 42), substructure=cls)
            b = sim_b.simulate(example_rng(3, 1, 42), substructure=cls)
            assert a.image.tobytes() == b.image.tobytes()
            assert a.params.keys() == b.params.keys()
            c = sim_a.simulate(example_rng(3, 1, 43), substructure=cls)
            assert c.image.tobytes() != a.image.tobytes()


def test_vortex_signal_fades_with_axion_mass_as_measured():
    """PHYSICS.md: Delta chi^2 of the vortex against its m_a -> infinity limit (all mass at
    the centre), Euclid 64 px, is ~3e4 / 2e3 / 1.5e2 / 4 / 0.1 for log10 m_a of
    -23.8 / -23.4 / -23.0 / -22.6 / -22.2."""
    recipe = recipes.get("model_ii_axion")
    limit = substructure.AxionVortex(log10_m_axion=Fixed(-18.0))
    chi2 = []
    for log10_m in (-23.8, -23.4, -23.0, -22.6, -22.2):
        values = []
        for seed in range(3):
            images = []
            for model in (substructure.AxionVortex(log10_m_axion=Fixed(log10_m)), limit):
                sim = LensSimulator("euclid", recipe.deflector, recipe.source, {"axion": model},
                                    noise=False)
                images.append(sim.simulate(example_rng(seed, 0, 0)))
            values.append(_delta_chi2(images[0].image, images[1].image, sim,
                                      images[0].params["exposure_time"]))
        chi2.append(np.median(values))
    assert all(a > b for a, b in zip(chi2, chi2[1:])), chi2
    assert chi2[0] > 3000 and chi2[2] > 30 and chi2[4] < 3, chi2


def test_cdm_signal_grows_with_sigma_sub():
    recipe = recipes.get("euclid_cdm")
    medians = []
    for log10_sigma in (-2.3, -0.7):
        values = []
        for seed in range(5):
            images = []
            for model in (substructure.CDMSubhalos(log10_sigma_sub=Fixed(log10_sigma)),
                          substructure.NoSubstructure()):
                sim = LensSimulator("euclid", recipe.deflector, recipe.source,
                                    {model.name: model}, noise=False)
                images.append(sim.simulate(example_rng(seed, 0, 0)))
            values.append(_delta_chi2(images[0].image, images[1].image, sim,
                                      images[0].params["exposure_time"]))
        medians.append(np.median(values))
    assert medians[1] > 10 * medians[0] and medians[1] > 500, medians


def test_adaptive_vortex_gives_the_same_image():
    recipe = recipes.get("model_ii_axion")
    for log10_m in (-23.0, -22.5):
        images = []
        for adaptive in (False, True):
            model = substructure.AxionVortex(log10_m_axion=Fixed(log10_m), adaptive=adaptive)
            sim = LensSimulator("euclid", recipe.deflector, recipe.source, {"axion": model},
                                noise=False)
            images.append(sim.simulate(example_rng(0, 0, 0)))
        assert images[1].params["vortex_n_points"] < 100
        assert _delta_chi2(images[0].image, images[1].image, sim,
                           images[0].params["exposure_time"]) < 1.0


def test_supersampling_converges():
    recipe = recipes.get("model_ii_axion")
    image = {s: recipe.simulator(noise=False, supersampling=s).simulate(example_rng(0, 0, 0))
             for s in (1, 2, 8)}
    sim = recipe.simulator()
    err = {s: _delta_chi2(image[s].image, image[8].image, sim, image[8].params["exposure_time"])
           for s in (1, 2)}
    assert err[2] < err[1] / 4, err


def test_fdm_granule_size_follows_de_broglie_wavelength():
    m_a = 1e-22 * units.eV / constants.c**2
    expected_kpc = (constants.h / (m_a * 250 * units.km / units.s)).to(units.kpc).value
    assert expected_kpc == pytest.approx(0.48, abs=0.005)  # the number quoted in the literature
    assert GEOMETRY.de_broglie_wavelength_arcsec(1e-22, 250.0) * GEOMETRY.kpc_per_arcsec == \
        pytest.approx(expected_kpc, rel=1e-6)
    model = substructure.FDMGranules()
    x, y = np.meshgrid(np.arange(128) * 0.05, np.arange(128) * 0.05)
    widths = []
    for wavelength in (0.2, 1.6):
        ax, _ = model._field_deflection(x, y, wavelength, np.random.default_rng(0))
        # Correlation of the deflection's gradient (the convergence scale) across pixels.
        g = np.diff(ax, axis=1)
        widths.append(np.corrcoef(g[:, :-4].ravel(), g[:, 4:].ravel())[0, 1])
    assert widths[1] > widths[0] + 0.3, widths
