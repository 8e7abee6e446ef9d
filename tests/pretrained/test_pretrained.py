"""Shipped models load offline and predict in physical units; packaging writes honest cards."""

import json
import pathlib

import numpy as np
import pytest

from deeplense_tf import evaluate, package_model, pretrained, training
from deeplense_tf.simulation import recipes
from deeplense_tf.simulation.simulator import example_rng

SHIPPED = pretrained.list()


def _fresh_images(recipe_name, count, seed=12345):
    """Images the shipped models never saw (a seed no data set config uses)."""
    sim = recipes.get(recipe_name).simulator()
    lenses = [sim.simulate(example_rng(seed, 7, i)) for i in range(count)]
    return np.stack([l.image for l in lenses]), lenses


def test_some_models_are_shipped():
    assert SHIPPED, "no pre-trained models in deeplense_tf/pretrained/"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_predicts_fresh_simulations_in_physical_units(name):
    meta = pretrained.info(name)
    recipe = meta["dataset"].split("/")[1].split(":")[0].split("__")[0]
    images, lenses = _fresh_images(recipe, 48)
    out = pretrained.predict(name, images, instrument=meta["instrument"])
    target = meta["targets"][0]
    truth = np.array([l.params[target] for l in lenses])
    assert out[target].shape == (48,) and out[target].dtype == np.float32
    assert np.all(out[target + "_std"] > 0)
    mae = np.mean(np.abs(out[target] - truth))
    constant = np.mean(np.abs(meta["test"][target]["constant_baseline"]["value"] - truth))
    # Far better than the constant, on images from a seed no data set used, and as good
    # relative to it as on the card's test split (within 0.15 of its MAE ratio).
    card_ratio = (meta["test"][target]["model"]["mae"]
                  / meta["test"][target]["constant_baseline"]["mae"])
    assert mae < min(0.8, card_ratio + 0.15) * constant, (mae, constant, card_ratio)
    # The same images with a channel axis, and one image alone, give the same answer.
    again = pretrained.predict(name, images[..., None])
    np.testing.assert_allclose(again[target], out[target], rtol=1e-5, atol=1e-5)
    single = pretrained.predict(name, images[0])
    assert single[target].shape == (1,)
    assert meta["size_mb"] <= 20
    card = pretrained.card(name)
    assert "--data_dir=/" not in card and f"{meta['test'][target]['model']['mae']:.4f}" in card


@pytest.mark.parametrize("name", SHIPPED)
def test_wrong_images_get_clear_errors(name):
    meta = pretrained.info(name)
    h, w, _ = meta["image_shape"]
    with pytest.raises(ValueError, match=rf"images of shape \(2, {h + 1}, {w + 1}\).*takes "
                                         rf"\({h}, {w}\) images of {meta['instrument']}"):
        pretrained.predict(name, np.zeros((2, h + 1, w + 1), np.float32))
    with pytest.raises(ValueError, match="trained on"):
        pretrained.predict(name, np.zeros((2, h, w), np.float32), instrument="jwst")
    with pytest.raises(ValueError, match="NaN"):
        pretrained.predict(name, np.full((1, h, w), np.nan, np.float32))


def test_unknown_model_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="available"):
        pretrained.load("resnet152_imagenet")


def test_package_a_run_into_a_card(tiny_data, tmp_path):
    dataset = "deeplense_lensing/euclid_axion_tiny"
    config = training.TrainConfig(data_dir=tiny_data, dataset=dataset, targets=["log10_m_axion"],
                                  model="resnet18", variant="test", train_steps=2, batch_size=4)
    training.train_and_evaluate(config, str(tmp_path / "run"))
    evaluate.run(str(tmp_path / "run" / "model.keras"), tiny_data, dataset, str(tmp_path / "ev"))
    out = tmp_path / "shipped"
    out.mkdir()
    # A report that is not one JSON object (calibrate's stdout with its log lines after
    # it) is refused before anything is shipped.
    bad = tmp_path / "calibration.txt"
    bad.write_text('{"split": "validation"}\nReport: elsewhere.json\n')
    with pytest.raises(ValueError, match="calibration.txt: expected one JSON object"):
        package_model.package(str(tmp_path / "run"), str(tmp_path / "ev"), "tiny", str(out),
                              calibration_report=str(bad))
    assert list(out.iterdir()) == []
    meta = package_model.package(str(tmp_path / "run"), str(tmp_path / "ev"), "tiny", str(out))
    assert (out / "tiny.keras").stat().st_size < 20 * 2**20
    assert json.loads((out / "tiny.json").read_text())["instrument"] == "euclid"
    card = (out / "tiny.md").read_text()
    assert tiny_data not in card and "--model=resnet18" in card
    assert f"{meta['test']['log10_m_axion']['model']['mae']:.4f}" in card
    with pytest.raises(ValueError, match="evaluated on 'validation'"):
        evaluate.run(str(tmp_path / "run" / "model.keras"), tiny_data, dataset,
                     str(tmp_path / "ev2"), split="validation")
        package_model.package(str(tmp_path / "run"), str(tmp_path / "ev2"), "x", str(out))


def test_results_table_comes_from_the_shipped_metadata_and_matches_the_readme():
    from deeplense_tf.pretrained.__main__ import results_table

    table = results_table()
    for name in SHIPPED:
        meta = pretrained.info(name)
        for target in meta["targets"]:
            assert f"| `{name}` |" in table
            assert f"{meta['test'][target]['model']['mae']:.4f}" in table
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    for row in table.splitlines()[2:]:
        assert row in readme, f"README's results table is stale; run python -m deeplense_tf.pretrained:\n{row}"


@pytest.mark.slow
def test_readme_pretrained_example_runs_as_written(capsys):
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = readme.split("<!-- pretrained-example -->", 1)[1]
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.count("predicted") == 8 and "Model card" in out
