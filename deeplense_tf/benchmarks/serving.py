r"""Serving benchmark: REST endpoint vs calling the SavedModel in-process, on loopback.

Usage:
  python -m deeplense_tf.benchmarks.serving --output=serving_benchmark.json
  python -m deeplense_tf.benchmarks.serving --model_base_path=exports/deeplense_axion

Measures latency (p50, p99 per request) and throughput (images/s) at batch 1 and 64,
with 1 and 16 concurrent clients, for two paths over the same SavedModel:

- ``in_process``: ``serving_default`` called from Python threads;
- ``rest``: ``deeplense_tf.serving.client.predict`` (HTTP/1.1 keep-alive, one
  connection per client thread) against ``python -m deeplense_tf.serve`` running in
  its own process, so client and server do not share a GIL.

Each cell runs a fixed number of requests (bounded), ``--repeats`` times, the two
paths taking turns; the table shows medians over repeats, and the REST overhead at
batch 1 is the median of the repeats' paired differences (REST p50 minus the
in-process p50 measured just before it). It also times the parts of one REST request at batch 1
(client JSON encoding, server parsing, response, bare HTTP round trip) to show where
the REST overhead goes. Without ``--model_base_path`` it exports a randomly
initialised ``resnet18`` (``--variant``) into a temporary directory first.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
from absl import app, flags

from deeplense_tf.serving import client


def _percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1e3, q))


def _run_cell(call: Callable[[np.ndarray], object], images: np.ndarray, clients: int, requests: int) -> dict:
    """``requests`` calls spread over ``clients`` threads: latencies and throughput."""
    per_client = max(1, requests // clients)
    for _ in range(2):
        call(images)  # warm (connections, kernels for this batch size)

    def one_client(_):
        latencies = []
        for _ in range(per_client):
            start = time.perf_counter()
            call(images)
            latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = [t for part in pool.map(one_client, range(clients)) for t in part]
    wall = time.perf_counter() - start
    return {
        "p50_ms": _percentile_ms(latencies, 50),
        "p99_ms": _percentile_ms(latencies, 99),
        "images_per_s": len(latencies) * len(images) / wall,
        "requests": len(latencies),
    }


def _median_cells(runs: list[dict]) -> dict:
    return {key: float(np.median([run[key] for run in runs])) for key in ("p50_ms", "p99_ms", "images_per_s")} | {
        "requests": runs[0]["requests"],
        "p50_ms_repeats": [run["p50_ms"] for run in runs],
    }


def _start_server(base_path: str, model_name: str, server_args: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "deeplense_tf.serve", f"--model_base_path={base_path}",
         f"--model_name={model_name}", "--rest_api_port=0", "--file_system_poll_wait_seconds=0", *server_args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return process, line.split(" at ")[1].split()[0]


def _breakdown(url: str, model_name: str, signature, image: np.ndarray, large: np.ndarray | None = None, repeats: int = 200) -> dict:
    """Median milliseconds of the parts of one REST request at batch 1 (and of the
    client's encoding and the server's parsing of the ``large`` batch)."""
    import tensorflow as tf

    from deeplense_tf.serving import protocol

    def median_ms(function, repeats: int = repeats) -> float:
        function()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1e3)

    body = b'{"inputs": {"image": ' + client.encode_images(image) + b"}}"
    other_body = json.dumps({"inputs": {"image": image.tolist()}}).encode()
    spec = {"image": protocol.InputSpec(np.dtype("float32"), (None, *image.shape[1:]))}
    tensor = tf.constant(image)
    outputs = {key: value.numpy() for key, value in signature(image=tensor).items()}
    response = protocol.format_predict_response(outputs, row_format=False)
    parts = {}
    if large is not None:
        large_body = b'{"inputs": {"image": ' + client.encode_images(large) + b"}}"
        parts[f"client_encode_batch{len(large)}_ms"] = median_ms(lambda: client.encode_images(large), 10)
        parts[f"server_parse_batch{len(large)}_ms"] = median_ms(
            lambda: protocol.parse_predict_request(large_body, lambda _: spec), 10
        )
    return {
        "client_encode_ms": median_ms(lambda: client.encode_images(image)),
        "client_encode_json_dumps_ms": median_ms(lambda: json.dumps({"inputs": {"image": image.tolist()}})),
        "server_parse_ms": median_ms(lambda: protocol.parse_predict_request(body, lambda _: spec)),
        # What a client that writes its JSON with json.dumps sends (17 digits, blanks).
        "server_parse_json_dumps_ms": median_ms(lambda: protocol.parse_predict_request(other_body, lambda _: spec)),
        "model_call_ms": median_ms(lambda: {k: v.numpy() for k, v in signature(image=tf.constant(image)).items()}),
        "server_format_ms": median_ms(lambda: protocol.format_predict_response(outputs, row_format=False)),
        "client_decode_ms": median_ms(lambda: json.loads(response)),
        "http_round_trip_ms": median_ms(lambda: client.model_status(url, model_name)),
        **parts,
    }


def run_benchmark(
    model_base_path: str,
    model_name: str,
    batch_sizes: Sequence[int] = (1, 64),
    concurrency: Sequence[int] = (1, 16),
    requests_batch1: int = 300,
    requests_large: int = 16,
    repeats: int = 3,
    server_args: Sequence[str] = (),
) -> dict:
    """Runs every (path, clients, batch) cell; returns the results as a dict."""
    import tensorflow as tf

    from deeplense_tf.serving.repository import ModelRepository

    load_before = os.getloadavg()[0]
    repository = ModelRepository(model_name, model_base_path, warm_up=False)
    repository.poll()
    servable = repository.get()
    signature = servable.signature()
    image_shape = servable.inputs_of("")["image"].shape[1:]
    rng = np.random.default_rng(0)

    def in_process(images):
        return {key: value.numpy() for key, value in signature(image=tf.constant(images)).items()}

    process, url = _start_server(model_base_path, model_name, server_args)
    try:
        def rest(images):
            # 16 clients of 64 images queue for minutes on a busy 2-core machine.
            return client.predict(url, model_name, images, max_batch_size=max(batch_sizes), timeout=900)

        paths = (("in_process", in_process), ("rest", rest))
        cells = []
        for clients in concurrency:
            for batch in batch_sizes:
                images = rng.random((batch, *image_shape), dtype=np.float32)
                requests = requests_batch1 if batch == 1 else max(requests_large, clients)
                # Paths alternate within the repeats, so that load drifting on a shared
                # machine weighs on both alike.
                runs = {path: [] for path, _ in paths}
                for _ in range(repeats):
                    for path, call in paths:
                        runs[path].append(_run_cell(call, images, clients, requests))
                for path, _ in paths:
                    cells.append({"path": path, "clients": clients, "batch": batch, **_median_cells(runs[path])})
        cells.sort(key=lambda c: (c["path"], c["clients"], c["batch"]))
        large = rng.random((max(batch_sizes), *image_shape), dtype=np.float32) if max(batch_sizes) > 1 else None
        breakdown = _breakdown(url, model_name, signature, rng.random((1, *image_shape), dtype=np.float32), large)
    finally:
        process.terminate()
        process.wait(timeout=30)

    def p50s(path):
        return next((c["p50_ms_repeats"] for c in cells if c["path"] == path and c["clients"] == 1 and c["batch"] == 1), None)

    # Each REST repeat ran right after an in-process one: the median of the paired
    # differences is less sensitive to the machine's drift than a difference of medians.
    paired = None if p50s("rest") is None else [r - i for r, i in zip(p50s("rest"), p50s("in_process"))]

    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        # Other work on the machine skews every number: 1-minute load, before and after.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "tensorflow_version": tf.__version__,
        "model_base_path": os.path.basename(os.path.normpath(model_base_path)),
        "model_version": servable.version,
        "image_shape": list(image_shape),
        "repeats": repeats,
        "server_args": list(server_args),
        "cells": cells,
        "rest_overhead_p50_ms_batch1": None if paired is None else float(np.median(paired)),
        "rest_overhead_p50_ms_batch1_repeats": paired,
        "breakdown_batch1": breakdown,
    }


def markdown_table(results: dict) -> str:
    lines = [
        "| path | clients | batch | p50 ms | p99 ms | images/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in results["cells"]:
        lines.append(
            f"| {c['path']} | {c['clients']} | {c['batch']} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['images_per_s']:.0f} |"
        )
    overhead = results["rest_overhead_p50_ms_batch1"]
    lines.append("")
    if overhead is not None:
        each = ", ".join(f"{d:.2f}" for d in results["rest_overhead_p50_ms_batch1_repeats"])
        lines.append(
            f"REST p50 - in-process p50 at batch 1, one client: {overhead:.2f} ms, median of the repeats' "
            f"paired differences ({each}); target: at most 2 ms"
        )
    parts = ", ".join(f"{k[:-3].replace('_', ' ')} {v:.2f}" for k, v in results["breakdown_batch1"].items())
    lines.append(f"Parts of a REST request (batch 1 unless named), medians in ms: {parts}")
    machine = results["machine"]
    lines.append(
        f"Machine: {machine['cpu_count']} CPUs, {machine['platform']}; load average "
        f"{results['load_average'][0]} before, {results['load_average'][1]} after"
    )
    return "\n".join(lines)


def export_demo_model(export_base: str, backbone: str, variant: str, image_size: int) -> str:
    """Exports a randomly initialised registered regressor; returns its base path."""
    from deeplense_tf import models
    from deeplense_tf.export import export_saved_model

    model = models.build_regressor(
        backbone, variant=variant, image_shape=(image_size, image_size, 1), targets=["log10_m_axion"],
        head="gaussian", target_mean=[-23.0], target_std=[0.6],
    )
    export_saved_model(model, export_base, "benchmark", warmup_batch_sizes=(1,))
    return os.path.join(export_base, "benchmark")


def _define_flags() -> None:
    flags.DEFINE_string("model_base_path", None, "Exported model (directory of versions); default: export a demo model.")
    flags.DEFINE_string("model_name", "benchmark", "Name to serve the model under.")
    flags.DEFINE_string("backbone", "resnet18", "Demo model backbone, when --model_base_path is not given.")
    flags.DEFINE_string("variant", "S", "Demo model variant (deeplense_tf.models registry).")
    flags.DEFINE_integer("image_size", 64, "Demo model image size (pixels).")
    flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes.")
    flags.DEFINE_list("concurrency", ["1", "16"], "Numbers of concurrent clients.")
    flags.DEFINE_integer("requests_batch1", 300, "Requests per batch-1 cell.")
    flags.DEFINE_integer("requests_large", 16, "Requests per cell of a larger batch.")
    flags.DEFINE_integer("repeats", 3, "Repeats per cell; the table shows medians.")
    flags.DEFINE_string("output", None, "Write the results as JSON here.")
    flags.DEFINE_list("server_args", [], "Extra flags for deeplense_tf.serve, e.g. --tensorflow_intra_op_parallelism=1.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    with tempfile.TemporaryDirectory() as scratch:
        base_path, name = FLAGS.model_base_path, FLAGS.model_name
        if base_path is None:
            base_path = export_demo_model(scratch, FLAGS.backbone, FLAGS.variant, FLAGS.image_size)
        results = run_benchmark(
            base_path, name,
            batch_sizes=[int(b) for b in FLAGS.batch_sizes],
            concurrency=[int(c) for c in FLAGS.concurrency],
            requests_batch1=FLAGS.requests_batch1,
            requests_large=FLAGS.requests_large,
            repeats=FLAGS.repeats,
            server_args=FLAGS.server_args,
        )
    if FLAGS.model_base_path is None:
        results["model"] = f"{FLAGS.backbone}/{FLAGS.variant} {FLAGS.image_size}x{FLAGS.image_size} (random weights)"
    print(markdown_table(results))
    if FLAGS.output:
        with open(FLAGS.output, "w") as stream:
            json.dump(results, stream, indent=2)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
