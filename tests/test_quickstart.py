"""The README's main command, end to end at a tiny size."""

import json
import os

import pytest


@pytest.mark.slow
def test_quickstart_simulates_trains_evaluates_exports_and_serves(tmp_path, capsys):
    from deeplense_tf import quickstart

    result = quickstart.run(str(tmp_path), train_size=64, epochs=1, test_size=16,
                            validation_size=16)
    out = capsys.readouterr().out
    for step in range(1, 6):
        assert f"[{step}/5]" in out
    assert result["data"]["splits"] == {"train": 64, "validation": 16, "test": 16}
    assert os.path.exists(tmp_path / "train" / "model.keras")
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["num_examples"] == 16
    assert os.path.exists(os.path.join(result["export"], "saved_model.pb"))
    assert len(result["served"]["log10_m_axion"]) == 1
    assert result["served"]["log10_m_axion_std"][0] > 0
