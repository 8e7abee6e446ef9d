r"""Benchmark of `predict` on survey-like cut-outs: cut-outs per second, and where the time goes.

  python -m deeplense_tf.benchmarks.predict --num_cutouts=10000 --output_dir=bench_predict \
      [--model=hybrid_model_ii_axion] [--cutouts_dir=DIR] [--num_workers=2]

Writes `--num_cutouts` Euclid-style files (100 x 100 px of 0.1", rotated, noisy, with an
RMS extension; `deeplense_tf.realdata.mock`, 100 distinct lenses at varied rotations and
noise draws) unless `--cutouts_dir` already holds them, then times `predict_files` end to
end (reading, conversion, resampling, noise matching, inference, the output table) with
all workers, and, on a sample of files in this process, each stage alone. Prints a table
and writes `predict_benchmark.json`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import numpy as np
from absl import app, flags


def write_cutouts(folder: str, count: int, distinct: int = 100, seed: int = 0) -> list[str]:
    """`count` Euclid-style FITS cut-outs in `folder` (kept if already there)."""
    from deeplense_tf.realdata import mock

    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"cutout_{i:06d}.fits") for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    if not missing:
        return paths
    rng = np.random.default_rng(seed)
    rotations = rng.uniform(0, 360, distinct)
    lenses = [mock.render_on_grid("model_ii_axion", seed, k, num_pix=100, pixel_scale_arcsec=0.1,
                                  rotation_deg=float(rotations[k]))[0] for k in range(distinct)]
    for i in missing:
        k = i % distinct
        mock.write_euclid(paths[i], lenses[k], ra=150.0 + i * 1e-3, dec=2.0,
                          rotation_deg=float(rotations[k]), noise_sigma=0.011,
                          rng=np.random.default_rng([seed, i]))
    return paths


def stage_times(paths, model: str, repeats: int = 3) -> dict:
    """Median milliseconds per cut-out of each stage, one process, over `paths`."""
    from deeplense_tf import predict
    from deeplense_tf.realdata import fits as fits_io
    from deeplense_tf.realdata import resample
    from deeplense_tf.simulation import instruments

    predictor = predict.Predictor(model)
    instrument = instruments.get(predictor.instrument)
    timings = {"read + convert": [], "resample": [], "match noise": [], "inference (batch 256)": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        cutouts = [fits_io.read_cutout(p, instrument) for p in paths]
        t1 = time.perf_counter()
        prepared = [resample.to_instrument_grid(c, instrument) for c in cutouts]
        t2 = time.perf_counter()
        matched = [resample.match_noise(p, instrument, i) for i, p in enumerate(prepared)]
        t3 = time.perf_counter()
        images = np.stack([m.image for m in matched])[..., None]
        batch = np.concatenate([images] * max(1, 256 // len(images) + 1))[:256]
        predictor(batch)  # warm
        t4 = time.perf_counter()
        predictor(batch)
        t5 = time.perf_counter()
        n = len(paths)
        timings["read + convert"].append((t1 - t0) / n * 1e3)
        timings["resample"].append((t2 - t1) / n * 1e3)
        timings["match noise"].append((t3 - t2) / n * 1e3)
        timings["inference (batch 256)"].append((t5 - t4) / 256 * 1e3)
    return {k: statistics.median(v) for k, v in timings.items()}


def run(output_dir: str, num_cutouts: int, model: str, cutouts_dir: str | None = None,
        num_workers: int | None = None, repeats: int = 2, sample: int = 200) -> dict:
    from deeplense_tf import predict
    from deeplense_tf.simulation import parallel

    os.makedirs(output_dir, exist_ok=True)
    folder = cutouts_dir or os.path.join(output_dir, "cutouts")
    t0 = time.perf_counter()
    paths = write_cutouts(folder, num_cutouts)
    write_seconds = time.perf_counter() - t0
    workers = num_workers or parallel.default_num_workers()
    predictor = predict.Predictor(model)
    predict.predict_images(np.zeros((2, *predictor.image_shape), np.float32), predictor)  # warm
    runs = []
    for _ in range(repeats):
        start_cpu = time.process_time()
        t = time.perf_counter()
        table = predict.predict_files(paths, predictor, num_workers=workers)
        path = os.path.join(output_dir, "predictions.parquet")
        predict.write_table(table, path)
        wall = time.perf_counter() - t
        runs.append({"seconds": wall, "cutouts_per_s": len(paths) / wall,
                     "main_process_cpu_s": time.process_time() - start_cpu,
                     "ok": int(np.sum(np.asarray(table["status"]) == "ok"))})
    stages = stage_times(paths[:sample], model)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} logical cores, {platform.processor() or 'CPU'}",
        "load_average_after": os.getloadavg(),
        "model": model, "num_cutouts": len(paths), "workers": workers,
        "cutout": "Euclid-style 100 x 100 px of 0.1\", rotated, noise + RMS extension",
        "write_seconds": write_seconds, "runs": runs,
        "median_cutouts_per_s": statistics.median(r["cutouts_per_s"] for r in runs),
        "stage_ms_per_cutout_one_process": stages,
    }
    with open(os.path.join(output_dir, "predict_benchmark.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def table(result: dict) -> str:
    lines = [f"predict on {result['num_cutouts']} cut-outs ({result['cutout']}), model "
             f"{result['model']}, {result['workers']} reading workers; {result['machine']}", "",
             "| run | seconds | cut-outs/s |", "|---|---|---|"]
    for i, r in enumerate(result["runs"]):
        lines.append(f"| {i + 1} | {r['seconds']:.1f} | {r['cutouts_per_s']:.0f} |")
    lines += ["", "| stage (one process) | ms per cut-out |", "|---|---|"]
    for stage, ms in result["stage_ms_per_cutout_one_process"].items():
        lines.append(f"| {stage} | {ms:.2f} |")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("output_dir", None, "Where results (and the cut-outs) go.", required=True)
    flags.DEFINE_integer("num_cutouts", 10000, "Cut-outs to predict.")
    flags.DEFINE_string("model", "hybrid_model_ii_axion", "A shipped Euclid model (or path).")
    flags.DEFINE_string("cutouts_dir", None, "Reuse cut-outs written before.")
    flags.DEFINE_integer("num_workers", None, "Reading processes (default: all cores).")
    flags.DEFINE_integer("repeats", 2, "Timed end-to-end runs.")


def main(argv):
    del argv
    result = run(FLAGS.output_dir, FLAGS.num_cutouts, FLAGS.model, FLAGS.cutouts_dir,
                 FLAGS.num_workers, FLAGS.repeats)
    print(table(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
