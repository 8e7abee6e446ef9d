"""Recipes with realism options: shapes, parameters, twins, splits, reproducibility."""

import sys

import numpy as np
import pytest

from deeplense_tf.simulation import real_sources, recipes
from deeplense_tf.simulation.simulator import SPLITS, example_rng

REALISTIC = ("euclid_axion_lens_light", "euclid_axion_psf", "euclid_axion_correlated_noise",
             "euclid_axion_real_sources", "euclid_axion_realistic", "hst_axion_realistic")


def test_realistic_recipes_are_registered():
    assert set(REALISTIC) <= set(recipes.RECIPES)
    for name in REALISTIC:
        assert recipes.get(name).realism is not None
        assert recipes.get(name).targets == ("log10_m_axion",)


@pytest.mark.parametrize("name", REALISTIC)
def test_realistic_recipe_simulates_finite_images_with_its_parameters(name):
    recipe = recipes.get(name)
    sim = recipe.simulator()
    extra = set(recipe.realism.param_names())  # none for correlated noise
    assert extra <= set(recipe.param_names)
    assert sim.param_names == recipe.param_names
    for split_index in range(3):
        lens = sim.simulate(example_rng(0, split_index, 5))
        n = sim.instrument.num_pix
        assert lens.image.shape == (n, n) and lens.image.dtype == np.float32
        assert np.isfinite(lens.image).all()
        assert set(lens.params) == set(sim.param_names)
        assert all(np.isfinite(lens.params[p]) for p in extra)
        assert np.isfinite(lens.params["log10_m_axion"])


def test_lens_light_brightens_the_centre_of_the_same_lens():
    plain = recipes.get("euclid_axion").simulator(noise=False)
    light = recipes.get("euclid_axion_lens_light").simulator(noise=False)
    a, b = (sim.simulate(example_rng(3, 0, 2)) for sim in (plain, light))
    # Same macro model, source shape and substructure draws; the source is fainter.
    for key in plain.param_names:
        if key != "source_magnitude":
            assert a.params[key] == b.params[key], key
    assert b.params["source_magnitude"] == pytest.approx(
        a.params["source_magnitude"] + recipes.SOURCE_MAGNITUDE_SHIFT)
    centre = slice(28, 36)
    assert b.image[centre, centre].mean() > 10 * a.image[centre, centre].mean()


def test_real_sources_use_disjoint_stamps_by_split():
    sim = recipes.get("euclid_axion_real_sources").simulator(noise=False)
    catalogue = real_sources.hdf_catalogue()
    used = {}
    for split_index, split in enumerate(SPLITS):
        if split == "validation":
            continue
        stamps = {int(sim.simulate(example_rng(0, split_index, i)).params["source_stamp_index"])
                  for i in range(50)}
        assert {real_sources.split_of(catalogue.ids[s]) for s in stamps} == {split}
        used[split] = stamps
    assert len(used["train"]) > 20 and len(used["test"]) > 10
    assert not used["train"] & used["test"]


def test_real_sources_need_the_split():
    sim = recipes.get("euclid_axion_real_sources").simulator(noise=False)
    with pytest.raises(ValueError, match="need the example's split"):
        sim.simulate(np.random.default_rng(0))
    lens = sim.simulate(np.random.default_rng(0), split="test")
    assert real_sources.split_of(
        real_sources.hdf_catalogue().ids[int(lens.params["source_stamp_index"])]) == "test"


def test_realistic_images_are_reproducible_and_differ_from_the_plain_twin():
    sim = recipes.get("euclid_axion_realistic").simulator()
    a, b = (sim.simulate(example_rng(11, 1, 4)) for _ in range(2))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.params == pytest.approx(b.params, nan_ok=True)
    plain = recipes.get("euclid_axion").simulator().simulate(example_rng(11, 1, 4))
    assert not np.allclose(a.image, plain.image)


def test_correlated_noise_correlates_neighbouring_pixels():
    def lag1(name):
        sim = recipes.get(name).simulator()
        values = []
        for i in range(4):
            lens = sim.simulate(example_rng(0, 0, i), keep_noiseless=True)
            noise = (lens.image - lens.noiseless).astype(np.float64)
            noise = np.concatenate([noise[:12], noise[-12:]])  # background, no arcs
            values.append(np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1])
        return np.mean(values)

    assert abs(lag1("euclid_axion")) < 0.06
    assert lag1("euclid_axion_correlated_noise") == pytest.approx(0.25, abs=0.06)


def test_psf_kernels_are_normalized_and_follow_the_drawn_fwhm():
    sim = recipes.get("euclid_axion_psf").simulator()
    narrow = sim._psf_kernel({"psf_fwhm_arcsec": 0.14, "psf_e1": 0.0, "psf_e2": 0.0})
    wide = sim._psf_kernel({"psf_fwhm_arcsec": 0.20, "psf_e1": 0.05, "psf_e2": 0.0})
    for kernel in (narrow, wide):
        assert kernel.shape[0] % 2 == 1 and kernel.sum() == pytest.approx(1.0)
        assert (kernel >= 0).all()
    assert wide.max() < narrow.max()
    fwhm = [sim.simulate(example_rng(0, 0, i)).params["psf_fwhm_arcsec"] for i in range(3)]
    assert len(set(fwhm)) == 3 and all(0.12 < f < 0.2 for f in fwhm)


def test_real_sources_without_scikit_image_name_the_realism_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` now fails
    with pytest.raises(ImportError, match=r"deeplense_tf\[realism\]"):
        recipes.get("euclid_axion_real_sources").simulator()
    recipes.get("euclid_axion_lens_light").simulator()  # the other effects need no skimage
