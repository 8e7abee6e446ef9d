r"""A deep ensemble of trained regressors as one model (a lever against the floor).

  python -m deeplense_tf.ensemble --models=hybrid_model_ii_axion,resnet18_model_ii_axion \
      --output=ENSEMBLE.keras

Every member takes the same raw images and predicts the same targets; the ensemble's
mean is the members' average and its `_std` the mixture's (mean of the variances plus
the variance of the means), as dihedral test-time augmentation combines views. Calibrate,
fit the OOD flag on, evaluate and package the result like any model
(`deeplense_tf.calibrate`, `deeplense_tf.ood`, `deeplense_tf.evaluate`,
`deeplense_tf.package_model --workdir=RUN1,RUN2`). Members' own calibration and OOD
outputs are not used: the ensemble's are fitted on the ensemble.
"""

from __future__ import annotations

from absl import app, flags

from deeplense_tf import console

COMBINE_LAYER = "ensemble_combine"


def build(models_list, name="ensemble"):
    """One functional model averaging `models_list` (keras.Models with equal inputs and
    targets). Each member hands its standardized head output and its pooled features to
    an `EnsembleCombine` layer, and a `regression_output` layer (the first member's,
    without calibration) turns the mixture into physical units: so `target_names`,
    `target_scaling`, `deeplense_tf.calibrate` and `deeplense_tf.ood` (on the members'
    features side by side) work on an ensemble as on any regressor. Members' own
    calibration and OOD outputs are not used: calibrate and fit OOD on the ensemble."""
    import keras

    from deeplense_tf import models
    from deeplense_tf.models.layers import EnsembleCombine, RegressionOutput
    from deeplense_tf.models.regressor import OUTPUT_LAYER
    from deeplense_tf.ood import POOL_LAYER

    if len(models_list) < 2:
        raise ValueError(f"--models: an ensemble needs two or more members, got "
                         f"{len(models_list)}")
    targets = models.target_names(models_list[0])
    shape = tuple(models_list[0].input_shape[1:])
    outputs, pools = [], []
    for m in models_list:
        if models.target_names(m) != targets or tuple(m.input_shape[1:]) != shape:
            raise ValueError("--models: members must take the same images and predict the same "
                             f"targets ({targets}, {shape})")
        try:
            outputs.append(m.get_layer(OUTPUT_LAYER))
            pools.append(m.get_layer(POOL_LAYER))
        except ValueError:
            raise ValueError(f"--models: member {m.name!r} is not a single deeplense_tf "
                             f"regressor (no {OUTPUT_LAYER!r} and {POOL_LAYER!r} layers; an "
                             "ensemble of ensembles is not supported)") from None
    heads = {o.head for o in outputs}
    if len(heads) != 1 or not heads <= {"gaussian", "point"}:
        raise ValueError(f"--models: members must share a 'gaussian' or 'point' head, got "
                         f"{sorted(heads)}")
    # Each member under its own name: the same layers and weights, re-wrapped to hand over
    # the head's input and the pooled features.
    members = [keras.Model(m.input, [o.input, p.output], name=f"member{i}_{m.name}")
               for i, (m, o, p) in enumerate(zip(models_list, outputs, pools))]
    first = outputs[0]
    image = keras.Input(shape=shape, dtype="float32", name="image")
    called = [member(image) for member in members]
    combine = EnsembleCombine([o.target_mean for o in outputs], [o.target_std for o in outputs],
                              first.target_mean, first.target_std, head=first.head,
                              log_var_bound=first.log_var_bound, name=COMBINE_LAYER)
    head, _ = combine({"heads": [c[0] for c in called], "features": [c[1] for c in called]})
    config = dict(first.get_config(), interval_calibration=None, name=OUTPUT_LAYER)
    return keras.Model(image, RegressionOutput.from_config(config)(head), name=name)


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("models", None, "Shipped names or .keras files.", required=True)
    flags.DEFINE_string("output", None, "Where the ensemble (.keras) goes.", required=True)


def main(argv):
    del argv
    from deeplense_tf import calibration
    from deeplense_tf.calibrate import load_model

    console.setup()
    if len(set(FLAGS.models)) != len(FLAGS.models):
        raise app.UsageError(f"--models={','.join(FLAGS.models)}: a member is named twice "
                             "(the same weights twice add nothing)")
    members = [load_model(m) for m in FLAGS.models]
    calibration.save_atomic(build(members), FLAGS.output)
    print(f"Ensemble of {len(members)}: {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
