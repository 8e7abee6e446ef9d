"""Training library: `train_and_evaluate(config, workdir)`, called by `deeplense_tf.train`.

One custom loop serves every strategy (default, mirrored, multi-worker, TPU): Keras 3's
`model.fit` fails under `MultiWorkerMirroredStrategy` (PerReplica conversion error), and
a `strategy.run` loop trains everywhere. Per epoch:

  train on shuffled, augmented batches (losses in standardized target units)
  -> evaluate on the validation split (never the test split)
  -> keep the best weights by validation loss (`best.keras`)
  -> checkpoint model, optimizer and position (`checkpoints/`), so that a run killed at
     any moment and restarted with the same command resumes from the last checkpoint.

The workdir receives `config.json` (the resolved configuration), `statistics.json` (the
training-split statistics built into the model), TensorBoard logs (`tensorboard/`: train
and validation scalars, and the flags with the metrics to compare runs by for the HParams
dashboard), checkpoints, `best.keras` while training, and `model.keras` + `summary.json`
when done. A non-finite loss stops the run before anything is saved, keeping the last good
checkpoint. Each epoch shows a progress bar (loss, images/s) on a terminal and logs one
line: its training loss and speed, and the validation metrics.

Under multi-worker training only the chief (TensorFlow's rule: the `chief` task, else
worker 0) writes the workdir; the other workers save their share of each checkpoint to
scratch directories they delete. Every worker restores from the chief's checkpoints, so
all must see one shared workdir; workers that find different positions stop together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hp

from deeplense_tf import adaptation, console, input_pipeline, models, plots, transfer

LOSSES = ("gaussian_nll", "gaussian_full_nll", "mse", "huber")
# The head each loss trains.
HEAD_OF_LOSS = {"gaussian_nll": "gaussian", "gaussian_full_nll": "gaussian_full",
                "mse": "point", "huber": "point"}
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
JIT = ("auto", "true", "false")
CACHE = ("auto", "true", "false")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, inconsistent restart); the message says why."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; `config.json` in the workdir records the resolved one."""

    data_dir: str
    dataset: str
    targets: list
    model: str = "resnet18"
    variant: str = ""  # "" = the model's default variant
    model_overrides: dict = dataclasses.field(default_factory=dict)
    # gaussian_nll trains a Gaussian head (one sigma per target); gaussian_full_nll a
    # full-covariance Gaussian over all targets (two or more); mse/huber a point head.
    loss: str = "gaussian_nll"
    huber_delta: float = 1.0
    normalization: str = "per_image_standardization"
    augment: bool = True
    dropout: float = 0.0
    epochs: int = 30
    train_steps: int = 0  # > 0: stop after this many steps instead of `epochs`
    batch_size: int = 64  # global, over all replicas
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_learning_rate_ratio: float = 0.01
    grad_clip_norm: float = 1.0
    seed: int = 0
    strategy: str = "default"
    tpu: str = ""
    jit_compile: str = "auto"
    mixed_precision: str = "auto"
    eval_batch_size: int = 256
    log_every_steps: int = 50
    checkpoint_every_steps: int = 0  # > 0: also checkpoint inside epochs
    cache: str = "auto"
    train_examples: int = 0  # > 0: train on the first N training examples (learning curves)
    # Fine-tuning: start from a trained model (a shipped name, pretrained:NAME or a .keras
    # path) instead of random weights; optionally with its backbone frozen.
    init_from: str = ""
    freeze: str = "none"
    init_scope: str = "all"  # "backbone": new targets from the parent's backbone, new head
    # Unsupervised domain adaptation (`deeplense_tf.adaptation`): align the features of the
    # training images with those of the unlabelled images of `adapt_dataset`.
    adapt: str = "none"
    adapt_dataset: str = ""
    adapt_weight: float = 0.1
    # The network reads each image beside its residual from the fixed-lens recipe's
    # macro-model twin (`models.twin`); fixed-lens recipes only, no dihedral augmentation.
    macro_twin: bool = False
    # Keep each epoch's checkpoint in epoch_checkpoints/ (for time-to-accuracy curves:
    # `python -m deeplense_tf.benchmarks.time_to_accuracy`).
    keep_epoch_checkpoints: bool = False

    def validate(self):
        def choice(field, accepted):
            if getattr(self, field) not in accepted:
                raise ValueError(f"--{field}: {getattr(self, field)!r} is not one of {list(accepted)}")

        choice("loss", LOSSES)
        choice("strategy", STRATEGIES)
        choice("mixed_precision", MIXED_PRECISION)
        choice("jit_compile", JIT)
        choice("cache", CACHE)
        choice("normalization", models.NORMALIZATION_MODES)
        if self.model not in models.list_models():
            raise ValueError(f"--model: {self.model!r} is not one of {models.list_models()}")
        models.resolve(self.model, self.variant or None, **self.model_overrides)
        for field in ("epochs", "batch_size", "eval_batch_size", "log_every_steps"):
            if getattr(self, field) < 1:
                raise ValueError(f"--{field}: must be >= 1, got {getattr(self, field)}")
        for field in ("learning_rate", "huber_delta"):
            if not getattr(self, field) > 0:
                raise ValueError(f"--{field}: must be positive, got {getattr(self, field)}")
        if not self.targets:
            raise ValueError("--targets: name at least one target")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"--targets: {self.targets} names a target twice")
        if self.loss == "gaussian_full_nll" and len(self.targets) < 2:
            raise ValueError(f"--loss=gaussian_full_nll: a covariance head needs two or more "
                             f"--targets, got {self.targets}; use --loss=gaussian_nll for one")
        if self.train_examples < 0:
            raise ValueError(f"--train_examples: must be >= 0, got {self.train_examples}")
        choice("freeze", transfer.FREEZE)
        choice("init_scope", transfer.INIT_SCOPES)
        if self.init_scope != "all" and not self.init_from:
            raise ValueError(f"--init_scope={self.init_scope} needs --init_from")
        choice("adapt", adaptation.METHODS)
        if self.adapt != "none" and not self.adapt_dataset:
            raise ValueError(f"--adapt={self.adapt} needs --adapt_dataset (the unlabelled "
                             "images of the domain to adapt to)")
        if self.adapt_dataset and self.adapt == "none":
            raise ValueError(f"--adapt_dataset={self.adapt_dataset} needs --adapt=dann or "
                             "--adapt=coral")
        if self.adapt != "none" and not self.adapt_weight > 0:
            raise ValueError(f"--adapt_weight: must be positive, got {self.adapt_weight}")
        if self.freeze != "none" and not self.init_from:
            raise ValueError(f"--freeze={self.freeze} needs --init_from (a trained model to keep)")
        if self.macro_twin:
            if self.augment:
                raise ValueError("--macro_twin: the twin is the lens in the simulator's "
                                 "orientation, which flips and rotations change; add "
                                 "--noaugment")
            if self.init_from:
                raise ValueError("--macro_twin starts a new network on the image and its "
                                 "residual; it cannot start from --init_from")
            from deeplense_tf.reference import vortex as vortex_lib
            from deeplense_tf.simulation import recipes

            recipe = self.macro_twin_recipe
            try:
                vortex_lib.nuisance_check(recipes.get(recipe))
            except ValueError as e:  # an unknown recipe, or one with a free lens
                raise ValueError(f"--macro_twin: data set {self.dataset!r} (recipe {recipe!r}) "
                                 f"has no fixed macro model to subtract: {e}") from None
        return self

    @property
    def macro_twin_recipe(self) -> str:
        """The recipe of `dataset` (`deeplense_lensing/CONFIG[:VERSION]`)."""
        from deeplense_tf.reference.runner import recipe_of_config

        return recipe_of_config(transfer.config_name(self.dataset))

    @property
    def train_split(self) -> str:
        return f"train[:{self.train_examples}]" if self.train_examples else "train"

    @property
    def head(self) -> str:
        return HEAD_OF_LOSS[self.loss]


