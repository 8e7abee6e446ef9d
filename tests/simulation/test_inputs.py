"""Bad input gets an error that names it."""

import pytest

from deeplense_tf.simulation import instruments, recipes, substructure
from deeplense_tf.simulation.components import MainDeflector, SersicSource
from deeplense_tf.simulation.priors import Fixed, Normal, Uniform
from deeplense_tf.simulation.simulator import LensSimulator


@pytest.mark.parametrize("make, words", [
    (lambda: Uniform(1.0, 1.0), "non-empty"),
    (lambda: Normal(0.0, -1.0), "sigma > 0"),
    (lambda: MainDeflector(theta_e=Uniform(-0.5, 1.0)), "MainDeflector.theta_e"),
    (lambda: MainDeflector(theta_e=0.0), "MainDeflector.theta_e"),
    (lambda: SersicSource(r_sersic=Fixed(-0.1)), "SersicSource.r_sersic"),
    (lambda: SersicSource(magnitude=None), "exactly one"),
    (lambda: substructure.AxionVortex(mass_msun=-3e10), "AxionVortex.mass_msun"),
    (lambda: substructure.CDMSubhalos(m_min=1e10, m_max=1e8), "m_min < m_max"),
    (lambda: substructure.CDMSubhalos(profile="nfw"), "CDMSubhalos.profile"),
    (lambda: recipes.get("model_iv"), "model_ii_axion"),
    (lambda: instruments.get("jwst"), "euclid"),
    (lambda: recipes.get("euclid_axion").simulator(supersampling=0), "supersampling"),
])
def test_bad_parameters_are_named(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_unknown_substructure_class_is_named():
    sim = recipes.get("euclid_axion").simulator()
    with pytest.raises(ValueError, match="'cdm' is not in this recipe"):
        sim.simulate(None, substructure="cdm")


def test_substructure_keys_must_match_models():
    with pytest.raises(ValueError, match="must be one of"):
        LensSimulator("euclid", MainDeflector(), SersicSource(),
                      {"cdm": substructure.AxionVortex()})


def test_every_recipe_simulates_finite_images_with_its_targets():
    for recipe in recipes.RECIPES.values():
        sim = recipe.simulator()
        for cls in sim.class_names:
            import numpy as np

            from deeplense_tf.simulation.simulator import example_rng

            lens = sim.simulate(example_rng(0, 0, 1), substructure=cls)
            n = sim.instrument.num_pix
            assert lens.image.shape == (n, n) and lens.image.dtype == np.float32
            assert np.isfinite(lens.image).all()
            assert set(lens.params) == set(sim.param_names)
            for target in recipe.targets:
                assert np.isfinite(lens.params[target])
