r"""Throughput of simulating, building and reading back `deeplense_lensing` data.

  python -m deeplense_tf.benchmarks.simulation [--output=results.json] [--images=N]
      [--repeats=R] [--cases=euclid/axion_vortex,...] [--malloc=default,tuned]
      [--build_train_size=N] [--full_build] [--skip_generation] [--skip_build]
      [--read_dir=DIR]

Prints markdown tables and writes every number (with the machine and the load from
other processes, since these machines are shared) as JSON. Three parts, each a
library function that the tests call on tiny sizes:

1. Generation: images/s per substructure class and instrument through
   `parallel.simulate_split`, on one core (`num_workers=1`, in a fresh process) and on
   all cores (one worker process per core), the same images in both. Each call
   simulates `repeats + 1` timed blocks of about `block_seconds`: the first absorbs
   the start-up (spawning workers, importing lenstronomy, building the simulator);
   the rate is the median over the others. `--malloc=tuned` measures it again with
   glibc told to keep freed memory (MALLOC_ENV).
2. Build: a `euclid_axion` data set built end to end by the real TFDS builder at two
   sizes, extrapolated linearly (time = a + b * images) to 30,000/5,000/5,000, or
   built at full size with `--full_build`; a cProfile of the builder's process says
   where its time goes (waiting for simulation, encoding, serializing, shuffling and
   writing), and the encoding of one image is timed with and without ZLIB.
3. Read-back: images/s through `tf.data` over the built train split (or `--read_dir`),
   the TFDS way (all features; without `params`; image left ZLIB-compressed), the raw
   way (TFRecord bytes only; one `parse_example` per batch, then ZLIB inflate), and
   from the same records rewritten without ZLIB.
"""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import glob
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import zlib

import numpy as np
from absl import app, flags

FULL_SIZES = (30_000, 5_000, 5_000)  # The euclid_axion set: train, validation, test.
_BUILD_CONFIG = "euclid_axion"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """What the numbers were measured on: they mean little without it."""
    import lenstronomy
    import tensorflow as tf

    from deeplense_tf.simulation import parallel

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": parallel.default_num_workers(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "lenstronomy": lenstronomy.__version__,
            "numpy": np.__version__, "load_average_1_5_15_min": _load()}


# --------------------------------------------------------------------------- generation


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the generation table: a substructure class on an instrument."""

    instrument: str
    substructure: str
    recipe: object  # simulation.recipes.Recipe
    config: str = ""  # The deeplense_lensing config that simulates exactly this, if any.

    @property
    def name(self) -> str:
        return f"{self.instrument}/{self.substructure}"


def cases() -> list[Case]:
    """Every substructure class on the 64 px Euclid and 150 px HST-like grids (randomized
    macro model and source), plus the DeepLense Model I recipe (150 px)."""
    from deeplense_tf.simulation import components, recipes, substructure

    models = {
        "no_sub": (substructure.NoSubstructure(), {"euclid": "euclid_classes"}),
        "cdm_tnfw": (substructure.CDMSubhalos(), {"euclid": "euclid_cdm", "hst_150": "hst_cdm"}),
        "wdm_tnfw": (substructure.WDMSubhalos(), {"euclid": "euclid_wdm", "hst_150": "hst_wdm"}),
        "sidm_tnfwc": (substructure.SIDMSubhalos(), {"euclid": "euclid_sidm", "hst_150": "hst_sidm"}),
        "cdm_point_mass": (substructure.CDMSubhalos(profile="point_mass"),
                           {"euclid": "euclid_cdm_point_mass"}),
        "cdm_deeplense": (substructure.DeepLenseCDM(), {"euclid": "euclid_classes"}),
        "axion_vortex": (substructure.AxionVortex(), {"euclid": "euclid_axion"}),
        "fdm": (substructure.FDMGranules(), {"euclid": "euclid_fdm"}),
    }
    out = []
    for instrument in ("euclid", "hst_150"):
        for label, (model, configs) in models.items():
            recipe = recipes.Recipe(
                name=f"benchmark_{instrument}_{label}", description="benchmark", instrument=instrument,
                deflector=components.randomized_deflector(), source=components.randomized_source(),
                substructures={model.name: model}, targets=())
            out.append(Case(instrument, label, recipe, configs.get(instrument, "")))
    out.append(Case("model_i", "axion_vortex", recipes.get("model_i_axion"), "model_i_axion"))
    return out


class _Clock:
    """Wall time, CPU time of this process and its children (the simulation workers),
    and CPU time the whole machine was busy: the difference is what other processes
    took, which on a shared machine explains noisy wall-clock rates."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self.last = self._read()

    def _read(self):
        ours = 0.0
        for proc in [self._process] + self._process.children(recursive=True):
            try:
                times = proc.cpu_times()
            except self._psutil.Error:  # A worker that just exited.
                continue
            ours += times.user + times.system
        machine_times = self._psutil.cpu_times()
        busy = sum(machine_times) - machine_times.idle - getattr(machine_times, "iowait", 0.0)
        return time.perf_counter(), ours, busy

    def lap(self) -> dict:
        now = self._read()
        wall, ours, busy = (a - b for a, b in zip(now, self.last))
        self.last = now
        return {"wall_s": wall, "cpu_s": ours, "other_processes_cores": max(0.0, busy - ours) / wall}


