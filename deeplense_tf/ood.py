r"""Fits a model's out-of-distribution score and measures what it flags.

  python -m deeplense_tf.ood --model=MODEL.keras (or a shipped name) --data_dir=DATA \
      --dataset=deeplense_lensing/CONFIG --output=MODEL_OOD.keras [--report=DIR]

Statistics of the pooled features and of the raw pixels come from the training split
(`--train_examples` of them); the threshold is the `--quantile` of the score on the
validation split, so that about 1 - quantile of in-distribution images are flagged; the
test split then says how many really are (the target: at most 5%). The same model is run
on shifted images of its own recipe (`deeplense_tf.simulation.perturbations`: lens
light, a wider PSF, neighbours, cosmic rays) and on another instrument's simulations of
the same size, and the flagged fraction of each is reported. The written model carries
the score as outputs `ood_score` and `ood_flag` (`deeplense_tf.models.ood.OODScore`).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from deeplense_tf import console


POOL_LAYER = "head_pool"
# A recipe of the same physics seen by the other instrument (same image size).
OTHER_INSTRUMENT = {"model_ii_axion": "model_iii_axion", "model_iii_axion": "model_ii_axion",
                    "euclid_axion": "hst_axion", "hst_axion": "euclid_axion"}
SHRINKAGE = 0.05  # covariance -> (1 - s) cov + s tr(cov)/F I: a stable inverse


def pooled_features(model):
    """The symbolic pooled penultimate features of `model`: its `head_pool` output, or for
    an ensemble (`deeplense_tf.ensemble`) its members' side by side."""
    try:
        return model.get_layer(POOL_LAYER).output
    except ValueError:
        pass
    from deeplense_tf.ensemble import COMBINE_LAYER

    try:
        return model.get_layer(COMBINE_LAYER).output[1]
    except ValueError:
        raise ValueError(f"model {model.name!r} has no {POOL_LAYER!r} layer: not a "
                         "deeplense_tf regressor or ensemble") from None


def feature_model(model):
    """raw images -> pooled penultimate features (B, F)."""
    import keras

    return keras.Model(model.input, pooled_features(model))


def _precision_cholesky(samples):
    mean = samples.mean(axis=0)
    cov = np.cov(samples, rowvar=False)
    cov = np.atleast_2d(cov)
    dim = cov.shape[0]
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / dim * np.eye(dim)
    cov += 1e-9 * np.trace(cov) / dim * np.eye(dim)
    precision = np.linalg.inv(cov)
    return mean, np.linalg.cholesky((precision + precision.T) / 2)


def _split_images(pipeline, split, limit=None):
    images = []
    count = 0
    for batch, _ in pipeline.eval_dataset(split, 256).as_numpy_iterator():
        images.append(batch)
        count += len(batch)
        if limit and count >= limit:
            break
    images = np.concatenate(images)
    return images[:limit] if limit else images


def with_ood(model, layer):
    """A copy of `model` (shared layers and weights) with the `layer`'s outputs added."""
    import keras

    outputs = dict(model.output)
    outputs.update(layer([pooled_features(model), model.input]))
    return keras.Model(model.input, outputs, name=model.name)


def strip_ood(model):
    """The model without OOD outputs (to fit them anew)."""
    import keras

    if "ood_score" not in model.output:
        return model
    outputs = {k: v for k, v in model.output.items() if not k.startswith("ood_")}
    return keras.Model(model.input, outputs, name=model.name)


