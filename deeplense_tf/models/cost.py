"""Parameter count and an analytic FLOP estimate per image.

FLOPs count a multiply-add as 2 and sum the matrix products only: convolutions, dense
layers, and attention (Q/K/V/output projections plus the two N x N products).
Normalization, activations, pooling and additions are left out (a few percent). A layer
that computes something else (the macro-model twin's fit) says what it costs through a
`flops_per_image()` method.
"""

import math
import typing

import keras


class ModelCost(typing.NamedTuple):
    params: int            # all weights, trainable or not (BatchNorm statistics included)
    flops_per_image: int


def count_params_and_flops(model):
    """-> ModelCost(params, flops_per_image) of a built functional model."""
    return ModelCost(int(model.count_params()), int(_flops(model)))


def _flops(layer):
    if isinstance(layer, keras.layers.MultiHeadAttention):
        tokens = layer.output.shape[1]
        projections = sum(math.prod(w.shape) for w in layer.weights if len(w.shape) > 1)
        return 2 * tokens * projections + 4 * tokens * tokens * layer.num_heads * layer.key_dim
    if isinstance(layer, keras.layers.Conv2D):
        return 2 * math.prod(layer.kernel.shape) * math.prod(layer.output.shape[1:3])
    if isinstance(layer, keras.layers.Dense):
        return 2 * math.prod(layer.kernel.shape) * math.prod(layer.output.shape[1:-1])
    if callable(getattr(layer, "flops_per_image", None)):
        return layer.flops_per_image()
    if isinstance(layer, keras.Model):
        return sum(_flops(sub) for sub in layer.layers)
    return 0
