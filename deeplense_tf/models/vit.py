"""Vision Transformer backbone (Dosovitskiy et al. 2021), pre-LayerNorm, no class token.

The head mean-pools the tokens ("gap" in big_vision), so no class token is needed.
keras-cv 0.9.0 has no plain ViT backbone and keras-hub's pulls `tensorflow-text`
(incompatible with `tensorflow-cpu`), hence these few lines on Keras' own
`MultiHeadAttention`.

`patch_size="auto"` picks the smallest patch that divides the image and gives at most
256 tokens (64 px -> 4, 150 px -> 10, 32 px -> 2; an error if that leaves fewer than 16):
the signal is a few-pixel perturbation of the Einstein ring, so patches are kept as
small as the attention cost allows.
"""

import keras

from deeplense_tf.models.layers import PositionEmbedding

MAX_AUTO_TOKENS = 256
MIN_AUTO_TOKENS = 16


def resolve_patch_size(patch_size, grid_shape):
    """`patch_size` (int or `auto`) for an (h, w) grid; it must divide both sides."""
    h, w = int(grid_shape[0]), int(grid_shape[1])
    divisors = [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
    if patch_size == "auto":
        p = next(p for p in divisors if (h // p) * (w // p) <= MAX_AUTO_TOKENS)
        if (h // p) * (w // p) < MIN_AUTO_TOKENS:
            raise ValueError(f"No patch size divides the {h}x{w} grid into "
                             f"{MIN_AUTO_TOKENS} to {MAX_AUTO_TOKENS} tokens; pass patch_size "
                             f"(accepted: {', '.join(map(str, divisors))}) or crop the image.")
        return p
    if patch_size not in divisors:
        raise ValueError(f"patch_size {patch_size!r} must divide the {h}x{w} grid; "
                         f"accepted: auto, {', '.join(map(str, divisors))}.")
    return int(patch_size)


def apply_tokenizer(x, patch_size, width, name="patch_embedding"):
    """(B, h, w, C) -> (B, tokens, width) with learned position embeddings."""
    p = resolve_patch_size(patch_size, x.shape[1:3])
    x = keras.layers.Conv2D(width, p, strides=p, padding="valid", name=name)(x)
    x = keras.layers.Reshape((x.shape[1] * x.shape[2], width), name="tokens")(x)
    return PositionEmbedding(name="position_embedding")(x)


def apply_encoder(x, *, depth, num_heads, mlp_ratio, name="encoder"):
    """`depth` pre-LN transformer blocks, then a final LayerNormalization."""
    width = x.shape[-1]
    if width % num_heads:
        raise ValueError(f"width {width} must be a multiple of num_heads {num_heads}.")
    for i in range(depth):
        block = f"{name}_block{i + 1}"
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{block}_ln1")(x)
        y = keras.layers.MultiHeadAttention(num_heads, width // num_heads,
                                            name=f"{block}_attention")(y, y)
        x = keras.layers.Add(name=f"{block}_add1")([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{block}_ln2")(x)
        y = keras.layers.Dense(int(width * mlp_ratio), activation="gelu",
                               name=f"{block}_mlp1")(y)
        y = keras.layers.Dense(width, name=f"{block}_mlp2")(y)
        x = keras.layers.Add(name=f"{block}_add2")([x, y])
    return keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm")(x)


def vit_backbone(image_shape, *, patch_size, width, depth, num_heads, mlp_ratio,
                 name="backbone"):
    """(H, W, C) normalized image -> (tokens, width) sequence."""
    inputs = keras.Input(shape=image_shape, name="normalized_image")
    x = apply_tokenizer(inputs, patch_size, int(width))
    x = apply_encoder(x, depth=int(depth), num_heads=int(num_heads), mlp_ratio=mlp_ratio)
    return keras.Model(inputs, x, name=name)