def _flag_items(config: TrainConfig):
    """(flag name, value as the command line spells it) for each field of `config`."""
    for name, value in dataclasses.asdict(config).items():
        if isinstance(value, list):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, bool):
            value = str(value).lower()
        yield name, value


def write_flagfile(config: TrainConfig, workdir: str, parent=None) -> None:
    """`workdir/flags.cfg`: every flag of the run, replayable with --flagfile. A fine-tuned
    run also names its parent's file and checksum (and writes them to parent.json)."""
    lines = ["# Resolved flags of this run; replay with:",
             "#   python -m deeplense_tf.train --flagfile=flags.cfg --workdir=DIR",
             *[f"--{k}={v}" for k, v in _flag_items(config)]]
    if parent is not None:
        lines.insert(2, f"# Parent model (--init_from): {os.path.basename(parent.path)}, sha256 "
                        f"{parent.sha256}, trained on {parent.dataset or 'an unrecorded data set'}")
        _write_json(os.path.join(workdir, "parent.json"), parent.record())
    path = os.path.join(workdir, "flags.cfg")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- setup


def make_strategy(name: str, tpu: str = ""):
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: mirror over the logical CPU devices (one unless configured otherwise).
        return tf.distribute.MirroredStrategy(
            devices=[d.name for d in tf.config.list_logical_devices("CPU")],
            cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "describing the cluster (see tf.distribute.MultiWorkerMirroredStrategy)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _accelerator(strategy) -> str:
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def resolve_jit(setting: str, strategy) -> bool:
    """`auto`: XLA on GPU/TPU only (on CPU it is 10-20x slower for ResNets, and fails with
    tf.distribute's collectives)."""
    accelerator = _accelerator(strategy)
    if setting == "auto":
        return accelerator != "cpu"
    jit = setting == "true"
    if jit and accelerator == "cpu" and strategy.num_replicas_in_sync > 1:
        raise ValueError("--jit_compile=true with several CPU replicas: TensorFlow's XLA has no "
                         "CPU collectives; use --jit_compile=false or a single replica")
    return jit


def resolve_precision(setting: str, strategy) -> str:
    if setting != "auto":
        return setting
    return {"tpu": "mixed_bfloat16", "gpu": "mixed_float16", "cpu": "float32"}[_accelerator(strategy)]


def _is_chief_task(task_type, task_id, cluster_spec) -> bool:
    """TensorFlow's rule: the `chief` task if the cluster has one, else worker 0; a process
    outside any cluster is its own chief."""
    if not task_type:
        return True
    if "chief" in cluster_spec.jobs:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


def _is_chief(strategy) -> bool:
    """Whether this process writes the workdir (the others write to scratch directories)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    return _is_chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec())


def log_file_name(strategy: str) -> str:
    """This process's log file in the workdir: `train.log`, but under multi-worker only the
    chief's; every other task writes `train.TYPE-INDEX.log` beside it, since the workdir is
    shared and two processes appending to one file would interleave their lines."""
    if strategy != "multi_worker" or "TF_CONFIG" not in os.environ:
        return "train.log"
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if _is_chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec()):
        return "train.log"
    return f"train.{resolver.task_type}-{resolver.task_id}.log"


def loss_per_example(loss: str, model, labels, outputs, huber_delta: float = 1.0):
    """Per-example loss (batch,), averaged over targets, in standardized target units."""
    z_true = models.standardize(model, labels)
    z_pred = models.standardize(model, outputs)
    if loss == "gaussian_full_nll":
        return _full_gaussian_nll(models.target_names(model), z_true, z_pred, outputs)
    terms = []
    for name in models.target_names(model):
        error = z_true[name] - z_pred[name]
        if loss == "gaussian_nll":
            sigma = z_pred[name + "_std"]
            terms.append(tf.math.log(sigma) + 0.5 * tf.square(error / sigma))
        elif loss == "mse":
            terms.append(tf.square(error))
        else:
            abs_error = tf.abs(error)
            quadratic = tf.minimum(abs_error, huber_delta)
            terms.append(0.5 * tf.square(quadratic) + huber_delta * (abs_error - quadratic))
    return tf.add_n(terms) / len(terms)


def _full_gaussian_nll(names, z_true, z_pred, outputs):
    """NLL of a full-covariance Gaussian (up to a constant), per example and per target,
    in standardized units: sum log diag(C) + |C^-1 r|^2 / 2 with Sigma = C C^T built from
    the marginal sigmas and the correlations the head returns."""
    from deeplense_tf.models.layers import target_pairs

    k = len(names)
    residual = tf.stack([z_true[n] - z_pred[n] for n in names], axis=-1)
    sigma = tf.stack([z_pred[n + "_std"] for n in names], axis=-1)
    rows = [[None] * k for _ in range(k)]
    for i in range(k):
        rows[i][i] = tf.ones_like(sigma[:, 0])
    for i, j, key in target_pairs(names):
        rows[i][j] = rows[j][i] = tf.cast(outputs[key], tf.float32)
    correlation = tf.stack([tf.stack(row, axis=-1) for row in rows], axis=-2)
    covariance = correlation * sigma[:, :, None] * sigma[:, None, :]
    chol = tf.linalg.cholesky(covariance + 1e-6 * tf.eye(k))
    white = tf.linalg.triangular_solve(chol, residual[..., None], lower=True)[..., 0]
    nll = (tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)), axis=-1)
           + 0.5 * tf.reduce_sum(tf.square(white), axis=-1))
    return nll / k


def machine() -> str:
    """The hardware a run used, in words (for model cards and benchmarks)."""
    import platform

    gpus = tf.config.list_physical_devices("GPU")
    accel = f", {len(gpus)} GPU(s)" if gpus else ", no GPU"
    return (f"{platform.machine()} CPU, {os.cpu_count()} logical cores{accel}; "
            f"TensorFlow {tf.__version__}")


def save_model_atomic(model, path: str):
    """Saves a .keras file under a temporary name, then renames it: `path` is whole or
    absent, never half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=directory, prefix=".tmp-")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=float)
    os.replace(tmp, path)