def _single_threaded():
    """One thread for BLAS/OpenMP in this process, as the workers get (a one-core
    number must not borrow a second core); a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


# glibc returns freed blocks above 128 KiB to the kernel at once (and trims the heap), so
# every multi-MB numpy temporary of a simulation is page-faulted in again, zeroed, on
# its next use. These keep freed memory in the process instead (see mallopt(3)); glibc
# reads them when a process starts, so they reach spawned workers through os.environ.
# "default": glibc's own settings; "tuned": the settings `parallel` gives its workers.
MALLOC_ENV = {
    "default": {},
    "tuned": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(128 * 2**20)},
}


@contextlib.contextmanager
def _malloc(name: str):
    """Allocator settings `name` for the processes started meanwhile: the fresh one-core
    process (through the environment) and `parallel`'s spawned workers."""
    from deeplense_tf.simulation import parallel

    package_setting = parallel._WORKER_MALLOC_ENV
    parallel._WORKER_MALLOC_ENV = MALLOC_ENV[name]
    try:
        with parallel.environment(MALLOC_ENV[name]):
            yield
    finally:
        parallel._WORKER_MALLOC_ENV = package_setting


def _timed_blocks(recipe, num_workers, block, blocks, chunk_size=32, seed=0) -> list[dict]:
    """Wall and CPU seconds per block of `block` images from one simulate_split call."""
    from deeplense_tf.simulation import parallel

    laps, count = [], 0
    with _single_threaded():
        clock = _Clock()
        for _ in parallel.simulate_split(recipe, seed, 0, block * blocks, num_workers=num_workers,
                                         chunk_size=chunk_size):
            count += 1
            if count % block == 0:
                laps.append(clock.lap())
    return laps


def _timed_blocks_in_fresh_process(recipe, block, blocks, chunk_size) -> list[dict]:
    """`_timed_blocks` on one core in a new process, in the state a worker starts in: a
    long-lived process (this one, after other cases) can have a warmed-up allocator that
    makes some classes 2-3x cheaper, which would bias the speed-up."""
    import multiprocessing

    from deeplense_tf.simulation import parallel

    with parallel.environment(parallel._SINGLE_THREAD_ENV):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_timed_blocks, (recipe, 1, block, blocks, chunk_size))


def _summarize(laps, images, prefix) -> dict:
    steady = laps[1:]  # The first block pays for start-up.
    return {f"{prefix}_images_per_s": images / statistics.median(l["wall_s"] for l in steady),
            f"{prefix}_cpu_ms_per_image": 1e3 * statistics.median(l["cpu_s"] for l in steady) / images,
            f"{prefix}_other_processes_cores": statistics.median(
                l["other_processes_cores"] for l in steady),
            f"{prefix}_blocks": laps}


