"""The training step the benchmark times, and the model, data and strategy it runs on.

The step has the structure of `deeplense_tf.training`'s: a
`tf.function(jit_compile=...)` around `strategy.run(replica_step)`, the same loss
(`training.loss_per_example`, Gaussian NLL), AdamW with weight decay and global-norm
clipping, batches delivered by `strategy.experimental_distribute_dataset`. The images
are synthetic (the step's cost does not depend on pixel values).

Used by the measuring child processes (`cells`, `inference`) and by `data_chain`; it
sits below the suite and its commands (`deeplense_tf.benchmarks.training`), so that
they can depend on it without a cycle.
"""

from __future__ import annotations

import numpy as np

from deeplense_tf.benchmarks import measure

TARGET = "log10_m_axion"
# U(-24, -22): mean -23, std 2/sqrt(12). Only the loss scale depends on them.
TARGET_MEAN, TARGET_STD = -23.0, 0.577
LOSS = "gaussian_nll"


def build_model(model: str, variant: str | None, image_size: int, overrides: dict | None = None):
    """A shipped regressor (Gaussian head, one target) for `image_size` px images."""
    from deeplense_tf import models

    return models.build_regressor(model, image_shape=(image_size, image_size, 1),
                                  targets=[TARGET], head="gaussian", target_mean=[TARGET_MEAN],
                                  target_std=[TARGET_STD], variant=variant or None,
                                  **(overrides or {}))


def synthetic_batch(batch_size: int, image_size: int, seed: int = 0):
    """(images, {TARGET: labels}): positive float32 pixels and labels in the prior range."""
    rng = np.random.default_rng(seed)
    images = np.abs(rng.normal(size=(batch_size, image_size, image_size, 1))).astype(np.float32)
    labels = rng.uniform(-24.0, -22.0, size=batch_size).astype(np.float32)
    return images, {TARGET: labels}


def make_strategy(replicas: int):
    """The default strategy for one replica; `MirroredStrategy` over `replicas` GPUs or,
    without GPUs, over `replicas` logical CPU devices (configured by the caller before
    TensorFlow starts, see `configure_logical_cpus`)."""
    import tensorflow as tf

    if replicas == 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        if len(gpus) < replicas:
            raise ValueError(f"{replicas} replicas need {replicas} GPUs; found {len(gpus)}")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in gpus[:replicas]])
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < replicas:
        raise ValueError(f"{replicas} replicas need {replicas} logical CPU devices; found "
                         f"{len(cpus)} (configure them before TensorFlow starts)")
    # As deeplense_tf.training.make_strategy("mirrored") on a CPU-only host.
    return tf.distribute.MirroredStrategy(devices=[d.name for d in cpus[:replicas]],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def configure_logical_cpus(count: int) -> None:
    """Splits the CPU into `count` logical devices (they share the same cores)."""
    import tensorflow as tf

    if count > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def accelerators(replicas: int) -> tuple[str, ...]:
    """The GPUs a configuration uses (for their memory statistics)."""
    import tensorflow as tf

    return tuple(f"GPU:{i}" for i in range(min(replicas, len(tf.config.list_physical_devices("GPU")))))


def _optimizer(precision: str):
    import keras

    optimizer = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.05, global_clipnorm=1.0)
    optimizer.exclude_from_weight_decay(
        var_names=["bias", "gamma", "beta", "embedding", "class_token", "scale"])
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def sync(result):
    """Blocks until every tensor in `result` is on the host."""
    import tensorflow as tf

    return tf.nest.map_structure(lambda t: t.numpy(), result)


def train_benchmark(model, image_size: int, *, strategy, batch_size: int, jit: bool,
                    precision: str = "float32", timing: dict | None = None,
                    profile_dir: str | None = None, profile_steps: int = 3) -> dict:
    """Times the training step of `model` (built in `strategy.scope()` under the
    `precision` policy). `timing` holds keyword arguments of `measure.timed_calls`. With
    `profile_dir`, `profile_steps` more steps run under the TensorBoard profiler after
    the timing, so that the profiler does not skew it."""
    import tensorflow as tf

    from deeplense_tf import training

    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"batch size {batch_size} is not divisible by {replicas} replicas")
    with measure.PeakMemory(accelerators(replicas)) as memory:
        with strategy.scope():
            optimizer = _optimizer(precision)
            optimizer.build(model.trainable_variables)

        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                outputs = model(images, training=True)
                per_example = training.loss_per_example(LOSS, model, labels, outputs)
                loss = tf.reduce_sum(per_example) / batch_size
                scaled = optimizer.scale_loss(loss) if precision == "mixed_float16" else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        @tf.function(jit_compile=jit)
        def train_step(images, labels):
            per_replica = strategy.run(replica_step, args=(images, labels))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        data = tf.data.Dataset.from_tensors(synthetic_batch(batch_size, image_size)).repeat()
        batches = iter(strategy.experimental_distribute_dataset(data))
        timed = measure.timed_calls(lambda: train_step(*next(batches)), sync, **(timing or {}))
    result = {"status": "ok", "batch_size": batch_size, "replicas": replicas, "xla": jit,
              "precision": precision, **timed,
              "step_ms": 1e3 * timed["seconds_per_call"],
              "images_per_s": batch_size / timed["seconds_per_call"],
              "cpu_ms_per_image": 1e3 * timed["cpu_seconds_per_call"] / batch_size,
              **memory.as_dict()}
    if profile_dir:
        tf.profiler.experimental.start(profile_dir)
        try:
            for step in range(profile_steps):
                with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
                    sync(train_step(*next(batches)))
        finally:
            tf.profiler.experimental.stop()
        result["profile_dir"] = profile_dir
    return result
