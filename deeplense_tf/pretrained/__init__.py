"""Pre-trained regressors shipped with the package, usable offline.

    from deeplense_tf import pretrained
    pretrained.list()                        # names of the shipped models
    pretrained.info("resnet18_model_ii_axion")  # data set, instrument, test metrics, ...
    model = pretrained.load("resnet18_model_ii_axion")   # a keras.Model
    out = pretrained.predict("resnet18_model_ii_axion", images)
    out["log10_m_axion"], out["log10_m_axion_std"]       # physical units, 1-sigma

A model is named the same way everywhere (`evaluate`, `export`, `predict`, `calibrate`,
`ood`, `train --init_from`): a shipped name (optionally written `pretrained:NAME`) or a
path to a `.keras` file; `resolve()` is that one rule and `load_model()` loads by it.

Each model has a model card (`<name>.md` beside it, also `card(name)`): the data set
config and version, the exact training command, time and machine, test metrics beside
the constant baseline, and known limits. Models take raw images in the units of their
instrument's simulation (counts per second for Euclid/HST, DeepLense amplitude units for
Model I) of exactly the instrument's size; normalization happens inside the model.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import os

import numpy as np

_DIR = os.path.dirname(os.path.abspath(__file__))


def list() -> builtins.list[str]:  # noqa: A001 - the API the users asked for
    """Names of the shipped models."""
    return sorted(f[:-len(".json")] for f in os.listdir(_DIR) if f.endswith(".json"))


def _check(name: str) -> None:
    if name not in list():
        raise ValueError(f"pretrained model {name!r} is not shipped; available: {list()}")


def info(name: str) -> dict:
    """Metadata of a shipped model (data set, instrument, image shape, metrics, ...)."""
    _check(name)
    with open(os.path.join(_DIR, f"{name}.json")) as f:
        return json.load(f)


def card(name: str) -> str:
    """The model card (markdown)."""
    _check(name)
    with open(os.path.join(_DIR, f"{name}.md")) as f:
        return f.read()


PREFIX = "pretrained:"


def file_sha256(path: str) -> str:
    """The SHA-256 of a model file (exports and fine-tuned runs record their source's)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(model: str, flag: str = "--model") -> str:
    """The `.keras` file a model reference names: a shipped name, `pretrained:NAME`, or a path.

    An existing path wins over a shipped name of the same spelling; `pretrained:NAME`
    always means the shipped model. Anything else is refused naming both kinds expected.
    """
    model = os.fspath(model)
    if model.startswith(PREFIX):
        name = model[len(PREFIX):]
        if name not in list():
            raise ValueError(f"{flag}={model}: {name!r} is not a shipped model; available: {list()}")
        return os.path.join(_DIR, f"{name}.keras")
    if os.path.exists(model):
        return model
    if model in list():
        return os.path.join(_DIR, f"{model}.keras")
    raise FileNotFoundError(f"{flag}={model}: neither an existing .keras file or SavedModel "
                            f"directory nor a shipped model (pretrained:NAME, one of {list()})")


def shipped_name(model: str) -> str | None:
    """The shipped name a model reference resolves to, or None for a user's own file."""
    path = os.path.abspath(resolve(model))
    name = os.path.basename(path)[:-len(".keras")] if path.endswith(".keras") else ""
    return name if os.path.dirname(path) == _DIR and name in list() else None


def load_model(model: str, compile: bool = False):  # noqa: A002 - keras' own argument name
    """A Keras model from a shipped name, `pretrained:NAME` or a `.keras` path.

    The documented way to load a run's `model.keras` in one's own code; plain
    `keras.saving.load_model(path)` also works once `deeplense_tf` is imported.
    """
    path = resolve(model)
    name = shipped_name(model)
    if name is not None and not compile:
        return load(name)
    import keras

    import deeplense_tf.models  # noqa: F401  (registers the custom layers)

    return keras.saving.load_model(path, compile=compile)


@functools.lru_cache(maxsize=8)
def load(name: str):
    """The Keras model (raw image in, dict of physical-unit tensors out)."""
    _check(name)
    import keras

    import deeplense_tf.models  # noqa: F401  (registers the custom layers)

    return keras.saving.load_model(os.path.join(_DIR, f"{name}.keras"), compile=False)


def predict(name: str, images, instrument: str | None = None, batch_size: int = 256) -> dict:
    """Predictions for numpy `images` of shape (N, H, W), (N, H, W, 1) or (H, W).

    `instrument`, if given, must be the model's (e.g. "euclid"): a guard against feeding
    images of another camera that happen to have the same size. Returns a dict of float32
    arrays of shape (N,): each target and, for Gaussian heads, `<target>_std`.
    """
    meta = info(name)
    if instrument is not None and instrument != meta["instrument"]:
        raise ValueError(f"images from instrument {instrument!r}, but {name} was trained on "
                         f"{meta['instrument']!r} ({meta['instrument_description']})")
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.number):
        raise ValueError(f"images: expected a numeric array, got dtype {images.dtype}")
    height, width, channels = meta["image_shape"]
    if images.ndim == 2:
        images = images[None]
    if images.ndim == 3 and images.shape[1:] == (height, width):
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (height, width, channels):
        raise ValueError(
            f"images of shape {images.shape}: {name} takes ({height}, {width}) images of "
            f"{meta['instrument']} ({meta['pixel_scale_arcsec']}\"/px), as (N, {height}, "
            f"{width}), (N, {height}, {width}, 1) or ({height}, {width})")
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    outputs = load(name).predict(images, batch_size=batch_size, verbose=0)
    return {k: np.asarray(v, np.float32) for k, v in outputs.items()}
