"""Hybrid backbone: a ResNet stem and stages feeding a transformer encoder.

Plain ViTs trained from scratch lag CNNs on lensing images (published DeepLense
results): convolutions bring the locality prior that a ViT must otherwise learn from
data, and the encoder then relates features around the whole Einstein ring. As in ViT-Hybrid (Dosovitskiy et al. 2021), the
convolutional feature map is tokenized with `patch_size` 1 by default.

With the default three stages (strides 1, 2, 2) and the `auto` stem, 64 px images give
a 16x16 token grid and 150 px images a 19x19 grid.
"""

import keras

from deeplense_tf.models import resnet, vit


def hybrid_backbone(image_shape, *, stem, conv_width, conv_blocks, patch_size, width, depth,
                    num_heads, mlp_ratio, input_binning=1, name="backbone"):
    """(H, W, C) normalized image -> (tokens, width) sequence.

    `input_binning` b > 1 averages b x b blocks of the normalized image first: an image
    sampled finer than its PSF needs (HST-like 0.04" pixels under a 0.14" PSF) is read at
    b times the pixel scale, for about 1/b^2 of the cost; the model still takes the raw,
    full-size images."""
    if int(conv_width) < 1 or not conv_blocks:
        raise ValueError(f"conv_width must be positive and conv_blocks non-empty; got "
                         f"{conv_width}, {conv_blocks}.")
    if not isinstance(input_binning, int) or isinstance(input_binning, bool) or input_binning < 1:
        raise ValueError(f"input_binning must be a positive integer; got {input_binning!r}.")
    if image_shape[0] % input_binning or image_shape[1] % input_binning:
        raise ValueError(f"input_binning={input_binning} must divide the {image_shape[0]}x"
                         f"{image_shape[1]} image.")
    inputs = keras.Input(shape=image_shape, name="normalized_image")
    x = inputs
    if input_binning > 1:
        x = keras.layers.AveragePooling2D(input_binning, name="input_binning")(x)
        image_shape = tuple(x.shape[1:])
    x = resnet.apply_stem(x, int(conv_width), resnet.resolve_stem(stem, image_shape))
    x = resnet.apply_stages(x, tuple(conv_blocks), int(conv_width))
    x = vit.apply_tokenizer(x, patch_size, int(width))
    x = vit.apply_encoder(x, depth=int(depth), num_heads=int(num_heads), mlp_ratio=mlp_ratio)
    return keras.Model(inputs, x, name=name)
