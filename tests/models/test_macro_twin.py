"""The macro-model twin layer: rendering against the simulator, the fit, the model around
it (save, load, export) and what it refuses."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from deeplense_tf import training
from deeplense_tf.models import build_regressor
from deeplense_tf.models import twin as twin_lib
from deeplense_tf.simulation import recipes

RECIPE = "model_ii_axion"


@pytest.fixture(scope="module")
def layer():
    return twin_lib.MacroTwinResidual(RECIPE)


def _lens(log10_m, angle, center, noise_seed=None):
    """A `model_ii_axion` image with chosen vortex and source centre (noiseless without
    a seed), rendered by the simulator."""
    recipe = recipes.get(RECIPE)
    sim = recipe.simulator(noise=False)
    rng = np.random.default_rng(0)
    macro, source = recipe.deflector.sample(rng), recipe.source.sample(rng)
    source.update(source_center_x=center[0], source_center_y=center[1])
    vortex = recipe.substructures["axion"].realization(
        log10_m, angle, sim.geometry, (macro["lens_center_x"], macro["lens_center_y"]),
        sim.instrument.pixel_scale_arcsec / sim.supersampling)
    x, y = sim.ray_grid
    ax, ay = sim.macro_deflection(macro)
    sx, sy = vortex.deflection(x, y)
    image = sim.render(x - ax - sx, y - ay - sy, source)
    if noise_seed is not None:
        exposure = sim.instrument.exposure_time_s.sample(rng)
        image = sim.add_noise(image, exposure, np.random.default_rng(noise_seed))
    return image.astype(np.float32), sim.instrument.background_rms


@pytest.mark.parametrize("recipe", [RECIPE, "model_iii_axion"])
def test_twin_renders_as_the_simulator_and_its_derivatives_are_the_slopes(layer, recipe):
    if recipe != RECIPE:
        layer = twin_lib.MacroTwinResidual(recipe)
    tw = layer.twin
    centers = np.array([[0.1, -0.2], [-0.33, 0.05], [0.0, 0.0]])
    images, dx, dy = (np.asarray(a, np.float64)
                      for a in layer._render(ops.convert_to_tensor(centers.astype(np.float32))))
    h = 1e-4
    for i, c in enumerate(centers):
        expected = tw.render(c)
        assert np.abs(images[i] - expected).max() < 1e-5 * expected.max()
        for derivative, e in ((dx[i], np.array([h, 0.0])), (dy[i], np.array([0.0, h]))):
            slope = (tw.render(c + e) - tw.render(c - e)) / (2 * h)
            assert np.abs(derivative - slope).max() < 1e-3 * np.abs(slope).max()


def test_the_twin_is_the_vortex_of_zero_length(layer):
    """A vortex of the heaviest axion (6e-4" long, far below a ray's 0.05") gives the
    twin's image: same mass, at the centre."""
    image, rms = _lens(-18.0, 0.3, (0.12, -0.07))
    expected = layer.twin.render((0.12, -0.07))
    assert np.abs(image - expected).max() < 1e-3 * rms


def test_fit_finds_the_source_centre(layer):
    centers = [(0.21, -0.13), (-0.34, 0.3), (0.02, 0.005)]
    noiseless = np.stack([layer.twin.render(c) for c in centers]).astype(np.float32)
    _, found = layer.fit(noiseless[..., None])
    np.testing.assert_allclose(np.asarray(found), centers, atol=2e-5)
    # A short vortex and noise: the centre still to a few 1e-4" (the prior is 0.7" wide).
    noisy = np.stack([_lens(-22.3, a, c, noise_seed=i)[0]
                      for i, (a, c) in enumerate(zip((0.2, 1.4, 2.9), centers))])
    _, found = layer.fit(noisy[..., None])
    assert np.abs(np.asarray(found) - centers).max() < 1e-3


def test_residual_is_faint_for_a_short_vortex_and_structure_for_a_long_one(layer):
    """-22.2: a 0.04" vortex, below a ray's spacing (the plateau, Delta chi^2 < 1);
    -23.5: 1.9" long, across the ring."""
    short, rms = _lens(-22.2, 1.0, (0.1, 0.1))
    long, _ = _lens(-23.5, 1.0, (0.1, 0.1))
    out = np.asarray(layer(np.stack([short, long])[..., None]))
    assert out.shape == (2, 64, 64, 2)
    np.testing.assert_array_equal(out[..., 0], np.stack([short, long]))
    assert np.abs(out[0, ..., 1]).max() < 0.5 * rms
    assert np.abs(out[1, ..., 1]).max() > 10 * rms


def _graph_flops(layer, num_pix):
    """The layer's floating-point operations per image, read off its TensorFlow graph op by
    op (element-wise: output elements; reductions: input elements; convolutions and
    matrix products: 2 per multiply-add): independent of the layer's own count."""
    fn = tf.function(lambda x: layer(x)).get_concrete_function(
        tf.TensorSpec((1, num_pix, num_pix, 1), tf.float32))
    elementwise = {"Add", "AddV2", "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "Sqrt",
                   "Pow", "Exp", "Neg"}
    total = 0
    for op in fn.graph.get_operations():
        if op.type in elementwise:
            total += op.outputs[0].shape.num_elements()
        elif op.type in ("Sum", "Mean"):
            total += op.inputs[0].shape.num_elements()
        elif op.type == "Conv2D":
            kernel = op.inputs[1].shape.as_list()
            total += 2 * int(np.prod(kernel[:-1])) * op.outputs[0].shape.num_elements()
        elif op.type in ("MatMul", "BatchMatMulV2"):
            rows, inner = op.inputs[0].shape.as_list()[-2:]
            total += 2 * rows * inner * op.outputs[0].shape.as_list()[-1]
    return total