def _seconds_per_image(recipe, budget_s: float, most: int = 64) -> float:
    """Mean wall time per image over about `budget_s` (after a first image that pays for
    the set-up): a mean, since some classes' costs vary by 100x between images (the
    TNFW subhalo count follows Sigma_sub over two decades)."""
    from deeplense_tf.simulation import parallel

    count, start = 0, None
    with _single_threaded():
        for _ in parallel.simulate_split(recipe, 1, 0, most + 1, num_workers=1, chunk_size=1):
            if start is None:
                start = time.perf_counter()
                continue
            count += 1
            if time.perf_counter() - start > budget_s and count >= 2:
                break
    return (time.perf_counter() - start) / count


def generation_benchmark(case: Case, repeats: int = 3, max_images: int = 512,
                         block_seconds: float = 1.0, num_workers: int | None = None,
                         malloc: str = "default") -> dict:
    """Images/s of `case` on one core and on `num_workers` (default: all) cores.

    One core is `simulate_split(num_workers=1)` in a fresh process, all cores its worker
    pool; both simulate the same examples (same seed and indices) in `repeats + 1`
    blocks of about `block_seconds` on all cores, and the first block absorbs the
    start-up. The speed-up is the median over blocks of the ratio of the two times for
    the same images. Besides wall-clock rates it reports CPU milliseconds per image (the
    simulating processes) and the speed-up these imply on an idle machine: workers x
    (CPU per image on one core) / (CPU per image, workers and parent, on all cores).
    `malloc`: a key of MALLOC_ENV, the allocator settings of the simulating processes."""
    from deeplense_tf.simulation import parallel

    workers = parallel.default_num_workers() if num_workers is None else num_workers
    with _malloc(malloc):
        result = _generation(case, repeats, max_images, block_seconds, workers)
    result["malloc"] = malloc
    return result


def _generation(case, repeats, max_images, block_seconds, workers) -> dict:
    per_image = _seconds_per_image(case.recipe, block_seconds / 2)
    block = int(np.clip(round(workers * block_seconds / per_image), 4 * workers,
                        max(4 * workers, max_images)))
    # simulate_split hands out results a chunk at a time, in process too: blocks are
    # whole chunks, at least four per worker, so that block boundaries are timed evenly.
    chunk = int(np.clip(block // (4 * workers), 1, 32))
    block -= block % chunk
    one = _timed_blocks_in_fresh_process(case.recipe, block, repeats + 1, chunk)
    result = {"case": case.name, "instrument": case.instrument, "num_pix": case.recipe.num_pix,
              "substructure": case.substructure, "config": case.config,
              "images_per_block": block, "chunk_size": chunk, "repeats": repeats,
              **_summarize(one, block, "one_core")}
    result["ms_per_image_one_core"] = 1e3 / result["one_core_images_per_s"]
    if workers > 1:
        every = _timed_blocks(case.recipe, workers, block, repeats + 1, chunk_size=chunk)
        result.update(num_workers=workers, **_summarize(every, block, "all_cores"))
        result.update(
            worker_start_s=max(0.0, every[0]["wall_s"] - statistics.median(
                l["wall_s"] for l in every[1:])),
            speedup=statistics.median(a["wall_s"] / b["wall_s"] for a, b in zip(one[1:], every[1:])),
            # None when the blocks were too short for the 10 ms CPU-time resolution.
            idle_machine_speedup=workers * result["one_core_cpu_ms_per_image"]
            / result["all_cores_cpu_ms_per_image"]
            if result["all_cores_cpu_ms_per_image"] > 0 else None)
    return result


# --------------------------------------------------------------------------- build


def _data_bytes(builder) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(str(builder.data_path), "*.tfrecord*")))


