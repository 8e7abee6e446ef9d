"""The EDA report on a tiny data set: files, counts, statistics and the departure study."""

import json
import os

import numpy as np
import pytest
from absl import flags

from deeplense_tf import build_dataset, eda

DATASET = "deeplense_lensing/euclid_classes_tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    build_dataset.build("euclid_classes_tiny", str(path), num_workers=1)
    return str(path)


@pytest.fixture(scope="module")
def report(data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eda"))
    # Every axion image of the train split: a handful spread over the mass range.
    return out, eda.run(data_dir, DATASET, out, departure_samples=16)


def test_report_shows_every_figure_it_writes(report):
    out, summary = report
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert {"samples_by_class.png", "pixel_histograms.png", "per_image_statistics.png",
            "mean_images.png", "parameter_histograms.png", "departure.png",
            "departure_residuals.png"} <= set(pngs)
    text = open(os.path.join(out, "report.md")).read()
    for png in pngs:
        assert f"]({png})" in text
    assert summary["figures"].keys() == set(pngs)
    assert "asinh" in summary["figures"]["samples_by_class.png"]  # The stretch is named.
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["dataset"] == summary["dataset"]


def test_counts_equal_the_split_sizes(report):
    _, summary = report
    sizes = {"train": 24, "validation": 8, "test": 8}  # euclid_classes_tiny
    for split, size in sizes.items():
        assert summary["splits"][split]["num_examples"] == size
        assert sum(summary["splits"][split]["per_class"].values()) == size
    assert summary["splits"]["train"]["per_class"] == {"no_sub": 8, "cdm": 8, "axion": 8}
    assert summary["analysed"]["num_examples"] == 24


def test_pixel_statistics_agree_with_the_noise_model(report):
    _, summary = report
    pixels, background = summary["pixels"], summary["background"]
    assert 0 < pixels["fraction_negative"] < 1
    assert pixels["min"] <= pixels["p1"] <= pixels["p50"] <= pixels["p99"] <= pixels["max"]
    # The border estimate of the noise matches the stored background rms of the instrument.
    assert background["border_noise_rms_median"] == pytest.approx(
        background["sigma_bg_used_for_stretch"], rel=0.15)
    assert summary["per_image"]["max"]["min"] > 0
    params = summary["params"]
    assert params["supersampling"]["constant"] and not params["theta_e"]["constant"]


def test_departure_reproduces_the_stored_vortex_and_fades_with_axion_mass(report):
    _, summary = report
    result = summary["departure"]
    axion = [r for r in result["samples"] if r["class"] == "axion"]
    assert len(axion) >= 4
    # The stored image is its re-rendering plus noise: chi^2 per pixel ~ 1.
    assert result["per_class"]["axion"]["reproduction_chi2_per_pixel_median"] == pytest.approx(1, abs=0.1)
    masses = np.array([r["log10_m_axion"] for r in axion])
    light = masses < np.median(masses)
    # Against the m_a -> infinity limit (the information about m_a), low masses depart more.
    vs_limit = np.array([r["delta_chi2_vs_compact_limit"] for r in axion])
    assert np.median(vs_limit[light]) > 10 * np.median(vs_limit[~light])
    assert vs_limit[np.argmin(masses)] > vs_limit[np.argmax(masses)]
    # Against no substructure, the 3e10 Msun of the vortex is visible at every mass.
    assert min(r["delta_chi2_vs_no_sub"] for r in axion) > 100
    assert result["per_class"]["cdm"]["realization"] == "redrawn"


def test_flags_without_departure(data_dir, tmp_path):
    """The command line's flags, parsed in process (a subprocess would re-import TF)."""
    out = tmp_path / "report"
    flag_values = flags.FlagValues()
    eda._define_flags(flag_values)
    flag_values(["eda", f"--data_dir={data_dir}", f"--dataset={DATASET}", f"--output_dir={out}",
                 "--split=validation", "--max_examples=5", "--departure_samples=0"])
    eda.run_from_flags(flag_values)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["analysed"]["split"] == "validation"
    assert summary["analysed"]["num_examples"] == 5
    assert "departure" not in summary and not (out / "departure.png").exists()


def test_bad_dataset_names_say_what_was_expected(data_dir, tmp_path):
    with pytest.raises(ValueError, match="deeplense_lensing/CONFIG"):
        eda.run(data_dir, "euclid_classes_tiny", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="build_dataset"):
        eda.run(data_dir, "deeplense_lensing/euclid_axion", str(tmp_path))
    with pytest.raises(ValueError, match="--split"):
        eda.run(data_dir, DATASET, str(tmp_path), split="dev")


def test_redrawn_realizations_fix_every_candidates_stored_target():
    from deeplense_tf import eda
    from deeplense_tf.simulation import substructure
    from deeplense_tf.simulation.priors import Uniform

    wdm = eda._redrawn(substructure.WDMSubhalos(), {"log10_m_hm": 9.0, "log10_sigma_sub": -1.0})
    assert wdm.log10_m_hm.support == (9.0, 9.0)
    sidm = eda._redrawn(substructure.SIDMSubhalos(), {"log10_sigma_over_m": 2.5})
    assert sidm.log10_sigma_over_m.support == (2.5, 2.5)
    cdm = eda._redrawn(substructure.CDMSubhalos(slope=Uniform(-2.2, -1.6)),
                       {"shmf_slope": -2.0, "log10_sigma_sub": -1.5})
    assert cdm.slope.support == (-2.0, -2.0) and cdm.log10_sigma_sub.support == (-1.5, -1.5)
    assert eda._bin_variable("wdm", {"log10_m_hm": [9.0]}) == "log10_m_hm"
