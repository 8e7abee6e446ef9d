"""Starting a training run from a trained model: `train --init_from=pretrained:NAME|PATH`.

Fine-tuning a shipped model on a small labelled set of another domain (realistic lenses,
a survey's own simulations) keeps what the parent learned. Here:

- `describe_parent` loads the parent and reads what it was trained for: image shape,
  targets, instrument and data set (from the shipped metadata, or from the run's
  `config.json` beside a `.keras` file);
- `check_compatible` refuses, before any training work, a parent whose input shape,
  instrument or targets do not match the data set and `--targets` of the new run;
- `parent_statistics` returns the parent's pixel normalization and target scaling, so the
  new model is built computing exactly the parent's function (the new data set's own
  statistics would silently shift every prediction);
- `transfer_weights` copies every weight by its path (`stage1_block1_conv1/kernel`, ...),
  refusing an architecture that differs; the parent's calibration and out-of-distribution
  layers are not carried over (they describe the parent's domain: rerun `calibrate` and
  `ood` on the new one);
- `freeze` makes the backbone (or everything before the head) untrainable, for the
  smallest sets.

`--init_scope=backbone` starts a run for other targets from a parent's image
normalization and backbone (what it learned to see in lensing images of that instrument),
with a new head and the new targets' scaling: e.g. a subhalo-abundance model started
from the shipped axion model of the same instrument. Image shape and instrument must
still match.

`--init_scope=features` carries the backbone to another instrument or image size (an
HST-like 150 px model started from a Euclid 64 px one): the convolution and transformer
weights are copied, the learned position embeddings are resampled (bicubic) from the
parent's token grid to the new one, as a ViT is fine-tuned at a new resolution
(Dosovitskiy et al. 2021, section 3.2), and the pixel normalization and target scaling are
the new data's own (the parent's describe another noise level and pixel scale).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from deeplense_tf.pretrained import file_sha256

FREEZE = ("none", "backbone")
INIT_SCOPES = ("all", "backbone", "features")
# What `init_scope="backbone"` leaves to the new run: the head and the target scaling.
_HEAD_LAYERS = ("head_dense", "regression_output")
# Layers of the parent that describe its own domain, not the network's knowledge.
_DOMAIN_LAYERS = ("ood_score",)


@dataclasses.dataclass
class Parent:
    reference: str          # as given on the command line
    path: str               # the .keras file
    sha256: str
    shipped_name: str | None
    image_shape: tuple
    targets: list
    instrument: str | None  # None when a user's file says nothing about it
    dataset: str | None
    model: object = dataclasses.field(repr=False, default=None)

    def record(self) -> dict:
        """What the new run's config.json and summary say about its parent."""
        return {"reference": self.reference, "file": os.path.basename(self.path),
                "sha256": self.sha256, "shipped_name": self.shipped_name,
                "dataset": self.dataset, "instrument": self.instrument, "targets": self.targets}


def config_name(dataset: str) -> str:
    """'deeplense_lensing/euclid_axion__1000_100_100_seed0:1.0.0' -> 'euclid_axion'."""
    return dataset.split("/")[-1].split(":")[0].split("__")[0]


def instrument_of_dataset(dataset: str) -> str | None:
    """The instrument a `deeplense_lensing` config's images come from, if it says."""
    from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as dl
    from deeplense_tf.simulation import recipes

    name = config_name(dataset)
    builder_config = dl.Builder.builder_configs.get(name)
    if builder_config is not None and getattr(builder_config, "recipe", None):
        return recipes.get(builder_config.recipe).instrument
    if name.startswith("fits_"):
        return name[len("fits_"):]
    return None


def model_targets(model) -> list:
    """Targets of a regressor from its output names (no `_std`, `_q..`, `ood_*`)."""
    names = list(model.output.keys()) if isinstance(model.output, dict) else list(model.output_names)
    return [n for n in names if not n.startswith("ood_") and not n.endswith("_std")
            and "_q" not in n[-6:]]