def timed_build(data_dir: str, sizes, num_workers=None, config: str = _BUILD_CONFIG) -> dict:
    """Builds `config` with (train, validation, test) `sizes` into a fresh `data_dir`."""
    from deeplense_tf import build_dataset

    load = _load()
    start = time.perf_counter()
    builder = build_dataset.build(config, data_dir, train_size=sizes[0], validation_size=sizes[1],
                                  test_size=sizes[2], num_workers=num_workers)
    seconds = time.perf_counter() - start
    images = int(sum(sizes))
    return {"config": builder.info.config_name, "sizes": list(sizes), "images": images,
            "seconds": seconds, "images_per_s": images / seconds,
            "bytes_per_image": _data_bytes(builder) / images, "path": str(builder.data_path),
            "load_average_before": load}


def build_benchmark(work_dir: str, sizes, calibration_sizes=(64, 32, 32), num_workers=None,
                    full: bool = False) -> dict:
    """Times two builds and extrapolates linearly to FULL_SIZES (or builds them)."""
    small = timed_build(os.path.join(work_dir, "calibration"), calibration_sizes, num_workers)
    main = timed_build(os.path.join(work_dir, "main"), FULL_SIZES if full else sizes, num_workers)
    result = {"calibration": small, "main": main}
    full_images = sum(FULL_SIZES)
    result["proportional_full_s"] = main["seconds"] * full_images / main["images"]
    per_image = (main["seconds"] - small["seconds"]) / max(main["images"] - small["images"], 1)
    if per_image > 0:  # Else the builds were too small for their noise: no fit.
        fixed = small["seconds"] - per_image * small["images"]
        result.update({"fit_fixed_s": fixed, "fit_s_per_image": per_image,
                       "marginal_images_per_s": 1 / per_image,
                       "extrapolated_full_s": fixed + per_image * full_images})
    if full:
        result["full_s"] = main["seconds"]
    return result


# Where a build's process spends its time: (label, file name suffix, function name);
# each is a cumulative time of a function that the others do not call.
_PROFILE_PARTS = (
    ("waiting for simulation workers", "multiprocessing/pool.py", "next"),
    ("simulating in process (num_workers=1)", "simulation/parallel.py", "_simulate_chunk"),
    ("encoding features (incl. ZLIB)", "features/features_dict.py", "encode_example"),
    ("serializing tf.train.Example", "core/example_serializer.py", "serialize_example"),
    ("shuffler: hashing keys, buffering", "core/shuffle.py", "add"),
    ("shuffling and writing shards", "core/writer.py", "finalize"),
)


def profile_build(work_dir: str, train_size: int, num_workers=None) -> dict:
    """cProfile of a train-only build in this process: where the builder's time goes.
    Worker processes are not profiled; their time shows as waiting for them."""
    from deeplense_tf import build_dataset

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    try:
        build_dataset.build(_BUILD_CONFIG, work_dir, train_size=train_size, validation_size=0,
                            test_size=0, num_workers=num_workers)
    finally:
        profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats
    parts = {}
    for label, suffix, function in _PROFILE_PARTS:
        seconds = sum(value[3] for (filename, _, name), value in stats.items()
                      if filename.endswith(suffix) and name == function)
        if seconds:
            parts[label] = seconds
    parts["other (set-up, progress bars, metadata)"] = max(0.0, total - sum(parts.values()))
    return {"train_size": train_size, "seconds": total, "parts_s": parts,
            "note": "times under cProfile (Python-heavy parts run slower than without it)"}


