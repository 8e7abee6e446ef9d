r"""A deep ensemble of trained regressors as one model (a lever against the floor).

  python -m deeplense_tf.ensemble --models=hybrid_model_ii_axion,resnet18_model_ii_axion \
      --output=ENSEMBLE.keras

Every member takes the same raw images and predicts the same targets; the ensemble's
mean is the members' average and its `_std` the mixture's (mean of the variances plus
the variance of the means), as dihedral test-time augmentation combines views. Calibrate
and evaluate the result like any model (`deeplense_tf.calibrate`, `deeplense_tf.evaluate`).
Members with calibrated intervals or OOD outputs contribute their means and `_std` only.
"""

from __future__ import annotations

from absl import app, flags

from deeplense_tf import console



def build(models_list, name="ensemble"):
    """One functional model averaging `models_list` (keras.Models with equal inputs and
    targets); its `regression_output` layer is the first member's with the mixture's
    sigma (so `target_names`, `target_scaling` and calibration work on it)."""
    import keras
    from keras import ops

    from deeplense_tf import models

    targets = models.target_names(models_list[0])
    shape = tuple(models_list[0].input_shape[1:])
    for m in models_list[1:]:
        if models.target_names(m) != targets or tuple(m.input_shape[1:]) != shape:
            raise ValueError("--models: members must take the same images and predict the same "
                             f"targets ({targets}, {shape})")
    # Each member under its own name (equal architectures share one): the same layers
    # and weights, re-wrapped.
    members = [keras.Model(m.input, m.output, name=f"member{i}_{m.name}")
               for i, m in enumerate(models_list)]
    image = keras.Input(shape=shape, dtype="float32", name="image")
    outputs = [m(image) for m in members]
    combined = {}
    for t in targets:
        means = ops.stack([o[t] for o in outputs])
        combined[t] = ops.mean(means, axis=0)
        if t + "_std" in outputs[0]:
            variances = ops.stack([ops.square(o[t + "_std"]) for o in outputs])
            combined[t + "_std"] = ops.sqrt(ops.mean(variances, axis=0) + ops.var(means, axis=0))
    return keras.Model(image, combined, name=name)


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("models", None, "Shipped names or .keras files.", required=True)
    flags.DEFINE_string("output", None, "Where the ensemble (.keras) goes.", required=True)


def main(argv):
    del argv
    from deeplense_tf import calibration
    from deeplense_tf.calibrate import load_model

    console.setup()
    members = [load_model(m) for m in FLAGS.models]
    calibration.save_atomic(build(members), FLAGS.output)
    print(f"Ensemble of {len(members)}: {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
