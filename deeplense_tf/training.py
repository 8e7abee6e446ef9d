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
training-split statistics built into the model), TensorBoard logs (`tensorboard/`),
checkpoints, `best.keras` while training, and `model.keras` + `summary.json` when done.
A non-finite loss stops the run before anything is saved, keeping the last good
checkpoint.
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

from deeplense_tf import input_pipeline, models, plots

LOSSES = ("gaussian_nll", "mse", "huber")
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
    loss: str = "gaussian_nll"  # gaussian_nll trains a Gaussian head; mse/huber a point head
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
        if self.train_examples < 0:
            raise ValueError(f"--train_examples: must be >= 0, got {self.train_examples}")
        return self

    @property
    def train_split(self) -> str:
        return f"train[:{self.train_examples}]" if self.train_examples else "train"

    @property
    def head(self) -> str:
        return "gaussian" if self.loss == "gaussian_nll" else "point"


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


def write_flagfile(config: TrainConfig, workdir: str) -> None:
    """`workdir/flags.cfg`: every flag of the run, replayable with --flagfile."""
    lines = ["# Resolved flags of this run; replay with:",
             "#   python -m deeplense_tf.train --flagfile=flags.cfg --workdir=DIR",
             *[f"--{k}={v}" for k, v in _flag_items(config)]]
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


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def loss_per_example(loss: str, model, labels, outputs, huber_delta: float = 1.0):
    """Per-example loss (batch,), averaged over targets, in standardized target units."""
    z_true = models.standardize(model, labels)
    z_pred = models.standardize(model, outputs)
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


def predict_split(model, pipeline, split: str, batch_size: int, predict_fn=None):
    """(labels, outputs): dicts of numpy arrays over the whole split, in file order."""
    predict_fn = predict_fn or tf.function(lambda x: model(x, training=False))
    labels, outputs = {}, {}
    for images, batch_labels in pipeline.eval_dataset(split, batch_size):
        out = predict_fn(images)
        for k, v in batch_labels.items():
            labels.setdefault(k, []).append(v.numpy())
        for k, v in out.items():
            outputs.setdefault(k, []).append(v.numpy())
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


def _statistics(pipeline, split, workdir, is_chief):
    """Training-split statistics, computed once and kept in the workdir for restarts."""
    path = os.path.join(workdir, "statistics.json")
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        return input_pipeline.Statistics(**stored)
    stats = pipeline.statistics(split)
    if is_chief:
        _write_json(path, dataclasses.asdict(stats))
    return stats


def _check_restart(config, workdir, is_chief):
    """A restart must use the same configuration as the run it resumes."""
    path = os.path.join(workdir, "config.json")
    current = dataclasses.asdict(config)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        # These may change between attempts without changing the result.
        volatile = {"log_every_steps", "checkpoint_every_steps", "eval_batch_size", "cache",
                    "data_dir"}
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
        variant=config.variant or None, dropout=config.dropout, **config.model_overrides)