def fit(model, data_dir: str, dataset: str, *, train_examples: int = 8000,
        quantile: float = 0.96, batch_size: int = 256):
    """(model with OOD outputs, report) fitted on `dataset`'s train and validation splits
    and checked on its test split."""
    from deeplense_tf import input_pipeline, models
    from deeplense_tf.models.ood import OODScore, pixel_statistics

    if not 0.5 < quantile < 1:
        raise ValueError(f"--quantile: expected a value in (0.5, 1), got {quantile}")
    model = strip_ood(model)
    targets = models.target_names(model)
    pipeline = input_pipeline.Pipeline(data_dir, dataset, targets, cache=False)
    if tuple(pipeline.image_shape) != tuple(model.input_shape[1:]):
        raise ValueError(f"--dataset={dataset}: images of shape {pipeline.image_shape}, but the "
                         f"model takes {tuple(model.input_shape[1:])}")
    extract = feature_model(model)
    train = _split_images(pipeline, "train", train_examples)
    median = np.median(train)
    asinh_scale = float(1.4826 * np.median(np.abs(train - median))) or 1.0
    frame = max(2, train.shape[1] // 16)
    features = extract.predict(train, batch_size=batch_size, verbose=0)
    pixels = np.asarray(pixel_statistics(train, asinh_scale, frame))
    layer = OODScore(features.shape[1], asinh_scale=asinh_scale, frame=frame, name="ood_score")
    layer([features[:1], train[:1]])  # build
    f_mean, f_chol = _precision_cholesky(features.astype(np.float64))
    p_mean, p_chol = _precision_cholesky(pixels.astype(np.float64))
    layer.set_statistics(f_mean, f_chol, p_mean, p_chol)
    d2_f, d2_p = (np.asarray(d) for d in layer.distances(features, train))
    layer.feature_median, layer.pixel_median = float(np.median(d2_f)), float(np.median(d2_p))
    scored = with_ood(model, layer)

    def scores(images):
        out = scored.predict(images, batch_size=batch_size, verbose=0)
        return np.asarray(out["ood_score"])

    validation = scores(_split_images(pipeline, "validation"))
    layer.threshold = float(np.quantile(validation, quantile))
    test = scores(_split_images(pipeline, "test"))
    report = {
        "dataset": dataset, "train_examples": int(len(train)), "quantile": quantile,
        "threshold": layer.threshold, "feature_dim": int(features.shape[1]),
        "asinh_scale": asinh_scale, "frame": frame,
        "flagged": {"validation (in distribution)": float(np.mean(validation > layer.threshold)),
                    "test (in distribution)": float(np.mean(test > layer.threshold))},
        "test_examples": int(len(test)),
    }
    return with_ood(model, layer), report


def shifted_flag_rates(model, recipe_name: str, count: int = 300, seed: int = 7,
                       batch_size: int = 256) -> dict:
    """Fraction of `count` shifted images of `recipe_name` that `model` flags, per shift."""
    from deeplense_tf.simulation import perturbations, recipes
    from deeplense_tf.simulation.simulator import example_rng

    recipe = recipes.get(recipe_name)
    rates = {}
    shifts = {kind: [perturbations.perturbed(recipe, kind, seed, i)[0] for i in range(count)]
              for kind in perturbations.KINDS}
    other = OTHER_INSTRUMENT.get(recipe_name)
    if other and recipes.get(other).num_pix == recipe.num_pix:
        sim = recipes.get(other).simulator()
        shifts[f"other instrument ({other})"] = [
            sim.simulate(example_rng(seed, 2, i)).image for i in range(count)]
    for name, images in shifts.items():
        out = model.predict(np.stack(images)[..., None], batch_size=batch_size, verbose=0)
        rates[name] = float(np.mean(np.asarray(out["ood_flag"]) > 0.5))
    return rates


# ------------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model", None, "A .keras file or a shipped model's name.", required=True)
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", required=True)
    flags.DEFINE_string("dataset", None, "'deeplense_lensing/CONFIG' the model was trained on.",
                        required=True)
    flags.DEFINE_string("output", None, "Where the model with OOD outputs goes (.keras).",
                        required=True)
    flags.DEFINE_string("report", None, "Folder for ood.json (default: beside --output).")
    flags.DEFINE_integer("train_examples", 8000, "Training images the statistics come from.")
    flags.DEFINE_float("quantile", 0.96, "Validation quantile of the score used as threshold.")
    flags.DEFINE_integer("shifted_examples", 300, "Images per shift in the report.")


def main(argv):
    del argv
    from deeplense_tf import calibration
    from deeplense_tf.calibrate import load_model
    from deeplense_tf.reference.runner import recipe_of_config

    console.setup()
    if not FLAGS.output.endswith(".keras"):
        raise app.UsageError(f"--output={FLAGS.output}: expected a .keras file name")
    model = load_model(FLAGS.model)
    scored, report = fit(model, FLAGS.data_dir, FLAGS.dataset,
                         train_examples=FLAGS.train_examples, quantile=FLAGS.quantile)
    recipe = recipe_of_config(FLAGS.dataset.split("/")[1].split(":")[0])
    report["flagged"].update(shifted_flag_rates(scored, recipe, FLAGS.shifted_examples))
    calibration.save_atomic(scored, FLAGS.output)
    folder = FLAGS.report or os.path.dirname(os.path.abspath(FLAGS.output))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "ood.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"threshold {report['threshold']:.3f} (validation quantile {FLAGS.quantile})")
    for name, rate in report["flagged"].items():
        print(f"  flagged {rate:6.1%}  {name}")
    print(f"Model with OOD outputs: {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
