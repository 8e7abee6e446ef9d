r"""Trains a regressor on a prepared `deeplense_lensing` data set.

  python -m deeplense_tf.train --flagfile=configs/smoke.cfg --workdir=DIR [--flag=value ...]

Flags given after --flagfile override it. The resolved flags are written to
DIR/flags.cfg, so `python -m deeplense_tf.train --flagfile=DIR/flags.cfg --workdir=NEW`
replays the run. Running the same command again resumes an interrupted run. A misspelled flag,
in a flagfile or on the command line, stops at once.

Each epoch shows a progress bar on a terminal; every log line also goes to DIR/train.log
(under --strategy=multi_worker the chief's; the other workers' to DIR/train.TYPE-INDEX.log).
`-v 1` shows TensorFlow's own messages too, `-v -1` only warnings and errors.
"""

from __future__ import annotations

import ast
import dataclasses
import os

from absl import app, flags

from deeplense_tf import adaptation, console, training, transfer

FLAGS = flags.FLAGS
_DEFAULTS = training.TrainConfig(data_dir="", dataset="", targets=[])


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags when it runs (or into a test's own FlagValues), so
    importing this module never clashes with another program's `--workdir`."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("workdir", None, "Output directory (checkpoints, logs, model).", required=True, **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory holding the prepared data set.", **fv)
    flags.DEFINE_string("dataset", None, "'deeplense_lensing/CONFIG[:VERSION]'.", **fv)
    flags.DEFINE_list("targets", ["log10_m_axion"], "Target feature(s) to regress.", **fv)
    flags.DEFINE_string("model", _DEFAULTS.model, "Backbone: one of deeplense_tf.models.list_models().", **fv)
    flags.DEFINE_string("variant", _DEFAULTS.variant, "Model variant ('' = the model's default).", **fv)
    flags.DEFINE_list("model_overrides", [], "Variant hyperparameters to change, as key=value "
                      "(e.g. width=48,stem=s2).", **fv)
    flags.DEFINE_enum("loss", _DEFAULTS.loss, list(training.LOSSES),
                      "gaussian_nll trains a Gaussian head (mean and sigma); mse/huber a point head.", **fv)
    flags.DEFINE_float("huber_delta", _DEFAULTS.huber_delta, "Huber transition, standardized units.", **fv)
    flags.DEFINE_enum("normalization", _DEFAULTS.normalization,
                      ["none", "per_image_standardization", "per_image_minmax", "asinh", "global"],
                      "Image normalization inside the model.", **fv)
    flags.DEFINE_bool("augment", _DEFAULTS.augment, "Random dihedral (8-fold) augmentation.", **fv)
    flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout before the head.", **fv)
    flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Training epochs.", **fv)
    flags.DEFINE_integer("train_steps", _DEFAULTS.train_steps, "If > 0, train this many steps instead.", **fv)
    flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size (all replicas).", **fv)
    flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Peak AdamW learning rate.", **fv)
    flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "AdamW decoupled weight decay.", **fv)
    flags.DEFINE_float("warmup_epochs", _DEFAULTS.warmup_epochs, "Linear warm-up, then cosine decay.", **fv)
    flags.DEFINE_float("min_learning_rate_ratio", _DEFAULTS.min_learning_rate_ratio,
                       "Final learning rate as a fraction of the peak.", **fv)
    flags.DEFINE_float("grad_clip_norm", _DEFAULTS.grad_clip_norm, "Global gradient-norm clip (0: off).", **fv)
    flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of initialization, shuffling and augmentation.", **fv)
    flags.DEFINE_enum("strategy", _DEFAULTS.strategy, list(training.STRATEGIES), "tf.distribute strategy.", **fv)
    flags.DEFINE_string("tpu", _DEFAULTS.tpu, "TPU address for --strategy=tpu.", **fv)
    flags.DEFINE_enum("jit_compile", _DEFAULTS.jit_compile, list(training.JIT),
                      "XLA; auto = on for GPU/TPU, off on CPU (where it is 10-20x slower).", **fv)
    flags.DEFINE_enum("mixed_precision", _DEFAULTS.mixed_precision, list(training.MIXED_PRECISION),
                      "auto = bfloat16 on TPU, float16 on GPU, float32 on CPU.", **fv)
    flags.DEFINE_integer("eval_batch_size", _DEFAULTS.eval_batch_size, "Validation batch size.", **fv)
    flags.DEFINE_integer("log_every_steps", _DEFAULTS.log_every_steps, "TensorBoard/log interval.", **fv)
    flags.DEFINE_integer("checkpoint_every_steps", _DEFAULTS.checkpoint_every_steps,
                         "If > 0, also checkpoint within epochs.", **fv)
    flags.DEFINE_integer("train_examples", _DEFAULTS.train_examples,
                         "If > 0, train on the first N training examples only (learning curves).", **fv)
    flags.DEFINE_string("init_from", _DEFAULTS.init_from,
                        "Fine-tune: start from a trained model, a shipped name, pretrained:NAME or "
                        "a .keras path (same network: train with its flagfile). Its normalization "
                        "and target scaling are kept; its calibration and OOD score are not.", **fv)
    flags.DEFINE_enum("freeze", _DEFAULTS.freeze, list(transfer.FREEZE),
                      "With --init_from: 'backbone' trains only the head.", **fv)
    flags.DEFINE_enum("init_scope", _DEFAULTS.init_scope, list(transfer.INIT_SCOPES),
                      "With --init_from: 'all' copies every weight (same targets); 'backbone' "
                      "copies the normalization and backbone and starts a new head for this "
                      "run's --targets; 'features' carries the backbone to another instrument "
                      "or image size (position embeddings resampled, the data's own "
                      "normalization) with a new head.", **fv)
    flags.DEFINE_enum("adapt", _DEFAULTS.adapt, list(adaptation.METHODS),
                      "Unsupervised domain adaptation to the images of --adapt_dataset: 'dann' "
                      "(domain-adversarial) or 'coral' (feature statistics).", **fv)
    flags.DEFINE_string("adapt_dataset", _DEFAULTS.adapt_dataset,
                        "'deeplense_lensing/CONFIG': the target domain; only its train split's "
                        "images are read, never its labels.", **fv)
    flags.DEFINE_float("adapt_weight", _DEFAULTS.adapt_weight,
                       "Largest weight of the domain term (reached by a ramp over training).", **fv)
    flags.DEFINE_bool("macro_twin", _DEFAULTS.macro_twin,
                      "Feed the network each image and its residual from the recipe's "
                      "macro-model twin (fixed-lens recipes: model_ii_axion, model_iii_axion; "
                      "needs --noaugment).", **fv)
    flags.DEFINE_bool("keep_epoch_checkpoints", _DEFAULTS.keep_epoch_checkpoints,
                      "Keep every epoch's checkpoint in WORKDIR/epoch_checkpoints (for "
                      "deeplense_tf.benchmarks.time_to_accuracy).", **fv)
    flags.DEFINE_enum("cache", _DEFAULTS.cache, list(training.CACHE),
                      "Cache decoded data in memory (auto: if it fits in 40% of free memory).", **fv)


