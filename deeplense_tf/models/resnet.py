"""ResNet-18/34 backbones (basic residual blocks, v1) with a stem sized for lensing images.

Why not `keras_cv.models.ResNetBackbone` (checked with keras-cv 0.9.0): its stem is
fixed to a 7x7/2 convolution with 64 filters plus a 3x3/2 max-pool, which turns a 64 px
image into 16 px before the first residual stage (final map 2x2) and throws away the
few-pixel substructure signal; and with basic blocks its first stage has an identity
shortcut from that 64-filter stem, so any base width other than 64 fails to build. The
blocks below are the same v1 basic blocks, with a configurable stem and width.

Stems (`stem`):
  - `s1`: 3x3 convolution, stride 1: full resolution (CIFAR-style), for <= ~100 px.
  - `s2`: 3x3 convolution, stride 2: 150 px images become 75 px, still finer than the
    64 px data sets, at a quarter of the cost of `s1`.
  - `imagenet`: 7x7/2 convolution + 3x3/2 max-pool, for comparison with published
    ImageNet-style ResNets.
  - `auto`: `s1` below 128 px on the shorter side, else `s2`.
"""

import keras

STEMS = ("auto", "s1", "s2", "imagenet")
STAGE_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_BN = dict(epsilon=1.001e-5, momentum=0.9)  # keras-cv's epsilon; momentum of torchvision


def resolve_stem(stem, image_shape):
    if stem not in STEMS:
        raise ValueError(f"Unknown stem {stem!r}; accepted: {', '.join(STEMS)}.")
    if stem == "auto":
        return "s1" if min(image_shape[:2]) < 128 else "s2"
    return stem


def apply_stem(x, filters, stem, name="stem"):
    """Convolution stem; `stem` already resolved (not `auto`)."""
    if stem == "imagenet":
        x = keras.layers.Conv2D(filters, 7, strides=2, padding="same", use_bias=False,
                                name=f"{name}_conv")(x)
    else:
        x = keras.layers.Conv2D(filters, 3, strides=1 if stem == "s1" else 2, padding="same",
                                use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(**_BN, name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    if stem == "imagenet":
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return x


def apply_basic_block(x, filters, stride, name):
    """Two 3x3 convolutions with a residual connection (He et al. 2016, v1)."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                       name=f"{name}_shortcut_conv")(x)
        shortcut = keras.layers.BatchNormalization(**_BN, name=f"{name}_shortcut_bn")(shortcut)
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                            name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(**_BN, name=f"{name}_bn1")(y)
    y = keras.layers.Activation("relu", name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(**_BN, name=f"{name}_bn2")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def apply_stages(x, stage_blocks, width):
    """Stage i has `width * 2**i` filters; every stage but the first halves the map."""
    for i, blocks in enumerate(stage_blocks):
        for j in range(blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            x = apply_basic_block(x, width * 2 ** i, stride, name=f"stage{i + 1}_block{j + 1}")
    return x


def resnet_backbone(image_shape, *, stage_blocks, width, stem, name="backbone"):
    """(H, W, C) normalized image -> (h, w, 8 * width) feature map."""
    if int(width) < 1:
        raise ValueError(f"width must be a positive number of filters; got {width}.")
    inputs = keras.Input(shape=image_shape, name="normalized_image")
    x = apply_stem(inputs, int(width), resolve_stem(stem, image_shape))
    x = apply_stages(x, stage_blocks, int(width))
    return keras.Model(inputs, x, name=name)
