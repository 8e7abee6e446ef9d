"""Registry of backbones and their variants; locked overrides.

A variant is a dict of hyperparameters; the keys of a model's variants are exactly the
overrides it accepts, so a misspelled override fails loudly instead of being ignored.
Parameter counts and the 20 MB shipping budget (about 5 M float32 parameters) are
checked by `tests/models/`; the `B` ResNets and the `Ti`/`S` ViTs are there for
comparison with published sizes and exceed that budget.
"""

import copy
import dataclasses
from typing import Any, Callable, Mapping

from deeplense_tf.models import hybrid, resnet, vit


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    builder: Callable[..., Any]       # builder(image_shape, **fixed, **hyperparameters)
    variants: Mapping[str, Mapping[str, Any]]
    default_variant: str
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # set by the name


def _resnet_variants(shipped_width):
    # `S` is the widest multiple of 8 that keeps the model inside the shipping budget;
    # `B` is the ImageNet width (64) for comparison.
    # `test` is 16 wide, not 8: TF 2.21's oneDNN CPU kernels crash (SIGSEGV) in the
    # filter gradient of 1x1 stride-2 convolutions with 8 or fewer channels.
    return {"test": {"width": 16, "stem": "auto"},
            "S": {"width": shipped_width, "stem": "auto"},
            "B": {"width": 64, "stem": "auto"}}


def _vit(width, depth, num_heads, mlp_ratio, patch_size="auto"):
    return {"patch_size": patch_size, "width": width, "depth": depth, "num_heads": num_heads,
            "mlp_ratio": mlp_ratio}


def _hybrid(conv_width, conv_blocks, width, depth, num_heads, mlp_ratio):
    return {"stem": "auto", "conv_width": conv_width, "conv_blocks": conv_blocks,
            "input_binning": 1, **_vit(width, depth, num_heads, mlp_ratio, patch_size=1)}


_REGISTRY = {
    "resnet18": ModelSpec(resnet.resnet_backbone, _resnet_variants(32), "S",
                          {"stage_blocks": resnet.STAGE_BLOCKS["resnet18"]}),
    "resnet34": ModelSpec(resnet.resnet_backbone, _resnet_variants(24), "S",
                          {"stage_blocks": resnet.STAGE_BLOCKS["resnet34"]}),
    # mu, Ti and S are big_vision's sizes; XS is ours, inside the shipping budget.
    "vit": ModelSpec(vit.vit_backbone, {
        "test": _vit(16, 1, 2, 2),
        "mu": _vit(32, 1, 2, 4),
        "XS": _vit(128, 6, 4, 4),
        "Ti": _vit(192, 12, 3, 4),
        "S": _vit(384, 12, 6, 4),
    }, "XS"),
    "hybrid": ModelSpec(hybrid.hybrid_backbone, {
        "test": _hybrid(16, (1, 1, 1), 16, 1, 2, 2),  # 16: see _resnet_variants
        "Ti": _hybrid(16, (2, 2, 2), 96, 4, 3, 4),
        "S": _hybrid(32, (2, 2, 2), 192, 6, 3, 4),
    }, "S"),
}


def list_models():
    """Registered backbone names."""
    return sorted(_REGISTRY)


def _spec(name):
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; accepted: {', '.join(list_models())}.")
    return _REGISTRY[name]


def variants(name):
    """{variant: hyperparameters} of a model (a copy); iterating gives the variant names."""
    return copy.deepcopy(dict(_spec(name).variants))


def default_variant(name):
    return _spec(name).default_variant


def resolve(name, variant=None, **overrides):
    """-> (variant, hyperparameters): the variant's table row with `overrides` applied."""
    spec = _spec(name)
    variant = spec.default_variant if variant is None else variant
    if variant not in spec.variants:
        raise ValueError(f"Unknown variant {variant!r} of {name}; accepted: "
                         f"{', '.join(spec.variants)}.")
    hyperparameters = dict(spec.variants[variant])
    unknown = sorted(set(overrides) - set(hyperparameters))
    if unknown:
        raise ValueError(f"Unknown override(s) {', '.join(unknown)} for {name}; accepted: "
                         f"{', '.join(sorted(hyperparameters))}.")
    hyperparameters.update(overrides)
    return variant, hyperparameters


def build_backbone(name, *, image_shape, variant=None, **overrides):
    """Backbone alone: normalized (H, W, C) image -> feature map or token sequence."""
    _, hyperparameters = resolve(name, variant, **overrides)
    spec = _spec(name)
    return spec.builder(tuple(image_shape), **spec.fixed, **hyperparameters)