def train_and_evaluate(config: TrainConfig, workdir: str) -> dict:
    """Trains (or resumes) a regressor; returns the summary written to `summary.json`."""
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
    summary_path = os.path.join(workdir, "summary.json")

    import keras

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.seed)
    cache = {"auto": None, "true": True, "false": False}[config.cache]
    pipeline = input_pipeline.Pipeline(config.data_dir, config.dataset, config.targets,
                                       seed=config.seed, cache=cache)
    pipeline.num_examples("validation")
    _check_restart(config, workdir, is_chief)
    if is_chief:
        write_flagfile(config, workdir)
    train_split = config.train_split
    n_train = pipeline.num_examples(train_split)
    if config.train_examples > n_train:
        raise ValueError(f"--train_examples={config.train_examples} exceeds the {n_train} "
                         "training examples")
    stats = _statistics(pipeline, train_split, workdir, is_chief)
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch_size={config.batch_size} exceeds the {n_train} training "
                         "examples")
    total_steps = config.train_steps or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total_steps // 2)

    with strategy.scope():
        model = build_model(config, stats, pipeline.image_shape)
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
        optimizer.build(model.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        best_loss = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_loss")
        best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
        # Wall time spent training, summed over restarts (for model cards).
        train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var,
                                     step_in_epoch=step_in_epoch, best_loss=best_loss,
                                     best_epoch=best_epoch, train_seconds=train_seconds)
    # Only the chief keeps checkpoints; other workers must take part in saving (it is a
    # collective operation) and write to a scratch directory that they delete.
    ckpt_dir = os.path.join(workdir, "checkpoints") if is_chief else tempfile.mkdtemp()
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("Resumed from %s (epoch %d, step %d of it)", manager.latest_checkpoint,
                     int(epoch_var.numpy()), int(step_in_epoch.numpy()))
    elif os.path.exists(summary_path):
        os.remove(summary_path)

    tb_dir = os.path.join(workdir, "tensorboard") if is_chief else tempfile.mkdtemp()
    train_writer = tf.summary.create_file_writer(os.path.join(tb_dir, "train"))
    val_writer = tf.summary.create_file_writer(os.path.join(tb_dir, "validation"))

    global_batch = config.batch_size

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            per_example = loss_per_example(config.loss, model, labels, outputs, config.huber_delta)
            loss = tf.reduce_sum(per_example) / global_batch
            scaled = optimizer.scale_loss(loss) if precision == "mixed_float16" else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function(jit_compile=jit)
    def train_step(images, labels):
        per_replica = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    predict_fn = tf.function(lambda x: model(x, training=False), jit_compile=jit)

    session_start = [time.perf_counter()]

    def save_checkpoint(epoch, step):
        now = time.perf_counter()
        train_seconds.assign_add(now - session_start[0])
        session_start[0] = now
        epoch_var.assign(epoch)
        step_in_epoch.assign(step)
        manager.save(checkpoint_number=int(optimizer.iterations.numpy()))

    start_epoch = int(epoch_var.numpy())
    skip = int(step_in_epoch.numpy())
    if start_epoch == 0 and skip == 0 and is_chief:
        _log_sample_inputs(train_writer, pipeline, config, train_split)
    step = int(optimizer.iterations.numpy())
    for epoch in range(start_epoch, epochs):
        dataset = pipeline.train_epoch(config.batch_size, epoch, augment=config.augment,
                                       skip_batches=skip, split=train_split)
        dataset = strategy.experimental_distribute_dataset(dataset)
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        pending = []
        for images, labels in dataset:
            if step >= total_steps:
                break
            pending.append(train_step(images, labels))
            step += 1
            skip += 1
            if step % config.log_every_steps == 0 or skip == steps_per_epoch:
                losses = [float(x) for x in pending]
                pending = []
                if not all(map(math.isfinite, losses)):
                    raise TrainingError(
                        f"non-finite training loss at step {step} (epoch {epoch}); nothing was "
                        f"saved from it. The last good checkpoint is {manager.latest_checkpoint}. "
                        "Lower --learning_rate or check the data.")
                window_loss += sum(losses)
                window_steps += len(losses)
                elapsed = time.perf_counter() - window_start
                images_per_s = window_steps * global_batch / elapsed
                with train_writer.as_default(step=step):
                    tf.summary.scalar("loss", window_loss / window_steps)
                    tf.summary.scalar("learning_rate", float(schedule(step)))
                    tf.summary.scalar("images_per_second", images_per_s)
                logging.info("epoch %d step %d loss %.4f (%.0f images/s)", epoch, step,
                             window_loss / window_steps, images_per_s)
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                save_checkpoint(epoch, skip)
        if pending:
            losses = [float(x) for x in pending]
            if not all(map(math.isfinite, losses)):
                raise TrainingError(f"non-finite training loss at step {step} (epoch {epoch}); "
                                    f"the last good checkpoint is {manager.latest_checkpoint}")
        skip = 0
        labels, outputs = predict_split(model, pipeline, "validation", config.eval_batch_size,
                                        predict_fn)
        metrics = validation_metrics(config, model, labels, outputs)
        if not math.isfinite(metrics["loss"]):
            raise TrainingError(f"non-finite validation loss after epoch {epoch}; the last good "
                                f"checkpoint is {manager.latest_checkpoint}")
        improved = metrics["loss"] < float(best_loss.numpy())
        if improved:
            best_loss.assign(metrics["loss"])
            best_epoch.assign(epoch)
            if is_chief:
                save_model_atomic(model, os.path.join(workdir, "best.keras"))
        if is_chief:
            with val_writer.as_default(step=step):
                for key, value in metrics.items():
                    tf.summary.scalar(key, value)
                tf.summary.scalar("epoch", epoch)
                for name in config.targets:
                    fig = plots.predicted_vs_true(labels[name], outputs[name], name,
                                                  title=f"{name}, validation, epoch {epoch}")
                    tf.summary.image(f"{name}/predicted_vs_true",
                                     tf.image.decode_png(plots.to_png(fig))[None])
            train_writer.flush()
            val_writer.flush()
        logging.info("epoch %d validation %s%s", epoch,
                     ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                     " (best so far)" if improved else "")
        save_checkpoint(epoch + 1, 0)
        if step >= total_steps:
            break

    summary = {"completed": True, "steps": step, "epochs": epochs,
               "best_epoch": int(best_epoch.numpy()), "best_validation_loss": float(best_loss.numpy()),
               "strategy": config.strategy, "replicas": replicas, "jit_compile": jit,
               "precision": precision, "steps_per_epoch": steps_per_epoch,
               "train_seconds": round(float(train_seconds.numpy()), 1), "machine": machine()}
    if is_chief:
        best_path = os.path.join(workdir, "best.keras")
        final_path = os.path.join(workdir, "model.keras")
        tmp = final_path + ".tmp"
        shutil.copyfile(best_path, tmp)
        os.replace(tmp, final_path)
        _write_json(summary_path, summary)
    else:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(tb_dir, ignore_errors=True)
    return summary


def _log_sample_inputs(writer, pipeline, config, split, count: int = 8):
    """A few augmented training inputs, min-max stretched for display only."""
    images, _ = next(iter(pipeline.train_epoch(min(count, pipeline.num_examples(split)), 0,
                                               augment=config.augment, split=split)))
    lo = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    hi = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    with writer.as_default(step=0):
        tf.summary.image("sample_inputs", (images - lo) / tf.maximum(hi - lo, 1e-12),
                         max_outputs=count)
