"""The domain-shift matrix: a shipped model on in-domain and shifted test splits."""

import json

import pytest

from deeplense_tf import domain_shift, pretrained


def test_matrix_rows_ratios_and_files(tmp_path):
    name = next(n for n in pretrained.list() if n.endswith("euclid_axion"))
    rows = domain_shift.run([name], ["euclid_axion", "euclid_axion_psf"], str(tmp_path / "data"),
                            str(tmp_path / "out"), test_size=24, seed=3)
    assert [r["config"] for r in rows] == ["euclid_axion", "euclid_axion_psf"]
    assert rows[0]["mae_ratio"] == 1.0 and rows[0]["count"] == 24
    for row in rows:
        assert 0 <= row["coverage_68"] <= 1 and 0 <= row["ood_flag_rate"] <= 1
        assert row["mae"] > 0 and row["dataset"].endswith("__0_0_24_seed3")
    saved = json.loads((tmp_path / "out" / "domain_shift.json").read_text())
    assert saved["in_domain"] == "euclid_axion" and len(saved["rows"]) == 2
    table = (tmp_path / "out" / "domain_shift.md").read_text()
    assert "| euclid_axion_psf |" in table and (tmp_path / "out" / "domain_shift.png").exists()


def test_unknown_model_is_refused_before_building(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model=nope: neither"):
        domain_shift.run(["nope"], ["euclid_axion"], str(tmp_path / "data"), str(tmp_path / "out"))
    assert not (tmp_path / "data").exists()