# ------------------------------------------------------------------------- evaluation


def predict_split(model, pipeline, split: str, batch_size: int, predict_fn=None,
                  progress: console.Progress | None = None):
    """(labels, outputs): dicts of numpy arrays over the whole split, in file order.

    progress: advanced by one per batch.
    """
    predict_fn = predict_fn or tf.function(lambda x: model(x, training=False))
    labels, outputs = {}, {}
    for images, batch_labels in pipeline.eval_dataset(split, batch_size):
        out = predict_fn(images)
        for k, v in batch_labels.items():
            labels.setdefault(k, []).append(v.numpy())
        for k, v in out.items():
            outputs.setdefault(k, []).append(v.numpy())
        if progress is not None:
            progress.update()
    return ({k: np.concatenate(v) for k, v in labels.items()},
            {k: np.concatenate(v) for k, v in outputs.items()})


def validation_metrics(config, model, labels, outputs) -> dict:
    """Loss (as trained), and per target MAE, RMSE, 68% coverage and mean NLL."""
    loss = loss_per_example(config.loss, model, {k: tf.constant(v) for k, v in labels.items()},
                            {k: tf.constant(v) for k, v in outputs.items()}, config.huber_delta)
    metrics = {"loss": float(tf.reduce_mean(loss))}
    for name in config.targets:
        error = outputs[name] - labels[name]
        metrics[f"{name}/mae"] = float(np.mean(np.abs(error)))
        metrics[f"{name}/rmse"] = float(np.sqrt(np.mean(error**2)))
        if name + "_std" in outputs:
            sigma = outputs[name + "_std"]
            metrics[f"{name}/coverage_68"] = float(np.mean(np.abs(error) <= sigma))
            metrics[f"{name}/nll"] = float(np.mean(np.log(sigma) + 0.5 * (error / sigma) ** 2
                                                   + 0.5 * math.log(2 * math.pi)))
    return metrics


