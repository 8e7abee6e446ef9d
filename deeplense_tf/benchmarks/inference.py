"""Inference cost: latency at batch 1 and throughput at large batches, XLA on and off.

The model is called as the exporter's serving function calls it, `model(images,
training=False)` inside a `tf.function(jit_compile=...)`, on host (numpy) images, and
every output is fetched back to the host: what an in-process client pays per request.
For the REST path on top of this see `deeplense_tf.benchmarks.serving`.

At batch 1 the median over single calls is the latency (its 90th percentile beside it);
at larger batches images/s = batch / median seconds per call. A batch whose estimated
call time (from smaller batches, or a third of the training step per image) exceeds
`max_seconds_per_call` is skipped with that estimate as its reason, so that a slow
configuration (XLA on a CPU) cannot eat the benchmark's time budget.
"""

from __future__ import annotations

import numpy as np

from deeplense_tf.benchmarks import measure, train_step


def inference_benchmark(model, image_size: int, batch_size: int, *, jit: bool,
                        predict=None, timing: dict | None = None,
                        gpus: tuple[str, ...] = ()) -> dict:
    """Times `model` on (batch_size, image_size, image_size, 1) host images."""
    import tensorflow as tf

    predict = predict or tf.function(lambda x: model(x, training=False), jit_compile=jit)
    images, _ = train_step.synthetic_batch(batch_size, image_size, seed=1)
    with measure.PeakMemory(gpus) as memory:
        timed = measure.timed_calls(lambda: predict(images), train_step.sync, **(timing or {}))
    seconds = timed["seconds_per_call"]
    result = {"status": "ok", "batch_size": batch_size, "xla": jit, **timed,
              "latency_ms": 1e3 * seconds, "images_per_s": batch_size / seconds,
              "cpu_ms_per_image": 1e3 * timed["cpu_seconds_per_call"] / batch_size,
              **memory.as_dict()}
    if batch_size == 1 and timed["steps_per_repeat"] == 1 and timed["repeats_done"] > 1:
        result["latency_p90_ms"] = 1e3 * float(np.percentile(timed["seconds_per_call_blocks"], 90))
    return result


def estimate_call_s(batch_size: int, previous: list[dict], train: dict | None) -> float | None:
    """Seconds per call at `batch_size` extrapolated from measured smaller batches (their
    per-image time, which only falls with batch size) or from a third of the training
    step's per-image time (a forward pass is about a third of forward + backward)."""
    per_image = [r["seconds_per_call"] / r["batch_size"] for r in previous if r.get("status") == "ok"]
    if train and train.get("status") == "ok":
        per_image.append(train["seconds_per_call"] / train["batch_size"] / 3)
    return min(per_image) * batch_size if per_image else None


def inference_sweep(model, image_size: int, batch_sizes, *, jit: bool, timing: dict,
                    latency_repeats: int, max_seconds_per_call: float, train: dict | None = None,
                    gpus: tuple[str, ...] = ()):
    """Yields one result per batch size (ascending), skipping those estimated too slow."""
    import tensorflow as tf

    # One function for every batch size, with a dynamic batch dimension as in the exported
    # serving signature: traced once (XLA still compiles once per batch size).
    predict = tf.function(lambda x: model(x, training=False), jit_compile=jit,
                          input_signature=[tf.TensorSpec([None, image_size, image_size, 1],
                                                         tf.float32)])
    done = []
    for batch_size in sorted(batch_sizes):
        estimate = estimate_call_s(batch_size, done, train)
        if max_seconds_per_call and estimate is not None and estimate > max_seconds_per_call:
            result = {"status": "skipped", "batch_size": batch_size, "xla": jit,
                      "estimated_seconds_per_call": estimate,
                      "reason": f"estimated {estimate:.0f} s per call (from the measured smaller "
                                f"batches or training step) exceeds --max_seconds_per_call="
                                f"{max_seconds_per_call:g}"}
        else:
            this_timing = dict(timing)
            if batch_size == 1:  # Latency: many single calls, a percentile over them.
                this_timing.update(steps=1, repeats=max(latency_repeats, this_timing.get("repeats", 1)))
            result = inference_benchmark(model, image_size, batch_size, jit=jit, predict=predict,
                                         timing=this_timing, gpus=gpus)
        done.append(result)
        yield result
