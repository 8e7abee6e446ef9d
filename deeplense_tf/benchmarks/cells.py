"""Runs benchmark configurations ("cells") each in a fresh Python process.

Why a process per cell: peak memory is then the cell's own (nothing left over from
another model), the number of logical CPU devices for `MirroredStrategy` can be chosen
before TensorFlow starts, and a configuration that hangs, runs past its time limit or
crashes (TF 2.21's oneDNN kernels have segfaulted on some convolutions) costs that cell
only. The price is TensorFlow's import (a few seconds) per cell, recorded as
`import_s`.

A cell is a JSON spec: `replicas`, `mixed_precision`, timing settings and a list of
`points`, each one model configuration measured in order (cost, training step,
inference batch sizes). The child writes one JSON line per measurement as soon as it
has it, so a cell stopped at its time limit keeps what it measured.

  python -m deeplense_tf.benchmarks.cells SPEC.json OUT.jsonl   (run by `run_cell`)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def _failure(exc: BaseException) -> dict:
    return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:800]}


def child_main(spec_path: str, out_path: str) -> None:
    started = time.perf_counter()
    with open(spec_path) as f:
        spec = json.load(f)
    out = open(out_path, "a", buffering=1)

    def emit(record):
        out.write(json.dumps(record, default=float) + "\n")

    from deeplense_tf.benchmarks import train_step

    train_step.configure_logical_cpus(spec["replicas"])  # Before TensorFlow's runtime starts.
    import gc

    import keras
    import tensorflow as tf

    from deeplense_tf import models, training
    from deeplense_tf.benchmarks import inference, measure

    precision = training.resolve_precision(spec.get("mixed_precision", "auto"),
                                           tf.distribute.get_strategy())
    gpus = train_step.accelerators(spec["replicas"])
    imported = time.perf_counter()
    if spec.get("warmup") and spec["points"]:
        _warm_up(spec["points"][0], precision)
    emit({"measurement": "process", "import_s": imported - started,
          "warmup_s": time.perf_counter() - imported, "baseline_rss_mb": measure.rss_mb(),
          "precision": precision, "devices": [d.name for d in tf.config.list_logical_devices()]})
    for point in spec["points"]:
        key = point["key"]
        keras.mixed_precision.set_global_policy(precision)
        point_start = time.perf_counter()
        try:
            strategy = train_step.make_strategy(spec["replicas"])
            with strategy.scope():
                model = train_step.build_model(point["model"], point.get("variant"),
                                               point["image_size"], point.get("overrides"))
            cost = models.count_params_and_flops(model)
            emit({"key": key, "measurement": "cost", "status": "ok", "params": cost.params,
                  "flops_per_image": cost.flops_per_image,
                  "build_s": time.perf_counter() - point_start})
        except Exception as exc:  # An invalid configuration: say why, go on.
            emit({"key": key, "measurement": "cost", **_failure(exc)})
            continue
        train = None
        if point.get("train_batch_size"):
            try:
                train = train_step.train_benchmark(
                    model, point["image_size"], strategy=strategy,
                    batch_size=point["train_batch_size"], jit=point["xla"],
                    precision=precision, timing=spec["timing"],
                    profile_dir=point.get("profile_dir"), profile_steps=spec.get("profile_steps", 3))
            except Exception as exc:
                train = _failure(exc)
            emit({"key": key, "measurement": "train", **train,
                  "elapsed_s": time.perf_counter() - point_start})
        batches = point.get("inference_batch_sizes") or []
        try:
            for result in inference.inference_sweep(
                    model, point["image_size"], batches, jit=point["xla"], timing=spec["timing"],
                    latency_repeats=spec.get("latency_repeats", 10),
                    max_seconds_per_call=spec.get("max_seconds_per_call", 0), train=train, gpus=gpus):
                emit({"key": key, "measurement": "inference", **result,
                      "elapsed_s": time.perf_counter() - point_start})
        except Exception as exc:
            emit({"key": key, "measurement": "inference", "batch_size": None, **_failure(exc)})
        del model
        if point is not spec["points"][-1]:  # Slow (seconds): only between points.
            keras.backend.clear_session()
            gc.collect()
    emit({"measurement": "done", "wall_s": time.perf_counter() - started})
    out.close()


def _warm_up(point: dict, precision: str) -> None:
    """One training step and one prediction of the family's `test` variant: TensorFlow's
    one-time allocations (thread pools, kernels, function machinery) happen here."""
    import gc

    import keras
    import tensorflow as tf

    from deeplense_tf.benchmarks import inference, train_step

    keras.mixed_precision.set_global_policy(precision)
    model = train_step.build_model(point["model"], "test", point["image_size"])
    once = {"warmup": 0, "steps": 1, "repeats": 1, "max_seconds": 0.0}
    train_step.train_benchmark(model, point["image_size"], strategy=tf.distribute.get_strategy(),
                               batch_size=1, jit=point["xla"], precision=precision, timing=once)
    inference.inference_benchmark(model, point["image_size"], 1, jit=point["xla"], timing=once)
    del model
    keras.backend.clear_session()
    gc.collect()


def _log_tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _error_line(tail: str) -> str:
    """The most telling line of a failed child's log (the exception, if any)."""
    candidates = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(candidates):
        if "Error" in line or "error" in line or "Exception" in line:
            return line[:400]
    return candidates[-1][:400] if candidates else ""


def run_cell(spec: dict, name: str, work_dir: str, timeout_s: float) -> dict:
    """Runs `spec` in a child process for at most `timeout_s` seconds; returns
    {"lines": [records...], "returncode", "timed_out", "wall_s", "reason"}."""
    os.makedirs(work_dir, exist_ok=True)
    spec_path = os.path.join(work_dir, f"{name}.spec.json")
    out_path = os.path.join(work_dir, f"{name}.jsonl")
    log_path = os.path.join(work_dir, f"{name}.log")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    if os.path.exists(out_path):
        os.remove(out_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "deeplense_tf.benchmarks.cells", spec_path, out_path],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = process.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)  # The child and anything it started.
            returncode = process.wait()
    wall = time.perf_counter() - start
    lines = []
    if os.path.exists(out_path):
        with open(out_path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    reason = ""
    if timed_out:
        reason = f"stopped at the configuration's {timeout_s:.0f} s limit before this was measured"
    elif returncode:
        how = (f"killed by signal {signal.Signals(-returncode).name}" if returncode < 0
               else f"exit code {returncode}")
        reason = f"process failed ({how}): {_error_line(_log_tail(log_path))}"
    return {"name": name, "lines": lines, "returncode": returncode, "timed_out": timed_out,
            "wall_s": wall, "reason": reason, "log": log_path}


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])
    # Everything is written: skip the interpreter's teardown of TensorFlow (seconds).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