# -------------------------------------------------------------------------- training


def _statistics(pipeline, split, workdir, is_chief, parent=None, scope="all"):
    """Training-split statistics, computed once and kept in the workdir for restarts.

    A fine-tuned model keeps its parent's normalization and target scaling: built with the
    new data's own statistics it would no longer compute the parent's function. Started
    from the parent's backbone only (`scope="backbone"`), it keeps the normalization its
    backbone expects and scales its new targets by the data's own statistics; carried to
    another instrument or image size (`scope="features"`), it uses the data's own for both."""
    path = os.path.join(workdir, "statistics.json")
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        return input_pipeline.Statistics(**stored)
    if parent is not None and scope == "features":
        stats = pipeline.statistics(split)
    elif parent is not None and scope == "backbone":
        stats = transfer.parent_statistics(parent, pipeline.num_examples(split),
                                           own=pipeline.statistics(split))
    elif parent is not None:
        stats = transfer.parent_statistics(parent, pipeline.num_examples(split))
    else:
        stats = pipeline.statistics(split)
    if is_chief:
        _write_json(path, dataclasses.asdict(stats))
    return stats


EPOCH_CHECKPOINTS = "epoch_checkpoints"


def _check_restart(config, workdir, is_chief):
    """A restart must use the same configuration as the run it resumes."""
    path = os.path.join(workdir, "config.json")
    current = dataclasses.asdict(config)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        # These may change between attempts without changing the result.
        volatile = {"log_every_steps", "checkpoint_every_steps", "eval_batch_size", "cache",
                    "data_dir", "keep_epoch_checkpoints"}
        changed = {k: (previous.get(k), v) for k, v in current.items()
                   if k not in volatile and previous.get(k) != v}
        if changed and os.path.isdir(os.path.join(workdir, "checkpoints")):
            raise TrainingError(
                f"{workdir} holds a run with another configuration ({changed}, as (was, now)); "
                "use a new --workdir or the same flags")
    if is_chief:
        _write_json(path, current)


def build_model(config: TrainConfig, stats: input_pipeline.Statistics, image_shape):
    return models.build_regressor(
        config.model, image_shape=image_shape, targets=config.targets, head=config.head,
        normalization=config.normalization, pixel_mean=stats.pixel_mean,
        pixel_std=stats.pixel_std, asinh_scale=max(stats.pixel_noise, 1e-12),
        target_mean=stats.target_mean, target_std=stats.target_std,
        variant=config.variant or None, dropout=config.dropout,
        macro_twin=config.macro_twin_recipe if config.macro_twin else None,
        **config.model_overrides)


def train_and_evaluate(config: TrainConfig, workdir: str) -> dict:
    """Trains (or resumes) a regressor; returns the summary written to `summary.json`."""
    run = _set_up(config, workdir)
    try:
        step = int(run.optimizer.iterations.numpy())
        skip = int(run.step_in_epoch.numpy())
        for epoch in range(int(run.epoch.numpy()), run.epochs):
            step, trained = _train_epoch(run, epoch, step, skip)
            skip = 0
            _validate_and_checkpoint(run, epoch, step, trained)
            if step >= run.total_steps:
                break
        return _finish(run, step)
    finally:
        for scratch in run.scratch_dirs:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclasses.dataclass
class _Run:
    """What `_set_up` builds for one call of `train_and_evaluate` and the loop advances.

    `epoch`, `step_in_epoch`, `best_loss`, `best_epoch` and `train_seconds` are variables
    saved in every checkpoint with the model and optimizer: where a restart resumes.
    """

    config: TrainConfig
    workdir: str
    strategy: tf.distribute.Strategy
    is_chief: bool
    jit: bool
    precision: str
    pipeline: input_pipeline.Pipeline
    steps_per_epoch: int
    total_steps: int
    epochs: int
    model: object
    optimizer: object
    schedule: object
    epoch: tf.Variable
    step_in_epoch: tf.Variable
    best_loss: tf.Variable
    best_epoch: tf.Variable
    train_seconds: tf.Variable
    checkpoint_dir: str  # the chief's, which every worker restores from
    manager: tf.train.CheckpointManager
    resumed: bool
    train_writer: object
    val_writer: object
    train_step: object  # tf.function (global images, labels[, target images, progress]) -> {"loss": summed loss, ...}
    predict_fn: object
    scratch_dirs: list  # a non-chief worker's throw-away checkpoints and logs
    target_pipeline: object = None  # the unlabelled images of --adapt_dataset
    epoch_manager: object = None  # with --keep_epoch_checkpoints: every epoch's checkpoint
    # The time up to which `train_seconds` has been counted.
    clock: float = dataclasses.field(default_factory=time.perf_counter)

    def last_good_checkpoint(self):
        return tf.train.latest_checkpoint(self.checkpoint_dir)