def test_flop_count_matches_the_graph_and_enters_the_model_cost(layer):
    """The fit's cost (not matrix products alone) is counted in the model's FLOPs."""
    from deeplense_tf import models

    counted = layer.flops_per_image()
    assert counted == pytest.approx(_graph_flops(layer, 64), rel=0.05)
    fewer = twin_lib.MacroTwinResidual(RECIPE, gauss_newton_steps=1)
    assert fewer.flops_per_image() == pytest.approx(_graph_flops(fewer, 64), rel=0.05)
    kwargs = dict(variant="test", image_shape=(64, 64, 1), targets=["log10_m_axion"],
                  target_mean=[-23.0], target_std=[0.6], normalization="asinh",
                  asinh_scale=0.01)
    with_twin = models.count_params_and_flops(build_regressor("resnet18", macro_twin=RECIPE,
                                                              **kwargs))
    without = models.count_params_and_flops(build_regressor("resnet18", **kwargs))
    # the twin's second channel widens the first convolution; the rest is the fit
    assert with_twin.flops_per_image - without.flops_per_image > counted


def test_regressor_with_the_twin_saves_loads_and_exports(tmp_path):
    import keras

    from deeplense_tf import export

    model = build_regressor("resnet18", variant="test", image_shape=(64, 64, 1),
                            targets=["log10_m_axion"], target_mean=[-23.0], target_std=[0.6],
                            normalization="asinh", asinh_scale=0.01, macro_twin=RECIPE)
    assert model.get_layer("macro_twin").recipe == RECIPE
    assert twin_lib.macro_twin_recipe(model) == RECIPE
    assert not model.get_layer("macro_twin").weights  # rebuilt from the recipe's name
    images = np.stack([_lens(m, 0.7, (0.1, -0.1), noise_seed=1)[0] for m in (-23.4, -22.5)])
    images = images[..., None]
    expected = model(images)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for key, value in loaded(images).items():
        np.testing.assert_allclose(np.asarray(value), np.asarray(expected[key]), rtol=1e-5)
    version = export.export_saved_model(path, str(tmp_path / "export"), "twin",
                                        warmup_batch_sizes=())
    serving = tf.saved_model.load(version).signatures["serving_default"]
    served = serving(image=tf.constant(images))
    np.testing.assert_allclose(served["log10_m_axion"].numpy(),
                               np.asarray(expected["log10_m_axion"]), rtol=1e-5)


def test_bad_uses_are_refused_by_name(tiny_data):
    def config(dataset=f"deeplense_lensing/{RECIPE}", **kwargs):
        return training.TrainConfig(data_dir=tiny_data, dataset=dataset, macro_twin=True,
                                    targets=["log10_m_axion"], **kwargs).validate()

    with pytest.raises(ValueError, match="no fixed macro model to subtract"):
        config("deeplense_lensing/euclid_axion", augment=False)
    with pytest.raises(ValueError, match="--noaugment"):
        config()
    with pytest.raises(ValueError, match="cannot start from --init_from"):
        config(augment=False, init_from="pretrained:hybrid_model_ii_axion")
    sized = config(f"deeplense_lensing/{RECIPE}__2000_500_500_seed0:1.0.0", augment=False)
    assert sized.macro_twin_recipe == RECIPE
    with pytest.raises(ValueError, match="renders 64 px images"):
        build_regressor("resnet18", variant="test", image_shape=(32, 32, 1), targets=["x"],
                        target_mean=[0.0], target_std=[1.0], macro_twin=RECIPE)
    with pytest.raises(ValueError, match="single-channel"):
        build_regressor("resnet18", variant="test", image_shape=(64, 64, 3), targets=["x"],
                        target_mean=[0.0], target_std=[1.0], macro_twin=RECIPE)
    with pytest.raises(ValueError, match="recipe: unknown name"):
        twin_lib.MacroTwinResidual("no_such_recipe")
    from deeplense_tf import evaluate

    model = build_regressor("resnet18", variant="test", image_shape=(64, 64, 1),
                            targets=["log10_m_axion"], target_mean=[-23.0], target_std=[0.6],
                            macro_twin=RECIPE)
    with pytest.raises(ValueError, match="--tta: the model subtracts the 'model_ii_axion'"):
        evaluate.evaluate(model, tiny_data, "deeplense_lensing/euclid_axion_tiny", tta=True)
    from deeplense_tf import transfer

    parent = transfer.Parent(reference="twin.keras", path="twin.keras", sha256="",
                             shipped_name=None, image_shape=(64, 64, 1),
                             targets=["log10_m_axion"], instrument=None, dataset=None,
                             model=model)
    with pytest.raises(ValueError, match="twin.keras: the model reads each image beside"):
        transfer.check_compatible(parent, (64, 64, 1), f"deeplense_lensing/{RECIPE}",
                                  ["log10_m_axion"])


@pytest.mark.slow
def test_training_with_the_twin_end_to_end(tmp_path):
    from deeplense_tf import build_dataset, evaluate

    data_dir = str(tmp_path / "data")
    build_dataset.build(f"{RECIPE}_tiny", data_dir, num_workers=1)
    dataset = f"deeplense_lensing/{RECIPE}_tiny"
    config = training.TrainConfig(data_dir=data_dir, dataset=dataset, targets=["log10_m_axion"],
                                  model="resnet18", variant="test", train_steps=2, batch_size=4,
                                  augment=False, macro_twin=True, normalization="asinh")
    training.train_and_evaluate(config, str(tmp_path / "run"))
    results = evaluate.run(str(tmp_path / "run" / "model.keras"), data_dir, dataset,
                           str(tmp_path / "eval"))
    assert results["targets"]["log10_m_axion"]["model"]["count"] == 8