def describe_parent(reference: str, flag: str = "--init_from") -> Parent:
    from deeplense_tf import pretrained

    path = pretrained.resolve(reference, flag=flag)
    if not path.endswith(".keras"):
        raise ValueError(f"{flag}={reference}: expected a .keras file or a shipped model's "
                         "name (a SavedModel holds no trainable Keras layers)")
    name = pretrained.shipped_name(reference)
    model = pretrained.load_model(path)
    instrument = dataset = None
    if name is not None:
        meta = pretrained.info(name)
        instrument, dataset = meta["instrument"], meta["dataset"]
    else:
        run_config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
        if os.path.exists(run_config):
            with open(run_config) as f:
                dataset = json.load(f).get("dataset")
            instrument = instrument_of_dataset(dataset) if dataset else None
    return Parent(reference=reference, path=path, sha256=file_sha256(path), shipped_name=name,
                  image_shape=tuple(model.input_shape[1:]), targets=model_targets(model),
                  instrument=instrument, dataset=dataset, model=model)


def check_compatible(parent: Parent, image_shape, dataset: str, targets,
                     flag: str = "--init_from", scope: str = "all") -> None:
    """Refuses a parent that cannot start this run, naming what differs (with
    scope="backbone" the targets may differ: the head is new; with scope="features" the
    image size and instrument may differ too, not the number of channels)."""
    image_shape = tuple(int(d) for d in image_shape)
    if scope == "features":
        if parent.image_shape[-1:] != image_shape[-1:]:
            raise ValueError(f"{flag}={parent.reference} with --init_scope=features: the model "
                             f"takes {parent.image_shape[-1]}-channel images, the data set "
                             f"{dataset} has {image_shape[-1]} channels")
    elif parent.image_shape != image_shape:
        raise ValueError(f"{flag}={parent.reference}: the model takes images of shape "
                         f"{parent.image_shape}, the data set {dataset} has {image_shape} "
                         "(--init_scope=features carries its backbone to another image size)")
    instrument = instrument_of_dataset(dataset)
    if (scope != "features" and parent.instrument and instrument
            and parent.instrument != instrument):
        raise ValueError(f"{flag}={parent.reference}: the model was trained on {parent.instrument!r} "
                         f"images, the data set {dataset} holds {instrument!r} images "
                         "(--init_scope=features carries its backbone to another instrument)")
    from deeplense_tf.models import twin

    recipe = twin.macro_twin_recipe(parent.model)
    if recipe:
        raise ValueError(f"{flag}={parent.reference}: the model reads each image beside its "
                         f"{recipe!r} macro-model residual; a "
                         "run cannot start from it")
    if scope == "all" and list(parent.targets) != list(targets):
        raise ValueError(f"{flag}={parent.reference}: the model predicts {parent.targets}, this "
                         f"run's --targets are {list(targets)} (--init_scope=backbone starts "
                         "new targets from its backbone with a new head)")


def parent_statistics(parent: Parent, num_examples: int, own=None):
    """The parent's normalization and target scaling, as `input_pipeline.Statistics`;
    given `own` (the new data's statistics), the parent's normalization with `own`'s
    target scaling (`init_scope="backbone"`)."""
    from deeplense_tf import input_pipeline

    norm = parent.model.get_layer("image_normalization").get_config()
    out = parent.model.get_layer("regression_output").get_config()
    return input_pipeline.Statistics(
        target_mean=[float(v) for v in (out["target_mean"] if own is None else own.target_mean)],
        target_std=[float(v) for v in (out["target_std"] if own is None else own.target_std)],
        pixel_mean=float(norm["pixel_mean"]), pixel_std=float(norm["pixel_std"]),
        pixel_noise=float(norm["asinh_scale"]), num_examples=num_examples)