_CONFIG_FLAGS = [f.name for f in dataclasses.fields(training.TrainConfig)]


def _parse_overrides(items) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise app.UsageError(f"--model_overrides: expected key=value, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return overrides


def config_from_flags(flag_values=FLAGS) -> training.TrainConfig:
    """The TrainConfig the parsed flags describe (flags defined by `define_flags`)."""
    for name in ("data_dir", "dataset"):
        if not flag_values[name].value:
            raise app.UsageError(f"--{name} is required")
    values = {name: flag_values[name].value for name in _CONFIG_FLAGS}
    values["model_overrides"] = _parse_overrides(flag_values.model_overrides)
    values["targets"] = list(flag_values.targets)
    return training.TrainConfig(**values).validate()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    console.setup(log_file=os.path.join(FLAGS.workdir, training.log_file_name(config.strategy)))
    summary = training.train_and_evaluate(config, FLAGS.workdir)
    # TensorBoard on the workdir, not on its tensorboard/ folder: the HParams dashboard looks
    # a run's metrics up in SESSION/validation, which fails when the session is the root ".".
    print(f"Best validation loss {summary['best_validation_loss']:.4f} at epoch "
          f"{summary['best_epoch'] + 1}/{summary['epochs']}; "
          f"model: {os.path.join(FLAGS.workdir, 'model.keras')}; "
          f"TensorBoard: tensorboard --logdir {FLAGS.workdir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