def main_process_cost(num_examples: int = 64, repeats: int = 5) -> dict:
    """Milliseconds per example that the builder's own process spends on encoding and
    serializing (no profiler): with W workers on W cores it competes with them."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import example_serializer

    from deeplense_tf.simulation import parallel, recipes

    builder = tfds.builder(f"deeplense_lensing/{_BUILD_CONFIG}")
    features = builder.info.features
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    recipe = recipes.get(_BUILD_CONFIG)
    examples = [{"image": lens.image[..., None], "substructure": lens.substructure,
                 "params": {k: np.float32(v) for k, v in lens.params.items()},
                 **{t: np.float32(lens.params[t]) for t in recipe.targets}}
                for _, lens in parallel.simulate_split(recipe, 0, 0, num_examples, num_workers=1)]
    image = features["image"]
    raw_image = tfds.features.Tensor(shape=image.shape, dtype=np.float32,
                                     encoding=tfds.features.Encoding.BYTES)
    encoded = [features.encode_example(ex) for ex in examples]
    steps = {
        "encode": lambda: [features.encode_example(ex) for ex in examples],
        "serialize": lambda: [serializer.serialize_example(ex) for ex in encoded],
        # The image alone, as stored (ZLIB) and as raw bytes (Encoding.BYTES).
        "encode_image_zlib": lambda: [image.encode_example(ex["image"]) for ex in examples],
        "encode_image_bytes": lambda: [raw_image.encode_example(ex["image"]) for ex in examples],
    }
    timings = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            timings[key].append((time.perf_counter() - start) / num_examples)
    return {f"{k}_ms_per_example": 1e3 * statistics.median(v) for k, v in timings.items()}


# --------------------------------------------------------------------------- read-back


def _rewrite_without_zlib(files, path):
    """The records of `files` with the image stored as raw bytes (what
    `Encoding.BYTES` would store), everything else unchanged."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for record in tf.data.TFRecordDataset(files):
            example = tf.train.Example.FromString(record.numpy())
            image = example.features.feature["image"].bytes_list.value
            image[0] = zlib.decompress(image[0])
            writer.write(example.SerializeToString())


def _raw_pipelines(files, unzipped, features, target, batch_size):
    """Reading without TFDS: TFRecord bytes only; one parse_example per batch, with and
    without ZLIB; and the same records rewritten without ZLIB, parsed per batch and
    per example (as TFDS parses)."""
    import tensorflow as tf

    shape = features["image"].shape
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            target: tf.io.FixedLenFeature([], tf.float32)}
    every = dict(spec, **{f"params/{name}": tf.io.FixedLenFeature([], tf.float32)
                          for name in features["params"]})

    def decoder(keys, inflate=True, batched=True, decode=True):
        def fn(serialized):
            parse = tf.io.parse_example if batched else tf.io.parse_single_example
            parsed = parse(serialized, keys)
            if decode:
                image = parsed.pop("image")
                if inflate:
                    image = tf.io.decode_compressed(image, compression_type="ZLIB")
                parsed["image"] = tf.reshape(tf.io.decode_raw(image, tf.float32),
                                             (-1, *shape) if batched else shape)
            return parsed
        return fn

    def records(paths):
        return tf.data.TFRecordDataset(paths, num_parallel_reads=tf.data.AUTOTUNE)

    def per_batch(paths, fn):
        return records(paths).batch(batch_size).map(fn, num_parallel_calls=tf.data.AUTOTUNE)

    return {
        "TFRecord bytes only (no parsing)": records(files).batch(batch_size),
        "batched parse_example, image not inflated": per_batch(files, decoder(spec, decode=False)),
        "batched parse_example + ZLIB, image + target": per_batch(files, decoder(spec)),
        "batched parse_example + ZLIB, all features": per_batch(files, decoder(every)),
        "no ZLIB: batched parse_example, image + target": per_batch(
            unzipped, decoder(spec, inflate=False)),
        "no ZLIB: batched parse_example, all features": per_batch(
            unzipped, decoder(every, inflate=False)),
        "no ZLIB: per-example parse (as TFDS), all features": records(unzipped).map(
            decoder(every, inflate=False, batched=False),
            num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size),
    }


