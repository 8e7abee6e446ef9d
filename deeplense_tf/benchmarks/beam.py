r"""Generating a data set through Apache Beam against the local path, side by side.

  python -m deeplense_tf.benchmarks.beam [--num_images=3000] [--small_images=48]
      [--repeats=3] [--config=euclid_axion] [--num_workers=2]
      [--beam_pipeline_options=runner=FnApiRunner,direct_num_workers=2,direct_running_mode=multi_processing]
      [--output=beam.json]

Builds the train split of `config` (`num_images` images; no validation or test) end to
end through the real builder, alternately the local way (`num_workers` spawned
simulation processes) and through a Beam pipeline, each in a fresh data directory,
`repeats` times; the rates are medians over the repeats. Each repeat also builds
`small_images` both ways, so that the fixed start-up of a path (spawning workers,
importing TensorFlow and lenstronomy in them, building simulators, writing the
metadata) separates from the cost per image:

    time(N) = start_up + N * seconds_per_image,   seconds_per_image = CPU per image / cores

CPU per image is the CPU time of this process and every process it started (sampled
while they run), over the images: the Beam path's extra CPU per image is what its
per-element machinery, its two shuffles (the index `Reshuffle`, then TFDS's
`GroupByKey` of every serialized example into its shard) and its shard writing cost on
top of simulating. The machine is shared, so each run also records how many cores
other processes kept busy meanwhile.

The default runner is the FnApiRunner, the engine behind Beam's DirectRunner:
`runner=DirectRunner` in Beam 2.77 first tries to download and start PrismRunner,
which runs one in-process worker and ignores `direct_num_workers`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time

from absl import app, flags

DEFAULT_BEAM_OPTIONS = "runner=FnApiRunner,direct_num_workers=2,direct_running_mode=multi_processing"


class _CpuMeter(threading.Thread):
    """CPU seconds of this process and all its descendants (polled, since Beam's worker
    processes are reaped by threads of the runner that may outlive the build call), and
    the cores other processes kept busy."""

    def __init__(self, interval_s: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self._psutil, self._interval = psutil, interval_s
        self._me = psutil.Process()
        self._seen: dict[tuple[int, float], float] = {}
        self._done = threading.Event()
        self._start_cpu = self._cpu(self._me)
        self._start_busy = self._busy()
        self._start_wall = time.perf_counter()

    def _cpu(self, proc) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _sample(self) -> None:
        for proc in self._me.children(recursive=True):
            try:
                self._seen[(proc.pid, proc.create_time())] = self._cpu(proc)
            except self._psutil.Error:  # exited meanwhile
                continue

    def run(self) -> None:
        while not self._done.wait(self._interval):
            self._sample()

    def stop(self) -> dict:
        self._sample()
        self._done.set()
        self.join()
        wall = time.perf_counter() - self._start_wall
        cpu = self._cpu(self._me) - self._start_cpu + sum(self._seen.values())
        others = max(0.0, self._busy() - self._start_busy - cpu) / wall
        return {"wall_s": wall, "cpu_s": cpu, "other_processes_cores": others}


def build_once(config: str, num_images: int, data_dir: str, *, beam_options: str | None,
               num_workers: int) -> dict:
    """Wall and CPU time of one end-to-end build of `num_images` training images."""
    from deeplense_tf import build_dataset

    meter = _CpuMeter()
    meter.start()
    builder = build_dataset.build(config, data_dir, train_size=num_images, validation_size=0,
                                  test_size=0, beam_options=beam_options,
                                  num_workers=None if beam_options else num_workers)
    out = meter.stop()
    split = builder.info.splits["train"]
    assert split.num_examples == num_images, (split.num_examples, num_images)
    out.update(images=num_images, bytes=split.num_bytes, shards=len(split.shard_lengths))
    return out


def _fit(small: dict, large: dict) -> dict:
    """time = start_up + images * seconds_per_image through two builds (CPU likewise)."""
    images = large["images"] - small["images"]
    per_image = (large["wall_s"] - small["wall_s"]) / images
    cpu_per_image = (large["cpu_s"] - small["cpu_s"]) / images
    return {"seconds_per_image": per_image, "cpu_s_per_image": cpu_per_image,
            "start_up_s": large["wall_s"] - large["images"] * per_image,
            "start_up_cpu_s": large["cpu_s"] - large["images"] * cpu_per_image}


def _summary(runs: list[dict], small_runs: list[dict]) -> dict:
    fits = [_fit(s, r) for s, r in zip(small_runs, runs)]
    return {
        "images_per_s": statistics.median(r["images"] / r["wall_s"] for r in runs),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "marginal_images_per_s": statistics.median(1 / f["seconds_per_image"] for f in fits),
        "marginal_cpu_s_per_image": statistics.median(f["cpu_s_per_image"] for f in fits),
        "start_up_s": statistics.median(f["start_up_s"] for f in fits),
        "start_up_cpu_s": statistics.median(f["start_up_cpu_s"] for f in fits),
        "bytes_per_image": statistics.median(r["bytes"] / r["images"] for r in runs),
        "other_processes_cores": statistics.median(r["other_processes_cores"] for r in runs),
        "runs": runs, "small_runs": small_runs,
    }


def run(num_images: int = 3000, small_images: int = 48, repeats: int = 3,
        config: str = "euclid_axion", num_workers: int = 2,
        beam_options: str = DEFAULT_BEAM_OPTIONS, output: str | None = None) -> dict:
    """Both paths, interleaved so that both see the same load; returns every number."""
    import tensorflow  # noqa: F401  (imported once here, not inside the first timing)
    import tensorflow_datasets as tfds

    from deeplense_tf.benchmarks.simulation import machine

    if not 0 < small_images < num_images:
        raise ValueError(f"small_images: must be in (0, num_images={num_images}), got {small_images}")
    tfds.disable_progress_bar()
    paths = {"local": None, "beam": beam_options}
    runs = {name: {"large": [], "small": []} for name in paths}
    scratch = tempfile.mkdtemp(prefix="beam_benchmark_")
    try:
        for repeat in range(repeats):
            order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
            for name in order:
                for size, images in (("small", small_images), ("large", num_images)):
                    data_dir = os.path.join(scratch, f"{name}_{size}_{repeat}")
                    result = build_once(config, images, data_dir, beam_options=paths[name],
                                        num_workers=num_workers)
                    runs[name][size].append(result)
                    print(f"repeat {repeat} {name:5s} {images:6d} images: {result['wall_s']:.1f} s "
                          f"({images / result['wall_s']:.1f} images/s, CPU "
                          f"{result['cpu_s']:.1f} s, other processes "
                          f"{result['other_processes_cores']:.2f} cores)", flush=True)
                    shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    local = _summary(runs["local"]["large"], runs["local"]["small"])
    beam = _summary(runs["beam"]["large"], runs["beam"]["small"])
    results = {
        "config": config, "num_images": num_images, "small_images": small_images,
        "repeats": repeats, "local_num_workers": num_workers, "beam_pipeline_options": beam_options,
        "local": local, "beam": beam,
        "ratio_beam_to_local": beam["images_per_s"] / local["images_per_s"],
        "marginal_ratio_beam_to_local": beam["marginal_images_per_s"] / local["marginal_images_per_s"],
        # Images per CPU-second after start-up: other processes change it far less than
        # the wall-clock rates, which on a shared machine follow their load.
        "cpu_ratio_beam_to_local": local["marginal_cpu_s_per_image"]
                                   / beam["marginal_cpu_s_per_image"],
        "beam_extra_cpu_ms_per_image": 1e3 * (beam["marginal_cpu_s_per_image"]
                                              - local["marginal_cpu_s_per_image"]),
        "machine": machine(),
    }
    if output:
        with open(output, "w") as f:
            json.dump(results, f, indent=2)
    return results


def markdown(results: dict) -> str:
    rows = ["| path | images/s | wall s | start-up s (CPU s) | images/s after start-up | "
            "CPU ms/image after start-up | other processes (cores) |",
            "|---|---|---|---|---|---|---|"]
    for name, label in (("local", f"local, num_workers={results['local_num_workers']}"),
                        ("beam", f"Beam, {results['beam_pipeline_options']}")):
        r = results[name]
        rows.append(f"| {label} | {r['images_per_s']:.1f} | {r['wall_s']:.1f} | "
                    f"{r['start_up_s']:.1f} ({r['start_up_cpu_s']:.1f}) | "
                    f"{r['marginal_images_per_s']:.1f} | {1e3 * r['marginal_cpu_s_per_image']:.2f} | "
                    f"{r['other_processes_cores']:.2f} |")
    m = results["machine"]
    rows += ["", f"{results['config']}, {results['num_images']} training images (and "
                 f"{results['small_images']} for the start-up), median of {results['repeats']}; "
                 f"{m['cpu']}, {m['cores']} cores.",
             f"Beam / local images/s: {results['ratio_beam_to_local']:.2f}x end to end, "
             f"{results['marginal_ratio_beam_to_local']:.2f}x after start-up, "
             f"{results['cpu_ratio_beam_to_local']:.2f}x per CPU-second after start-up (Beam's "
             f"extra CPU {results['beam_extra_cpu_ms_per_image']:.2f} ms/image); "
             f"{results['beam']['bytes_per_image'] / 1024:.1f} KiB/image shuffled and written."]
    return "\n".join(rows)


def _define_flags():
    """Defined only when run as a program, so that importing this module beside
    build_dataset (which defines its own flags) stays possible."""
    flags.DEFINE_integer("num_images", 3000, "Training images of each timed build.")
    flags.DEFINE_integer("small_images", 48, "Images of the builds that measure start-up.")
    flags.DEFINE_integer("repeats", 3, "Builds per path and size; medians are reported.")
    flags.DEFINE_string("config", "euclid_axion", "Simulation config to build.")
    flags.DEFINE_integer("num_workers", 2, "Simulation processes of the local path.")
    flags.DEFINE_string("beam_pipeline_options", DEFAULT_BEAM_OPTIONS,
                        "Beam options of the Beam path (name=value,...).")
    flags.DEFINE_string("output", None, "Write the results as JSON here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import logging

    from deeplense_tf import console

    console.setup()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    f = flags.FLAGS
    results = run(f.num_images, f.small_images, f.repeats, f.config, f.num_workers,
                  f.beam_pipeline_options, f.output)
    print(markdown(results))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
