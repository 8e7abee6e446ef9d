"""Regressor = image normalization -> backbone -> generic head -> target de-scaling.

Layer names a training loop or exporter may rely on:
  `image` (the input), `macro_twin` (optional: the image and its macro-model residual),
  `image_normalization`, `backbone` (a nested functional model),
  `head_pool`, `head_dropout`, `head_dense` (standardized outputs: K columns `z`, then,
  for the Gaussian head, K raw log-variances), `regression_output` (de-scaling to
  physical units; carries the target names and the training-split mean and std).
"""

import keras
import numpy as np
from keras import ops

from deeplense_tf.models import registry
from deeplense_tf.models.layers import STD_SUFFIX, ImageNormalization, RegressionOutput
from deeplense_tf.models.twin import MacroTwinResidual

OUTPUT_LAYER = "regression_output"


def build_regressor(name, *, image_shape, targets, head="gaussian",
                    normalization="per_image_standardization", pixel_mean=None, pixel_std=None,
                    asinh_scale=1.0, target_mean, target_std, variant=None, dropout=0.0,
                    log_var_bound=10.0, macro_twin=None, **overrides):
    """Builds a functional `keras.Model`: raw image in, physical units out.

    Args:
      name: a registered backbone (`list_models()`).
      image_shape: (H, W) or (H, W, C) of the raw images, e.g. (64, 64, 1).
      targets: target name or names, e.g. `["log10_m_axion"]`.
      head: `gaussian` (mean and 1-sigma per target, for a Gaussian NLL) or `point`.
      normalization: `ImageNormalization` mode; `pixel_mean`/`pixel_std` (for `global`)
        and `asinh_scale` (for `asinh`) are in raw pixel units.
      target_mean, target_std: training-split statistics per target, in physical units.
      variant: a row of `variants(name)`; None means `default_variant(name)`.
      dropout: rate before the head's dense layer.
      log_var_bound: bound on the standardized log-variance of the Gaussian head
        (10 -> predicted sigma within [0.0067, 148] target_std).
      macro_twin: a fixed-lens recipe name (`model_ii_axion`, `model_iii_axion`) or None:
        the network then reads each image beside its residual from the recipe's
        macro-model twin (`twin.MacroTwinResidual`, layer `macro_twin`, before the
        normalization); single-channel images only.
      **overrides: hyperparameters of the variant to change (its keys are the accepted
        ones), e.g. `width=64`, `stem="imagenet"`, `patch_size=8`.

    Returns:
      A model with one float32 input `image` of shape (batch, H, W, C) and a dict output
      `{target: (batch,), target + "_std": (batch,)}` of float32 tensors in physical units
      (no `_std` keys for `head="point"`), float32 under any mixed-precision policy.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) == 2:
        image_shape += (1,)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (H, W, C); got {image_shape}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}.")
    variant, _ = registry.resolve(name, variant, **overrides)
    output_layer = RegressionOutput(targets, target_mean, target_std, head=head,
                                    log_var_bound=log_var_bound, name=OUTPUT_LAYER)
    normalizer = ImageNormalization(normalization, pixel_mean=pixel_mean, pixel_std=pixel_std,
                                    asinh_scale=asinh_scale, name="image_normalization")
    backbone_shape = image_shape
    if macro_twin:
        if image_shape[-1] != 1:
            raise ValueError(f"macro_twin={macro_twin!r} reads single-channel images; got "
                             f"image_shape {image_shape}.")
        twin_layer = MacroTwinResidual(macro_twin, name="macro_twin")
        if image_shape[:2] != (twin_layer.twin.num_pix,) * 2:
            raise ValueError(f"macro_twin={macro_twin!r} renders {twin_layer.twin.num_pix} px "
                             f"images; got image_shape {image_shape}.")
        backbone_shape = image_shape[:2] + (2,)
    backbone = registry.build_backbone(name, image_shape=backbone_shape, variant=variant,
                                       **overrides)

    images = keras.Input(shape=image_shape, dtype="float32", name="image")
    features = backbone(normalizer(twin_layer(images) if macro_twin else images))
    outputs = apply_head(features, output_layer, dropout=dropout)
    return keras.Model(images, outputs, name=f"{name}_{variant}")


def apply_head(features, output_layer, *, dropout=0.0):
    """Generic head: pool -> dropout -> dense -> `output_layer`, all in float32.

    Feature maps (B, h, w, C) and token sequences (B, N, C) are both mean-pooled. The
    dense kernel starts at zero (as big_vision's heads): the untrained model predicts
    `target_mean` with sigma `target_std`, the prior, and training starts from there.
    """
    pool = (keras.layers.GlobalAveragePooling2D if len(features.shape) == 4
            else keras.layers.GlobalAveragePooling1D)
    x = pool(name="head_pool", dtype="float32")(features)
    x = keras.layers.Dropout(dropout, name="head_dropout", dtype="float32")(x)
    x = keras.layers.Dense(output_layer.units, kernel_initializer="zeros", name="head_dense",
                           dtype="float32")(x)
    return output_layer(x)


def _output_layer(model):
    """The `regression_output` layer of a regressor (an ensemble, `deeplense_tf.ensemble`,
    has its own)."""
    try:
        return model.get_layer(OUTPUT_LAYER)
    except ValueError:
        raise ValueError(f"model {model.name!r} has no {OUTPUT_LAYER!r} layer: not a "
                         "deeplense_tf regressor") from None


def target_names(model):
    """Target names of a regressor, in the order of `target_scaling`."""
    return list(_output_layer(model).targets)


def target_scaling(model):
    """-> (mean, std): float32 arrays of shape (K,), the training-split statistics the model
    de-scales with, in the order of `target_names(model)`."""
    layer = _output_layer(model)
    return (np.asarray(layer.target_mean, np.float32), np.asarray(layer.target_std, np.float32))


def standardize(model, values):
    """Physical units -> the standardized units the network predicts internally.

    `values` is a dict of labels or of model outputs: `value[t] -> (value - mean) / std`
    and `value[t + "_std"] -> value / std`; other keys are passed through. Exact (the
    de-scaling is affine) and differentiable, with `keras.ops`: use it inside the loss,
    e.g. for the Gaussian NLL in standardized units:
        z_true, z_pred = standardize(model, y), standardize(model, model(x))
        nll = log(z_pred[t + "_std"]) + 0.5 * ((z_true[t] - z_pred[t]) / z_pred[t + "_std"])**2
    """
    mean, std = target_scaling(model)
    out = dict(values)
    for name, m, s in zip(target_names(model), mean.tolist(), std.tolist()):
        if name in values:
            out[name] = (ops.cast(values[name], "float32") - m) / s
        if name + STD_SUFFIX in values:
            out[name + STD_SUFFIX] = ops.cast(values[name + STD_SUFFIX], "float32") / s
    return out