def read_benchmark(dataset_dir: str, split: str = "train", batch_size: int = 256,
                   repeats: int = 3, scratch_dir: str | None = None) -> dict:
    """Images/s through tf.data over `split` of the prepared data set in `dataset_dir`
    (DIR/deeplense_lensing/CONFIG/VERSION), after one warm-up pass (file cache).
    `scratch_dir` receives the records rewritten without ZLIB (default: a temporary
    folder, removed afterwards)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(dataset_dir)
    features = builder.info.features
    target = builder.info.supervised_keys[1]
    config = tfds.ReadConfig(try_autocache=False)  # Cached epochs would measure memory.

    def tfds_pipeline(decoders=None):
        return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                                  read_config=config).batch(batch_size)

    pipelines = {
        "tfds as_dataset, all features": tfds_pipeline(),
        "tfds as_dataset, image + target (no params)": tfds_pipeline(
            tfds.decode.PartialDecoding({"image": True, target: True})),
        "tfds as_dataset, image not inflated (SkipDecoding)": tfds_pipeline(
            {"image": tfds.decode.SkipDecoding()}),
    }
    files = sorted(glob.glob(os.path.join(dataset_dir, f"*-{split}.tfrecord-*")))
    scratch = scratch_dir or tempfile.mkdtemp(prefix="deeplense_read_")
    os.makedirs(scratch, exist_ok=True)
    unzipped = os.path.join(scratch, f"{split}-without-zlib.tfrecord")
    try:
        _rewrite_without_zlib(files, unzipped)
        pipelines.update(_raw_pipelines(files, [unzipped], features, target, batch_size))
        results = {name: _time_passes(ds, repeats, builder.info.splits[split].num_examples, name)
                   for name, ds in pipelines.items()}
        size = {"zlib": sum(os.path.getsize(f) for f in files), "raw": os.path.getsize(unzipped)}
    finally:
        if scratch_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"split": split, "images": builder.info.splits[split].num_examples,
            "batch_size": batch_size, "split_bytes": size,
            # Noise fills the low mantissa bits of the float32 pixels: ZLIB saves little.
            "zlib_size_ratio": size["zlib"] / size["raw"],
            "load_average_before": _load(), "pipelines": results}


def _time_passes(ds, repeats, expected, name) -> dict:
    import tensorflow as tf

    ds = ds.prefetch(tf.data.AUTOTUNE)
    seconds = []
    for _ in range(repeats + 1):  # The first pass warms the file cache and the graph.
        start, count = time.perf_counter(), 0
        for batch in ds:
            first = batch if isinstance(batch, tf.Tensor) else batch["image"]
            count += int(first.shape[0])
        seconds.append(time.perf_counter() - start)
    if count != expected:
        raise AssertionError(f"{name}: read {count} examples, the split has {expected}")
    return {"images_per_s": count / statistics.median(seconds[1:]), "pass_s": seconds[1:]}


# --------------------------------------------------------------------------- report


_GENERATION_HEADER = ("| instrument | px | class | config | malloc | images/s, 1 core | CPU ms/image, 1 core "
                      "| images/s, {workers} cores | CPU ms/image, {workers} cores | speed-up "
                      "(others: cores) | idle-machine speed-up |")


def _generation_row(r: dict) -> str:
    row = (f"| {r['instrument']} | {r['num_pix']} | {r['substructure']} | {r['config'] or '-'} | "
           f"{r['malloc']} | {r['one_core_images_per_s']:.0f} | {r['one_core_cpu_ms_per_image']:.1f} | ")
    if "speedup" not in r:
        return row + "- | - | - | - |"
    others = max(r["one_core_other_processes_cores"], r["all_cores_other_processes_cores"])
    return row + (f"{r['all_cores_images_per_s']:.0f} | {r['all_cores_cpu_ms_per_image']:.1f} | "
                  f"{r['speedup']:.2f}x ({others:.1f}) | "
                  + (f"{r['idle_machine_speedup']:.2f}x |" if r["idle_machine_speedup"] else "- |"))


def markdown(results: dict) -> str:
    """The tables of `results` as markdown."""
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; TensorFlow {m['tensorflow']}, "
             f"lenstronomy {m['lenstronomy']}; load average before "
             f"{m['load_average_1_5_15_min'][0]}.", ""]
    if results.get("generation"):
        workers = next((r["num_workers"] for r in results["generation"] if "num_workers" in r), 1)
        lines += [_GENERATION_HEADER.format(workers=workers), "|---" * 11 + "|"]
        lines += [_generation_row(r) for r in results["generation"]]
        lines += ["", "CPU ms: CPU time per image of this process and its workers; others: "
                  "cores busy with other processes during the timing (median); idle-machine "
                  "speed-up: workers x CPU per image on one core / CPU per image on all; "
                  "malloc tuned: " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV["tuned"].items())
                  + " in the simulating processes.", ""]
    build = results.get("build")
    if build:
        main = build["main"]
        lines += [f"Build of `{main['config']}` ({main['images']} images, malloc "
                  f"{build['malloc']}) end to end: "
                  f"{main['seconds']:.1f} s, {main['images_per_s']:.0f} images/s, "
                  f"{main['bytes_per_image'] / 1024:.1f} KiB/image on disk."]
        if "extrapolated_full_s" in build:
            lines.append(f"Fit time = {build['fit_fixed_s']:.1f} s + images / "
                         f"{build['marginal_images_per_s']:.0f} per s: 30k/5k/5k in "
                         f"{build['extrapolated_full_s'] / 60:.1f} min (proportional: "
                         f"{build['proportional_full_s'] / 60:.1f} min).")
        else:
            lines.append(f"30k/5k/5k, proportionally: {build['proportional_full_s'] / 60:.1f} min.")
        if "full_s" in build:
            lines.append(f"Full 30k/5k/5k build: {build['full_s'] / 60:.1f} min.")
        lines.append("")
    if results.get("main_process"):
        mp = results["main_process"]
        lines += [f"Builder process per example: encode {mp['encode_ms_per_example']:.2f} ms "
                  f"(of which the image, ZLIB: {mp['encode_image_zlib_ms_per_example']:.2f} ms; "
                  f"as raw bytes it would take {mp['encode_image_bytes_ms_per_example']:.2f} ms), "
                  f"serialize {mp['serialize_ms_per_example']:.2f} ms.", ""]
    if results.get("profile"):
        p = results["profile"]
        lines += [f"Where a {p['train_size']}-image build's process spends {p['seconds']:.1f} s "
                  "(cProfile):", "", "| part | s | share |", "|---|---|---|"]
        for label, seconds in p["parts_s"].items():
            lines.append(f"| {label} | {seconds:.1f} | {100 * seconds / p['seconds']:.0f}% |")
        lines.append("")
    if results.get("read"):
        r = results["read"]
        lines += [f"Read-back of {r['images']} images ({r['split']}), batch {r['batch_size']}; "
                  f"the split takes {r['split_bytes']['zlib'] / 2**20:.1f} MiB with ZLIB, "
                  f"{r['split_bytes']['raw'] / 2**20:.1f} MiB without (ratio "
                  f"{r['zlib_size_ratio']:.2f}):", "", "| pipeline | images/s |", "|---|---|"]
        for name, v in r["pipelines"].items():
            lines.append(f"| {name} | {v['images_per_s']:,.0f} |")
        lines.append("")
    return "\n".join(lines)


def run(output: str | None = None, *, images: int = 512, repeats: int = 3,
        block_seconds: float = 1.0, case_names=None, skip_generation: bool = False,
        num_workers: int | None = None, malloc_variants=("default",), build_malloc="tuned",
        build_sizes=(6_000, 1_000, 1_000), calibration_sizes=(64, 32, 32), full_build=False,
        skip_build=False, profile_train_size: int = 2_000, read_dir: str | None = None,
        work_dir: str | None = None) -> dict:
    """Runs the benchmarks; writes JSON to `output` if given; returns the results."""
    results = {"machine": machine(), "command": " ".join(sys.argv), "generation": []}
    selected = cases()
    if case_names:
        known = {c.name: c for c in selected}
        unknown = [n for n in case_names if n not in known]
        if unknown:
            raise ValueError(f"--cases: unknown {unknown}; expected some of {sorted(known)}")
        selected = [known[n] for n in case_names]
    for name in list(malloc_variants) + [build_malloc]:
        if name not in MALLOC_ENV:
            raise ValueError(f"malloc: unknown {name!r}; expected one of {sorted(MALLOC_ENV)}")
    for case in [] if skip_generation else selected:
        for malloc in malloc_variants:
            results["generation"].append(generation_benchmark(
                case, repeats=repeats, max_images=images, block_seconds=block_seconds,
                num_workers=num_workers, malloc=malloc))
            print(_generation_row(results["generation"][-1]), flush=True)
    scratch = work_dir or tempfile.mkdtemp(prefix="deeplense_benchmark_")
    try:
        if not skip_build:
            with _malloc(build_malloc):  # For the builds' workers.
                results["build"] = build_benchmark(scratch, build_sizes, calibration_sizes,
                                                   num_workers, full=full_build)
            results["build"]["malloc"] = build_malloc
            results["main_process"] = main_process_cost()
            if profile_train_size:
                results["profile"] = profile_build(os.path.join(scratch, "profile"),
                                                   profile_train_size, num_workers)
        read_from = read_dir or (results["build"]["main"]["path"] if "build" in results else None)
        if read_from:
            results["read"] = read_benchmark(read_from, repeats=repeats,
                                             scratch_dir=os.path.join(scratch, "read"))
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    results["machine"]["load_average_after"] = _load()
    if output:
        with open(output, "w") as f:
            json.dump(results, f, indent=2)
    return results


def _define_flags():
    """Defined only when run as a program, so that importing this module beside
    build_dataset (which defines its own flags) stays possible."""
    flags.DEFINE_string("output", None, "Write the results as JSON here.")
    flags.DEFINE_integer("images", 512, "Most images per timed block (a block lasts about "
                         "--block_seconds on all cores).")
    flags.DEFINE_integer("repeats", 3, "Timed blocks (and read passes) per measurement; the "
                         "median is reported.")
    flags.DEFINE_float("block_seconds", 1.0, "Target duration of one timed block.")
    flags.DEFINE_list("cases", None, "Generation cases, e.g. euclid/axion_vortex (default: all).")
    # Not --num_workers: build_dataset, imported later, defines that flag.
    flags.DEFINE_integer("workers", None, "Worker processes for 'all cores' (default: all).")
    flags.DEFINE_integer("build_train_size", 6_000, "Train images of the timed euclid_axion build.")
    flags.DEFINE_integer("build_validation_size", 1_000, "Validation images of the timed build.")
    flags.DEFINE_integer("build_test_size", 1_000, "Test images of the timed build.")
    flags.DEFINE_bool("full_build", False, "Build the full 30,000/5,000/5,000 set (minutes).")
    flags.DEFINE_bool("skip_generation", False, "Skip the generation benchmark.")
    flags.DEFINE_list("malloc", ["default"], "Allocator settings of the simulating processes to "
                      "measure generation with: default and/or tuned (see MALLOC_ENV).")
    flags.DEFINE_enum("build_malloc", "tuned", sorted(MALLOC_ENV), "Allocator settings of the "
                      "timed builds' workers.")
    flags.DEFINE_bool("skip_build", False, "Skip the build benchmark (read --read_dir if given).")
    flags.DEFINE_integer("profile_train_size", 2_000, "Train images of the profiled build "
                         "(0: no profile).")
    flags.DEFINE_string("read_dir", None, "Read back this prepared data set (DIR/deeplense_"
                        "lensing/CONFIG/VERSION) instead of the timed build.")
    flags.DEFINE_string("work_dir", None, "Keep the built data sets here (default: a temporary "
                        "folder, removed afterwards).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    results = run(f.output, images=f.images, repeats=f.repeats, block_seconds=f.block_seconds,
                  case_names=f.cases, skip_generation=f.skip_generation, num_workers=f.workers,
                  malloc_variants=f.malloc, build_malloc=f.build_malloc,
                  build_sizes=(f.build_train_size, f.build_validation_size, f.build_test_size),
                  full_build=f.full_build, skip_build=f.skip_build,
                  profile_train_size=f.profile_train_size, read_dir=f.read_dir,
                  work_dir=f.work_dir)
    print(markdown(results))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
