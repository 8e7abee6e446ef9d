"""Registry, variants, overrides, stems, size budget, FLOP estimate."""

import pathlib
import re

import keras
import pytest

from deeplense_tf import models

SHIPPING_BUDGET_PARAMS = 5_000_000   # 20 MB of float32 weights


def feature_shape(name, image_shape, **overrides):
    backbone = models.build_backbone(name, image_shape=image_shape, **overrides)
    return tuple(backbone.output.shape[1:])


@pytest.mark.parametrize("call, message", [
    (lambda c: models.variants("resnet50"), "Unknown model 'resnet50'; accepted: hybrid, resnet18"),
    (lambda c: c.build_tiny("resnet50"), "accepted: hybrid, resnet18, resnet34, vit"),
    (lambda c: c.build_tiny("vit", variant="L"), "Unknown variant 'L' of vit; accepted: test"),
    (lambda c: c.build_tiny("vit", depht=2), "Unknown override.*depht.*accepted:.*depth"),
    (lambda c: c.build_tiny("resnet18", patch_size=4), "patch_size for resnet18; accepted: stem, width"),
    (lambda c: c.build_tiny("resnet18", stem="7x7"), "Unknown stem '7x7'; accepted: auto"),
    (lambda c: c.build_tiny("vit", patch_size=5), "must divide the 32x32 grid; accepted: auto, 1, 2, 4"),
    (lambda c: c.build_tiny("vit", width=18, num_heads=4), "multiple of num_heads"),
    (lambda c: c.build_tiny("resnet18", image_shape=(32,)), "image_shape"),
])
def test_errors_name_the_value_and_list_accepted_ones(call, message, checks):
    with pytest.raises(ValueError, match=message):
        call(checks)


def test_overrides_apply():
    assert feature_shape("resnet18", (32, 32, 1), variant="test", width=16)[-1] == 128
    assert feature_shape("vit", (32, 32, 1), variant="test", patch_size=8, width=24,
                         num_heads=3) == (16, 24)


def test_variants_are_copies():
    models.variants("vit")["test"]["width"] = 1
    assert models.variants("vit")["test"]["width"] == 16


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("size", [64, 150])
def test_default_variant_fits_shipping_budget(name, size):
    model = models.build_regressor(name, image_shape=(size, size, 1), targets=["t"],
                                   target_mean=0.0, target_std=1.0)
    assert model.count_params() <= SHIPPING_BUDGET_PARAMS
    keras.backend.clear_session()


def test_default_model_file_fits_20_mb(tmp_path):
    model = models.build_regressor("hybrid", image_shape=(150, 150, 1), targets=["t"],
                                   target_mean=0.0, target_std=1.0)
    model.save(tmp_path / "m.keras")
    assert (tmp_path / "m.keras").stat().st_size <= 20e6


def test_auto_stem_keeps_resolution_below_128_px():
    assert feature_shape("resnet18", (64, 64, 1), variant="test") == (8, 8, 128)         # s1
    assert feature_shape("resnet18", (150, 150, 1), variant="test") == (10, 10, 128)     # s2
    assert feature_shape("resnet18", (64, 64, 1), variant="test", stem="imagenet") == (2, 2, 128)
    assert feature_shape("hybrid", (64, 64, 1), variant="test") == (256, 16)             # 16x16


def test_input_binning_reads_the_image_at_a_coarser_pixel_scale():
    """A 2x2-binned 150 px image gives the token grid of a 75 px one (the auto stem
    deciding on the binned size), the first layer averages 2x2 blocks exactly, and a
    size the binning does not divide is refused."""
    import numpy as np

    assert feature_shape("hybrid", (150, 150, 1), variant="test", input_binning=2) == \
        feature_shape("hybrid", (75, 75, 1), variant="test") == (361, 16)   # s1: 75 -> 19x19
    backbone = models.build_backbone("hybrid", image_shape=(8, 8, 1), variant="test",
                                     input_binning=2)
    image = np.arange(64, dtype="float32").reshape(1, 8, 8, 1)
    binned = keras.Model(backbone.input, backbone.get_layer("input_binning").output)(image)
    np.testing.assert_allclose(np.asarray(binned)[0, :, :, 0],
                               image[0, :, :, 0].reshape(4, 2, 4, 2).mean(axis=(1, 3)))
    with pytest.raises(ValueError, match=r"input_binning=4 must divide the 150x150 image"):
        models.build_backbone("hybrid", image_shape=(150, 150, 1), variant="test",
                              input_binning=4)
    with pytest.raises(ValueError, match=r"input_binning must be a positive integer; got 0"):
        models.build_backbone("hybrid", image_shape=(64, 64, 1), variant="test",
                              input_binning=0)


def test_auto_patch_size():
    assert feature_shape("vit", (64, 64, 1), variant="test") == (256, 16)     # patch 4
    assert feature_shape("vit", (150, 150, 1), variant="test") == (225, 16)   # patch 10
    with pytest.raises(ValueError, match="No patch size"):
        feature_shape("vit", (101, 101, 1), variant="test")


def test_no_grouped_or_depthwise_convolutions():
    """Keras wraps grouped convolutions in XLA-must-compile functions TF Serving refuses."""
    for name in models.list_models():
        for variant in ("test", models.default_variant(name)):  # same layer types in all
            backbone = models.build_backbone(name, image_shape=(64, 64, 1), variant=variant)
            for layer in backbone.layers:
                assert not isinstance(layer, (keras.layers.DepthwiseConv2D,
                                              keras.layers.SeparableConv2D)), layer.name
                assert getattr(layer, "groups", 1) == 1, layer.name
            keras.backend.clear_session()


def test_flops_match_published_resnet18():
    """ImageNet ResNet-18 at 224 px: 1.82 GMACs, 11.18 M backbone parameters."""
    backbone = models.build_backbone("resnet18", image_shape=(224, 224, 3), variant="B",
                                     stem="imagenet")
    cost = models.count_params_and_flops(backbone)
    assert cost.params == pytest.approx(11.18e6, rel=0.01)
    assert cost.flops_per_image == pytest.approx(2 * 1.82e9, rel=0.02)


def test_model_code_is_pure_keras():
    """Only keras.ops inside the model, so it also runs under the JAX backend."""
    package = pathlib.Path(models.__file__).parent
    for source in package.glob("*.py"):
        assert not re.search(r"^(import|from) tensorflow|\btf\.", source.read_text(), re.M), source.name
