"""Fixtures for the serving tests: a small model of the serving contract and its export.

The model is a few layers with the contract of ``deeplense_tf.models``: one float32
input ``image`` (64, 64, 1) of raw pixels, normalization inside, a dict of (batch,)
float32 outputs. Building and exporting it takes about a second; the fixtures that
do it are shared by the session. Helpers are handed out as fixtures (``contract``):
with pytest's importlib import mode a conftest cannot be imported by name.
"""

import types

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SIZE = 64
MODEL_NAME = "deeplense_axion"


def build_contract_model(image_size=IMAGE_SIZE, outputs=("log10_m_axion", "log10_m_axion_std"), seed=0):
    """A small functional Keras model: raw image in, named physical outputs out."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((image_size, image_size, 1), name="image")
    x = keras.layers.Normalization(mean=0.5, variance=0.09)(image)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    named = {}
    for name in outputs:
        activation = "softplus" if name.endswith("_std") else None
        value = keras.layers.Dense(1, activation=activation, name=f"{name}_dense")(x)
        named[name] = keras.layers.Reshape((), name=name)(value)
    return keras.Model(image, named)


def random_images(batch, image_size=IMAGE_SIZE, seed=0):
    return np.random.default_rng(seed).random((batch, image_size, image_size, 1), dtype=np.float32)


@pytest.fixture(scope="session")
def keras_model_path(tmp_path_factory):
    model = build_contract_model()
    model.compile(optimizer="adam", loss="mse")  # a trained model usually is compiled
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model.save(path)
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory, keras_model_path):
    """(export_base, version 1 path) of the contract model, shared read-only."""
    from deeplense_tf.export import export_saved_model

    export_base = str(tmp_path_factory.mktemp("exports"))
    path = export_saved_model(keras_model_path, export_base, MODEL_NAME, warmup_batch_sizes=(1, 4))
    return export_base, path


@pytest.fixture(scope="session")
def keras_model(keras_model_path):
    import keras

    return keras.saving.load_model(keras_model_path, compile=False)


@pytest.fixture(scope="session")
def contract():
    """The helpers and constants of this file, for the test modules."""
    return types.SimpleNamespace(
        IMAGE_SIZE=IMAGE_SIZE,
        MODEL_NAME=MODEL_NAME,
        build_model=build_contract_model,
        images=random_images,
    )