@dataclasses.dataclass
class _EpochTraining:
    """What one epoch's training steps did, for the epoch's log line."""

    first_step: int  # global step numbers, 1-based as in TensorBoard
    last_step: int
    mean_loss: float
    images_per_second: float
    domain: dict = dataclasses.field(default_factory=dict)  # adapted runs: epoch means

    def describe(self) -> str:
        if self.last_step < self.first_step:
            return "no training steps left"
        domain = "".join(f", {key.replace('_', ' ')} {value:.4f}"
                         for key, value in self.domain.items())
        return (f"steps {self.first_step}-{self.last_step}: train loss {self.mean_loss:.4f}"
                f"{domain}, {self.images_per_second:.0f} images/s")


def _set_up(config: TrainConfig, workdir: str) -> _Run:
    """Strategy, data, model and optimizer; restores the last checkpoint if there is one."""
    config.validate()
    os.makedirs(workdir, exist_ok=True)
    strategy = make_strategy(config.strategy, config.tpu)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"--batch_size={config.batch_size} is not divisible by the "
                         f"{replicas} replicas of --strategy={config.strategy}")
    jit = resolve_jit(config.jit_compile, strategy)
    precision = resolve_precision(config.mixed_precision, strategy)
    is_chief = _is_chief(strategy)

    import keras

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.seed)
    cache = {"auto": None, "true": True, "false": False}[config.cache]
    pipeline = input_pipeline.Pipeline(config.data_dir, config.dataset, config.targets,
                                       seed=config.seed, cache=cache)
    pipeline.num_examples("validation")
    parent = None
    if config.init_from:  # refused before anything is written if it cannot start this run
        parent = transfer.describe_parent(config.init_from)
        transfer.check_compatible(parent, pipeline.image_shape, config.dataset, config.targets,
                                  scope=config.init_scope)
    target_pipeline = None
    if config.adapt != "none":  # refused before anything is written
        target_pipeline = input_pipeline.Pipeline(config.data_dir, config.adapt_dataset, (),
                                                  seed=config.seed, cache=cache)
        adaptation.check_target_dataset(config.dataset, pipeline.image_shape,
                                        config.adapt_dataset, target_pipeline.image_shape)
        if target_pipeline.num_examples("train") < config.batch_size:
            raise ValueError(f"--adapt_dataset={config.adapt_dataset}: its train split has "
                             f"{target_pipeline.num_examples('train')} images, fewer than "
                             f"--batch_size={config.batch_size}")
    _check_restart(config, workdir, is_chief)
    if is_chief:
        write_flagfile(config, workdir, parent)
    n_train = pipeline.num_examples(config.train_split)
    if config.train_examples > n_train:
        raise ValueError(f"--train_examples={config.train_examples} exceeds the {n_train} "
                         "training examples")
    stats = _statistics(pipeline, config.train_split, workdir, is_chief, parent,
                        config.init_scope)
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch_size={config.batch_size} exceeds the {n_train} training "
                         "examples")
    total_steps = config.train_steps or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total_steps // 2)

    with strategy.scope():
        model = build_model(config, stats, pipeline.image_shape)
        if parent is not None:
            copied = transfer.transfer_weights(parent, model, scope=config.init_scope)
            trainable = transfer.freeze(model, config.freeze)
            logging.info("Initialized from %s (%s): %d weights copied; %d trainable weights "
                         "(--freeze=%s)", config.init_from, parent.sha256[:12], copied,
                         trainable, config.freeze)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate * (0.01 if warmup else 1.0),
            warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
            decay_steps=max(total_steps - warmup, 1), alpha=config.min_learning_rate_ratio)
        optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                           weight_decay=config.weight_decay,
                                           global_clipnorm=config.grad_clip_norm or None)
        # No decay on biases, normalization scales and embeddings.
        optimizer.exclude_from_weight_decay(
            var_names=["bias", "gamma", "beta", "embedding", "class_token", "scale"])
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        classifier = None
        if config.adapt == "dann":
            classifier = adaptation.domain_classifier(
                model.get_layer(adaptation.FEATURE_LAYER).output.shape[-1], seed=config.seed)
        optimizer.build(_trained_variables(model, classifier))
        position = dict(
            epoch=tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
            step_in_epoch=tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch"),
            best_loss=tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_loss"),
            best_epoch=tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch"),
            # Wall time spent training, summed over restarts (for model cards).
            train_seconds=tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                      name="train_seconds"))
    extra = {"domain_classifier": classifier} if classifier is not None else {}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **extra, **position)
    # Every worker restores from the chief's checkpoints, so the workdir must be storage
    # that all of them see.
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Resumed from %s after %d of %d epochs and %d steps of the next", latest,
                     int(position["epoch"].numpy()), epochs,
                     int(position["step_in_epoch"].numpy()))
    elif is_chief and os.path.exists(os.path.join(workdir, "summary.json")):
        os.remove(os.path.join(workdir, "summary.json"))
    _check_workers_resume_together(strategy, position["epoch"], position["step_in_epoch"])
    # Only the chief keeps checkpoints; other workers must take part in saving (it is a
    # collective operation) and write to a scratch directory that they delete.
    scratch_dirs = [] if is_chief else [tempfile.mkdtemp() for _ in range(3)]
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir if is_chief else scratch_dirs[0], max_to_keep=2)
    epoch_manager = None
    if config.keep_epoch_checkpoints:
        epoch_manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(workdir, EPOCH_CHECKPOINTS) if is_chief else scratch_dirs[2],
            max_to_keep=None, checkpoint_name="epoch")

    tb_dir = os.path.join(workdir, "tensorboard") if is_chief else scratch_dirs[1]
    train_step, predict_fn = _step_functions(config, strategy, model, optimizer, precision, jit,
                                             classifier)
    run = _Run(config=config, workdir=workdir, strategy=strategy, is_chief=is_chief, jit=jit,
               precision=precision, pipeline=pipeline, steps_per_epoch=steps_per_epoch,
               total_steps=total_steps, epochs=epochs, model=model, optimizer=optimizer,
               schedule=schedule, **position, checkpoint_dir=checkpoint_dir, manager=manager,
               resumed=bool(latest),
               train_writer=tf.summary.create_file_writer(os.path.join(tb_dir, "train")),
               val_writer=tf.summary.create_file_writer(os.path.join(tb_dir, "validation")),
               train_step=train_step, predict_fn=predict_fn, scratch_dirs=scratch_dirs,
               target_pipeline=target_pipeline, epoch_manager=epoch_manager)
    if config.adapt != "none":
        logging.info("Adapting to the unlabelled images of %s (%d): %s", config.adapt_dataset,
                     target_pipeline.num_examples("train"),
                     adaptation.describe(config.adapt, config.adapt_weight))
    if is_chief and not run.resumed:
        _log_sample_inputs(run.train_writer, pipeline, config, config.train_split)
        _write_hparams(config, tb_dir)
    return run


