"""Every registered model, tiny variant: the contract training, export and serving rely on."""

import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf import models

ALL_MODELS = models.list_models()


def test_every_model_has_a_test_variant():
    assert {"resnet18", "resnet34", "vit", "hybrid"} <= set(ALL_MODELS)
    for name in ALL_MODELS:
        assert "test" in models.variants(name), name


def test_output_contract(tiny, checks):
    _, model, x = tiny
    checks.check_output_contract(model, model(x))


def test_point_head_has_no_std(checks):
    model = checks.build_tiny("resnet18", head="point")
    checks.check_output_contract(model, model(checks.raw_images()), head="point")


def test_config_round_trip(tiny, checks):
    _, model, x = tiny
    checks.check_config_round_trip(model, x)


def test_save_and_reload(tiny, checks, tmp_path):
    _, model, x = tiny
    checks.check_save_and_reload(model, x, tmp_path / "m.keras")


def test_predict_on_array_and_dataset(tiny, checks):
    _, model, x = tiny
    checks.check_predict(model, x)


def test_untrained_model_predicts_the_target_prior(tiny, checks):
    """Zero head: every image maps to target_mean with sigma target_std, in physical units."""
    name, _, x = tiny
    model = checks.build_tiny(name)
    outputs = checks.as_numpy(model(x))
    for target, mean, std in zip(checks.TARGETS, checks.TARGET_MEAN, checks.TARGET_STD):
        np.testing.assert_allclose(outputs[target], [mean] * len(x), rtol=1e-6)
        np.testing.assert_allclose(outputs[target + "_std"], [std] * len(x), rtol=1e-6)
    standardized = checks.as_numpy(models.standardize(model, outputs))
    np.testing.assert_allclose(standardized[checks.TARGETS[0]], 0.0, atol=1e-6)
    np.testing.assert_allclose(standardized[checks.TARGETS[0] + "_std"], 1.0, rtol=1e-6)


def test_one_gradient_step_lowers_the_loss(tiny, checks):
    name, _, x = tiny
    model = checks.randomize_head(checks.build_tiny(name))
    y = {"log10_m_axion": np.array([-23.4, -22.7], "float32"),
         "einstein_radius": np.array([1.0, 1.5], "float32")}
    checks.check_one_gradient_step(model, x, y)


def test_mixed_bfloat16_outputs_float32(tiny, checks, mixed_bfloat16):
    name, _, x = tiny
    model = checks.randomize_head(checks.build_tiny(name))
    assert model.get_layer("backbone").layers[1].compute_dtype == "bfloat16"
    checks.check_output_contract(model, model(x))


def test_runs_under_xla(tiny, checks):
    _, model, x = tiny
    compiled = tf.function(lambda images: model(images, training=False), jit_compile=True)
    checks.assert_outputs_equal(checks.as_numpy(compiled(x)), checks.as_numpy(model(x)))
