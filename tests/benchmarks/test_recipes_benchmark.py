"""The recipe-cost benchmark compares each recipe with its parametric twin."""

from deeplense_tf.benchmarks import recipes as bench


def test_twin_is_the_longest_recipe_the_name_extends():
    names = ["euclid_axion", "euclid_axion_psf", "hst_axion", "hst_axion_realistic", "euclid_cdm"]
    assert bench.twin_of("euclid_axion_psf", names) == "euclid_axion"
    assert bench.twin_of("hst_axion_realistic", names) == "hst_axion"
    assert bench.twin_of("euclid_cdm", names) == "euclid_cdm"


def test_rows_time_every_recipe():
    rows = bench.run(["euclid_axion", "euclid_axion_psf"], images=3, rounds=1)
    assert [r["recipe"] for r in rows] == ["euclid_axion", "euclid_axion_psf"]
    assert rows[0]["ratio_to_twin"] == 1.0 and rows[1]["twin"] == "euclid_axion"
    assert all(r["ms_per_image"] > 0 for r in rows)
