"""Shared checks for every registered regressor (as keras-hub's TestCase), so each test is short.

Test modules reach these helpers through the `checks` fixture (this module), which works
under pytest's `prepend` and `importlib` import modes alike; `tiny` builds each registered
model's `test` variant once per test module.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf import models

# Two targets with different scales catch (B, 1) vs (B,) broadcasting and mixed-up columns.
TARGETS = ["log10_m_axion", "einstein_radius"]
TARGET_MEAN = [-23.0, 1.2]
TARGET_STD = [0.5, 0.3]
IMAGE_SHAPE = (32, 32, 1)
BATCH = 2


def build_tiny(name, seed=0, **kwargs):
    """A tiny regressor with seeded initial weights: with a batch of 2 in training mode,
    batch normalization divides by a two-sample variance, and an unlucky random draw can
    make a 1e-3 step overshoot (seen once for resnet34 in a CI run); the checks are about
    gradient flow, so they run on fixed weights."""
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("variant", "test")
    kwargs.setdefault("image_shape", IMAGE_SHAPE)
    return models.build_regressor(name, targets=TARGETS, target_mean=TARGET_MEAN,
                                  target_std=TARGET_STD, **kwargs)


def raw_images(batch=BATCH, shape=IMAGE_SHAPE, seed=0):
    """Positive, count-like pixel values far from unit scale, as the simulator writes."""
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 50.0, size=(batch, *shape)) + 10.0).astype("float32")


def randomize_head(model, seed=0):
    """The head starts at zero; give it weights so outputs depend on the image."""
    dense = model.get_layer("head_dense")
    rng = np.random.default_rng(seed)
    dense.set_weights([rng.normal(0, 0.3, w.shape).astype("float32")
                       for w in dense.get_weights()])
    return model


def as_numpy(outputs):
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


def assert_outputs_equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6, err_msg=key)


def check_output_contract(model, outputs, batch=BATCH, head="gaussian"):
    expected = TARGETS + ([t + "_std" for t in TARGETS] if head == "gaussian" else [])
    assert sorted(outputs) == sorted(expected)
    for key, value in outputs.items():
        assert tuple(value.shape) == (batch,), (key, value.shape)
        assert keras.backend.standardize_dtype(value.dtype) == "float32", (key, value.dtype)
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(value))), key
    for target in TARGETS if head == "gaussian" else []:
        assert np.all(keras.ops.convert_to_numpy(outputs[target + "_std"]) > 0), target
    assert [i.name for i in model.inputs] == ["image"]
    assert model.inputs[0].dtype == "float32"
    assert model.layers[1].name == "image_normalization"


def check_config_round_trip(model, x):
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert_outputs_equal(as_numpy(model(x)), as_numpy(clone(x)))


def check_save_and_reload(model, x, path):
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert_outputs_equal(as_numpy(model(x)), as_numpy(reloaded(x)))
    assert models.target_names(reloaded) == TARGETS


def check_predict(model, x):
    from_array = model.predict(x, batch_size=BATCH, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(BATCH)
    from_dataset = model.predict(dataset, verbose=0)
    assert_outputs_equal(from_array, as_numpy(model(x)))
    assert_outputs_equal(from_array, from_dataset)


def gaussian_nll(model, x, y, training=True):
    """Mean Gaussian NLL in standardized units, as a training loop would compute it."""
    z_true = models.standardize(model, y)
    z_pred = models.standardize(model, model(x, training=training))
    terms = [keras.ops.log(z_pred[t + "_std"])
             + 0.5 * keras.ops.square((z_true[t] - z_pred[t]) / z_pred[t + "_std"])
             for t in TARGETS]
    return keras.ops.mean(keras.ops.stack(terms))


def check_one_gradient_step(model, x, y, step=1e-3):
    """Gradients reach the first backbone weights and a small step lowers the loss."""
    weights = model.trainable_weights
    with tf.GradientTape() as tape:
        loss = gaussian_nll(model, x, y)
    grads = tape.gradient(loss, weights)
    assert all(g is not None for g in grads), [w.path for w, g in zip(weights, grads) if g is None]
    assert all(np.all(np.isfinite(g)) for g in grads)
    first = model.get_layer("backbone").trainable_weights[0]
    assert np.any(grads[[id(w) for w in weights].index(id(first))].numpy() != 0), first.path
    norm = tf.linalg.global_norm(grads)
    for w, g in zip(weights, grads):
        w.assign_sub(step * g / norm)
    assert float(gaussian_nll(model, x, y)) < float(loss)


_THIS_MODULE = sys.modules[__name__]  # taken at import: another conftest may reuse the name


@pytest.fixture(scope="session")
def checks():
    return _THIS_MODULE


@pytest.fixture(scope="module", params=models.list_models())
def tiny(request):
    """(name, model with a random head, raw images), built once per model for read-only checks."""
    model = randomize_head(build_tiny(request.param, dropout=0.1))
    return request.param, model, raw_images()


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")