def _check_workers_resume_together(strategy, epoch, step_in_epoch):
    """Under multi-worker, every worker must resume from the same position: otherwise their
    loops differ in length, and the first collective one of them skips fails or blocks the
    others. They differ when the workdir is not one shared directory."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    position = tf.cast(tf.stack([epoch, step_in_epoch]), tf.float64)
    sums = tf.function(lambda: strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.concat([position, position**2], 0)),
        axis=None))().numpy()
    # n * sum(x^2) - sum(x)^2 = n * sum((x - mean)^2): zero iff all equal, else >= 1 for
    # integers; every worker computes the same all-reduced numbers, so all agree to stop.
    n = strategy.num_replicas_in_sync
    if np.any(n * sums[2:] - sums[:2] ** 2 > 0.5):
        raise TrainingError(
            "the workers found different checkpoints to resume from: every worker must see "
            "the chief's --workdir (shared storage) and be started with the same flags")


def _trained_variables(model, classifier=None) -> list:
    return list(model.trainable_variables) + (
        list(classifier.trainable_variables) if classifier is not None else [])


def _step_functions(config, strategy, model, optimizer, precision, jit, classifier=None):
    """(train_step, predict_fn): one distributed optimizer step on a global batch, returning
    {"loss": the task loss summed over replicas} (plus the domain loss and accuracy when
    adapting); and the model's inference on one batch.

    Adapting, the step takes the target-domain images and the share of training done too:
    source and target images pass through the network as one batch, the task loss is
    computed on the source half, and the domain term (`deeplense_tf.adaptation`) on the
    pooled features of both halves."""
    global_batch = config.batch_size
    variables = _trained_variables(model, classifier)
    features_of = adaptation.feature_model(model) if config.adapt != "none" else None

    def apply(tape, total):
        scaled = optimizer.scale_loss(total) if precision == "mixed_float16" else total
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables))

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            per_example = loss_per_example(config.loss, model, labels, outputs, config.huber_delta)
            loss = tf.reduce_sum(per_example) / global_batch
        apply(tape, loss)
        return {"loss": loss}

    def adapt_replica_step(images, labels, target_images, progress):
        n = tf.shape(images)[0]
        replicas = tf.cast(strategy.num_replicas_in_sync, tf.float32)
        weight = adaptation.adversarial_weight(progress, config.adapt_weight)
        with tf.GradientTape() as tape:
            outputs, features = features_of(tf.concat([images, target_images], 0),
                                            training=True)
            outputs = {k: v[:n] for k, v in outputs.items()}
            per_example = loss_per_example(config.loss, model, labels, outputs, config.huber_delta)
            loss = tf.reduce_sum(per_example) / global_batch
            source, target = features[:n], features[n:]  # cast to float32 by the terms
            if config.adapt == "dann":
                per_domain, accuracy = adaptation.dann_loss(classifier, source, target, weight)
                # The reversal scales the features' gradient by the weight; the classifier
                # learns at full strength.
                domain = tf.reduce_sum(per_domain) / (2 * global_batch)
                total = loss + domain
            else:
                domain = adaptation.coral_distance(source, target) / replicas
                total = loss + weight * domain
        apply(tape, total)
        out = {"loss": loss, "domain_loss": domain}
        if config.adapt == "dann":  # the share of both batches the classifier tells apart
            out["domain_accuracy"] = accuracy / replicas
        return out

    def reduce(per_replica):
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    if config.adapt == "none":
        @tf.function(jit_compile=jit)
        def train_step(images, labels):
            return reduce(strategy.run(replica_step, args=(images, labels)))
    else:
        @tf.function(jit_compile=jit)
        def train_step(images, labels, target_images, progress):
            return reduce(strategy.run(adapt_replica_step,
                                       args=(images, labels, target_images, progress)))

    return train_step, tf.function(lambda x: model(x, training=False), jit_compile=jit)


def _save_checkpoint(run: _Run, epoch: int, step_in_epoch: int):
    """Saves the position as (epoch, steps of it done), adding the wall time since the last
    save to `train_seconds`."""
    now = time.perf_counter()
    run.train_seconds.assign_add(now - run.clock)
    run.clock = now
    run.epoch.assign(epoch)
    run.step_in_epoch.assign(step_in_epoch)
    run.manager.save(checkpoint_number=int(run.optimizer.iterations.numpy()))


def _fetch_losses(run: _Run, pending, step: int, epoch: int) -> tuple[list, dict]:
    """The losses of the steps dispatched since the last fetch (one host sync for all),
    and an adapted run's domain terms ({name: values}, empty otherwise)."""
    losses = [float(x["loss"]) for x in pending]
    domain = {key: [float(x[key]) for x in pending] for key in pending[0] if key != "loss"}
    if not all(map(math.isfinite, losses)):
        raise TrainingError(
            f"non-finite training loss at step {step} (epoch {epoch}); nothing was saved from "
            f"it. The last good checkpoint is {run.last_good_checkpoint()}. Lower "
            "--learning_rate or check the data.")
    return losses, domain