def transfer_weights(parent: Parent, model, flag: str = "--init_from", scope: str = "all") -> int:
    """Copies every weight of `model` from the parent's weight of the same path and shape
    (scope="backbone": all but the head's, which keep their initialization: the prior;
    scope="features": as "backbone", with position embeddings resampled to this model's
    token grid).

    Returns how many were copied. Refuses if any weight of `model` has no counterpart,
    i.e. the new run's --model/--variant/--model_overrides build another network.
    """
    if scope not in INIT_SCOPES:
        raise ValueError(f"--init_scope={scope}: expected one of {list(INIT_SCOPES)}")
    source = {w.path: w for w in parent.model.weights
              if w.path.split("/")[0] not in _DOMAIN_LAYERS}
    wanted = [w for w in model.weights
              if scope == "all" or w.path.split("/")[0] not in _HEAD_LAYERS]
    missing, mismatched = [], []
    for weight in wanted:
        match = source.get(weight.path)
        if match is None:
            missing.append(weight.path)
        elif tuple(match.shape) != tuple(weight.shape) and not (
                scope == "features" and _is_position_embedding(weight.path)
                and match.shape[-1] == weight.shape[-1]):
            mismatched.append(f"{weight.path} {tuple(weight.shape)} vs parent {tuple(match.shape)}")
    if missing or mismatched:
        details = (f"{len(missing)} weights missing in the parent (e.g. {missing[:3]})" if missing
                   else "") + ("; " if missing and mismatched else "") + \
                  (f"{len(mismatched)} of other shapes (e.g. {mismatched[:2]})" if mismatched else "")
        raise ValueError(f"{flag}={parent.reference}: the network built from this run's --model/"
                         f"--variant/--model_overrides is not the parent's: {details}. Train with "
                         "the parent's flagfile (its model card lists it) plus --init_from")
    for weight in wanted:
        value = source[weight.path]
        if tuple(value.shape) != tuple(weight.shape):
            value = resample_position_embedding(value, int(weight.shape[0]), flag=flag,
                                                reference=parent.reference)
        weight.assign(value)
    return len(wanted)


def _is_position_embedding(path: str) -> bool:
    return path.split("/")[-2:-1] == ["position_embedding"]


def resample_position_embedding(embedding, tokens: int, flag: str = "--init_from",
                                reference: str = ""):
    """(T, width) learned embeddings of a square sqrt(T) x sqrt(T) token grid -> (tokens,
    width) on a sqrt(tokens) grid, by bicubic interpolation of each channel over the grid
    (align-corners-free, as `keras.ops.image.resize`)."""
    import keras
    import numpy as np

    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding.ndim != 2:
        raise ValueError(f"{flag}={reference}: expected (tokens, width) position embeddings, "
                         f"got shape {embedding.shape}")
    side_from, side_to = math.isqrt(embedding.shape[0]), math.isqrt(tokens)
    if side_from ** 2 != embedding.shape[0] or side_to ** 2 != tokens:
        raise ValueError(f"{flag}={reference}: position embeddings of {embedding.shape[0]} "
                         f"tokens cannot be resampled to {tokens}: both grids must be square")
    if side_from == side_to:
        return embedding
    grid = embedding.reshape(1, side_from, side_from, embedding.shape[1])
    resized = keras.ops.image.resize(grid, (side_to, side_to), interpolation="bicubic",
                                     antialias=side_to < side_from)
    return np.asarray(keras.ops.convert_to_numpy(resized), np.float32).reshape(tokens, -1)


def freeze(model, what: str) -> int:
    """Makes layers untrainable: `backbone` freezes the feature extractor (all but the
    head). Returns the number of trainable weights left."""
    if what not in FREEZE:
        raise ValueError(f"--freeze={what}: expected one of {list(FREEZE)}")
    if what == "backbone":
        found = False
        for layer in model.layers:
            if layer.name == "backbone":
                layer.trainable = False
                found = True
        if not found:
            raise ValueError("--freeze=backbone: the model has no layer named 'backbone'")
    return len(model.trainable_weights)
