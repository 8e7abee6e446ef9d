"""Input normalization and target de-scaling layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf import models
from deeplense_tf.models import ImageNormalization, RegressionOutput


def normalize(mode, x, **kwargs):
    return keras.ops.convert_to_numpy(ImageNormalization(mode, **kwargs)(x))


@pytest.mark.parametrize("mode", models.NORMALIZATION_MODES)
@pytest.mark.parametrize("value", [0.0, 1e-3, 250.0])
def test_constant_image_gives_finite_output(mode, value):
    x = np.full((2, 16, 16, 1), value, "float32")
    out = normalize(mode, x, pixel_mean=100.0, pixel_std=20.0)
    assert np.all(np.isfinite(out))
    if mode.startswith("per_image"):
        np.testing.assert_allclose(out, 0.0, atol=1e-3)


def test_per_image_standardization_gives_zero_mean_unit_std(checks):
    out = normalize("per_image_standardization", checks.raw_images())
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, rtol=1e-4)


def test_per_image_minmax_spans_unit_interval(checks):
    out = normalize("per_image_minmax", checks.raw_images())
    np.testing.assert_allclose(out.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.max(axis=(1, 2, 3)), 1.0, rtol=1e-6)


def test_asinh_uses_its_scale(checks):
    x = checks.raw_images()
    np.testing.assert_allclose(normalize("asinh", x, asinh_scale=30.0), np.arcsinh(x / 30.0),
                               rtol=1e-5)


def test_global_uses_stored_statistics(checks):
    x = checks.raw_images()
    layer = ImageNormalization("global", pixel_mean=100.0, pixel_std=20.0)
    restored = ImageNormalization.from_config(layer.get_config())
    assert (restored.pixel_mean, restored.pixel_std) == (100.0, 20.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), (x - 100.0) / 20.0,
                               rtol=1e-5)


def test_normalization_eager_equals_tf_data(checks):
    x = checks.raw_images()
    layer = ImageNormalization("per_image_standardization")
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(x).batch(2).map(layer)))
    np.testing.assert_allclose(mapped.numpy(), keras.ops.convert_to_numpy(layer(x)), atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="zscore"), "per_image_minmax"),
    (dict(mode="global"), "pixel_mean"),
    (dict(mode="global", pixel_mean=0.0, pixel_std=0.0), "positive"),
    (dict(mode="asinh", asinh_scale=0.0), "asinh_scale"),
])
def test_normalization_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageNormalization(**kwargs)


def test_regression_output_is_batch_shaped_per_target(checks):
    layer = RegressionOutput(checks.TARGETS, checks.TARGET_MEAN, checks.TARGET_STD)
    z = np.array([[1.0, -2.0, 0.0, 100.0], [0.0, 0.0, -100.0, 0.0]], "float32")
    out = checks.as_numpy(layer(z))
    np.testing.assert_allclose(out["log10_m_axion"], [-22.5, -23.0])
    np.testing.assert_allclose(out["einstein_radius"], [0.6, 1.2], rtol=1e-6)
    # The log-variance is bounded: sigma stays within target_std * exp(+-bound / 2).
    np.testing.assert_allclose(out["log10_m_axion_std"], [0.5, 0.5 * np.exp(-5.0)], rtol=1e-5)
    np.testing.assert_allclose(out["einstein_radius_std"], [0.3 * np.exp(5.0), 0.3], rtol=1e-5)
    assert all(v.shape == (2,) for v in out.values())


@pytest.mark.parametrize("kwargs, message", [
    (dict(targets=["a", "a_std"], target_mean=[0, 0], target_std=[1, 1]), "repeat"),
    (dict(targets=["a"], target_mean=[0, 1], target_std=[1]), "2 values for 1"),
    (dict(targets=["a"], target_mean=[0], target_std=[0]), "positive"),
    (dict(targets=["a"], target_mean=[0], target_std=[1], head="laplace"), "gaussian, gaussian_full, point"),
])
def test_regression_output_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegressionOutput(**kwargs)