def _train_epoch(run: _Run, epoch: int, step: int, skip: int):
    """Trains epoch `epoch` from its batch `skip` on, until its end or `total_steps`.

    Losses are fetched from the device every `log_every_steps` (and at the epoch's end),
    not every step: they go to TensorBoard, to the progress bar and to the epoch's mean.
    Returns (global step, `_EpochTraining`).
    """
    config = run.config
    dataset = run.pipeline.train_epoch(config.batch_size, epoch, augment=config.augment,
                                       skip_batches=skip, split=config.train_split)
    if run.target_pipeline is not None:
        # Each epoch draws its target batches from a stream of its own (deterministic in
        # the epoch, so a resumed epoch sees the same pairs).
        targets = run.target_pipeline.unlabelled_batches(
            config.batch_size, epoch * 1_000, run.steps_per_epoch - skip,
            augment=config.augment, skip_batches=skip)
        dataset = tf.data.Dataset.zip((dataset, targets)).map(
            lambda source, target: (*source, target))
    dataset = run.strategy.experimental_distribute_dataset(dataset)
    first_step, started = step + 1, time.perf_counter()
    epoch_loss, epoch_steps = 0.0, 0
    window_loss, window_steps, window_start = 0.0, 0, started
    pending, epoch_domain = [], {}
    steps = max(0, min(run.steps_per_epoch - skip, run.total_steps - step))
    with console.Progress(total=steps, desc=f"epoch {epoch + 1}/{run.epochs}", unit="step",
                          log_summary=False) as bar:
        for batch in dataset:
            if step >= run.total_steps:
                break
            if run.target_pipeline is not None:
                progress = tf.constant(step / max(run.total_steps, 1), tf.float32)
                pending.append(run.train_step(*batch, progress))
            else:
                pending.append(run.train_step(*batch))
            step += 1
            skip += 1
            bar.update()
            if step % config.log_every_steps == 0 or skip == run.steps_per_epoch:
                losses, domain = _fetch_losses(run, pending, step, epoch)
                pending = []
                epoch_loss += sum(losses)
                epoch_steps += len(losses)
                window_loss += sum(losses)
                window_steps += len(losses)
                elapsed = time.perf_counter() - window_start
                images_per_s = window_steps * config.batch_size / elapsed
                with run.train_writer.as_default(step=step):
                    tf.summary.scalar("loss", window_loss / window_steps)
                    tf.summary.scalar("learning_rate", float(run.schedule(step)))
                    tf.summary.scalar("images_per_second", images_per_s)
                    for key, values in domain.items():
                        tf.summary.scalar(f"adaptation/{key}", float(np.mean(values)))
                    if domain:
                        tf.summary.scalar("adaptation/weight", float(adaptation.adversarial_weight(
                            step / max(run.total_steps, 1), config.adapt_weight)))
                for key, values in domain.items():
                    epoch_domain.setdefault(key, []).extend(values)
                bar.set_postfix(loss=window_loss / window_steps, images_per_s=round(images_per_s))
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                _save_checkpoint(run, epoch, skip)
        if pending:  # stopped at total_steps between two fetches
            losses, domain = _fetch_losses(run, pending, step, epoch)
            epoch_loss += sum(losses)
            epoch_steps += len(losses)
            for key, values in domain.items():
                epoch_domain.setdefault(key, []).extend(values)
    elapsed = time.perf_counter() - started
    return step, _EpochTraining(
        first_step=first_step, last_step=step, mean_loss=epoch_loss / max(epoch_steps, 1),
        images_per_second=epoch_steps * config.batch_size / elapsed if epoch_steps else 0.0,
        domain={key: float(np.mean(values)) for key, values in epoch_domain.items()})


