"""Keras 3 regressors of dark-matter properties from lensing images (ResNet, ViT, hybrid).

    model = build_regressor("resnet18", image_shape=(64, 64, 1),
                            targets=["log10_m_axion"], head="gaussian",
                            target_mean=[-23.0], target_std=[0.6])
    model.predict(raw_images)  # {"log10_m_axion": (B,), "log10_m_axion_std": (B,)}

Contract (relied on by training, export and serving):
  - one float32 input `image`, (batch, H, W, C) raw pixel values; the first layer
    (`image_normalization`) normalizes them, after the optional `macro_twin`
    (`twin.MacroTwinResidual`: the image beside its macro-model residual);
  - a dict output of float32 (batch,) tensors in physical units, one key per target and,
    for the Gaussian head, `<target>_std` (1-sigma, positive);
  - the training-split target statistics live in the `regression_output` layer:
    `target_scaling(model)` returns them and `standardize(model, values)` maps labels or
    outputs to the standardized units for the loss;
  - pure `keras.ops`, no grouped or depthwise convolutions, XLA-compatible; every custom
    layer is registered under the `deeplense_tf` package, so `keras.models.load_model`
    needs only `import deeplense_tf.models`.
"""

from deeplense_tf.models.cost import ModelCost, count_params_and_flops
from deeplense_tf.models.ood import OODScore
from deeplense_tf.models.layers import (HEADS, NORMALIZATION_MODES, ImageNormalization,
                                        PositionEmbedding, RegressionOutput)
from deeplense_tf.models.twin import MacroTwinResidual
from deeplense_tf.models.registry import (build_backbone, default_variant, list_models,
                                          resolve, variants)
from deeplense_tf.models.regressor import (apply_head, build_regressor, standardize,
                                           target_names, target_scaling)

__all__ = [
    "HEADS", "MacroTwinResidual", "NORMALIZATION_MODES", "ImageNormalization", "ModelCost",
    "OODScore",
    "PositionEmbedding",
    "RegressionOutput", "apply_head", "build_backbone", "build_regressor",
    "count_params_and_flops", "default_variant", "list_models", "resolve", "standardize",
    "target_names", "target_scaling", "variants",
]