def _validate_and_checkpoint(run: _Run, epoch: int, step: int, trained: _EpochTraining):
    """Evaluates on the validation split, keeps the best model, writes TensorBoard and the
    epoch's log line, then checkpoints the end of the epoch."""
    config = run.config
    n_batches = math.ceil(run.pipeline.num_examples("validation") / config.eval_batch_size)
    # A bar only where there is something to watch (not for a single batch).
    with console.Progress(total=n_batches, desc="validation", unit="batch", log_summary=False,
                          disable=True if n_batches < 2 else None) as bar:
        labels, outputs = predict_split(run.model, run.pipeline, "validation",
                                        config.eval_batch_size, run.predict_fn, progress=bar)
    metrics = validation_metrics(config, run.model, labels, outputs)
    if not math.isfinite(metrics["loss"]):
        raise TrainingError(f"non-finite validation loss after epoch {epoch}; the last good "
                            f"checkpoint is {run.last_good_checkpoint()}")
    improved = metrics["loss"] < float(run.best_loss.numpy())
    # An adapted run has no target label to choose an epoch by: it keeps its last.
    keep = improved or config.adapt != "none"
    if improved:
        run.best_loss.assign(metrics["loss"])
    if keep:
        run.best_epoch.assign(epoch)
        if run.is_chief:
            save_model_atomic(run.model, os.path.join(run.workdir, "best.keras"))
    if run.is_chief:
        with run.val_writer.as_default(step=step):
            for key, value in metrics.items():
                tf.summary.scalar(key, value)
            tf.summary.scalar("best_loss", float(run.best_loss.numpy()))
            tf.summary.scalar("epoch", epoch)
            for name in config.targets:
                fig = plots.predicted_vs_true(labels[name], outputs[name], name,
                                              title=f"{name}, validation, epoch {epoch}")
                tf.summary.image(f"{name}/predicted_vs_true",
                                 tf.image.decode_png(plots.to_png(fig))[None])
        run.train_writer.flush()
        run.val_writer.flush()
    logging.info("epoch %d/%d (%s); validation %s%s", epoch + 1, run.epochs, trained.describe(),
                 ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                 " (best so far)" if improved else "")
    _save_checkpoint(run, epoch + 1, 0)
    if run.epoch_manager is not None:
        run.epoch_manager.save(checkpoint_number=epoch + 1)


def _finish(run: _Run, step: int) -> dict:
    """The chief publishes the best weights as `model.keras`, then `summary.json`."""
    summary = {"completed": True, "steps": step, "epochs": run.epochs,
               "best_epoch": int(run.best_epoch.numpy()),
               "best_validation_loss": float(run.best_loss.numpy()),
               "strategy": run.config.strategy, "replicas": run.strategy.num_replicas_in_sync,
               "jit_compile": run.jit, "precision": run.precision,
               "steps_per_epoch": run.steps_per_epoch,
               "train_seconds": round(float(run.train_seconds.numpy()), 1), "machine": machine(),
               "model_selection": ("best validation loss" if run.config.adapt == "none" else
                                   "last epoch (adapted: no target labels to select by)")}
    if run.is_chief:
        best_path = os.path.join(run.workdir, "best.keras")
        final_path = os.path.join(run.workdir, "model.keras")
        tmp = final_path + ".tmp"
        shutil.copyfile(best_path, tmp)
        os.replace(tmp, final_path)
        _write_json(os.path.join(run.workdir, "summary.json"), summary)
    return summary


def _validation_metric_names(config: TrainConfig) -> list:
    """The keys `validation_metrics` returns for `config`, known before any validation."""
    names = ["loss"]
    for name in config.targets:
        names += [f"{name}/mae", f"{name}/rmse"]
        if config.head in ("gaussian", "gaussian_full"):
            names += [f"{name}/coverage_68", f"{name}/nll"]
    return names


def _write_hparams(config: TrainConfig, tb_dir: str):
    """The run's flags and the metrics to compare runs by, for TensorBoard's HParams
    dashboard: a session in `tb_dir`, whose metrics are the last values of the `train/` and
    `validation/` scalars below it (so `tensorboard --logdir` on the workdir, or on a folder
    of workdirs, lists every run side by side).

    Written when a run starts afresh only: a resumed run has the same flags (`_check_restart`),
    and a second session start would only repeat the first.
    """
    values = {name: text if isinstance(getattr(config, name), (list, dict))
              else getattr(config, name) for name, text in _flag_items(config)}
    metrics = [hp.Metric(tag, group="validation", display_name=f"validation {tag}",
                         dataset_type=hp.Metric.VALIDATION)
               for tag in [*_validation_metric_names(config), "best_loss"]]
    metrics.append(hp.Metric("loss", group="train", display_name="train loss",
                             dataset_type=hp.Metric.TRAINING))
    writer = tf.summary.create_file_writer(tb_dir)
    with writer.as_default():
        hp.hparams_config(hparams=[hp.HParam(name) for name in values], metrics=metrics)
        hp.hparams(values)
    writer.close()


def _log_sample_inputs(writer, pipeline, config, split, count: int = 8):
    """A few augmented training inputs, min-max stretched for display only."""
    images, _ = next(iter(pipeline.train_epoch(min(count, pipeline.num_examples(split)), 0,
                                               augment=config.augment, split=split)))
    lo = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    hi = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    with writer.as_default(step=0):
        tf.summary.image("sample_inputs", (images - lo) / tf.maximum(hi - lo, 1e-12),
                         max_outputs=count)
