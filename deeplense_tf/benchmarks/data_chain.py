"""The data side of the chain at small sizes: simulation, TFDS build, read-back, and the
training input pipeline over the built TFRecords.

Simulation, build and read-back come from `deeplense_tf.benchmarks.simulation` (its
library functions, called with small sizes; its own command measures them at full
size). The input pipeline is `deeplense_tf.input_pipeline.Pipeline.train_epoch`, the
one training uses: read and decode TFRecords, cache, shuffle, dihedral augmentation per
example, batch, prefetch. It is timed over whole epochs including each epoch's start
(iterator and shuffle buffer), which on these small data sets is a larger share than on
a 30,000-image epoch: a conservative (low) rate.
"""

from __future__ import annotations

import os
import statistics
import time

# A data-set config per image size: the recipes that simulate 64 and 150 px images.
CONFIGS = {64: "euclid_axion", 150: "model_i_axion"}
# Generation cases of `simulation.cases()` for the same recipes.
GENERATION_CASES = {64: "euclid/axion_vortex", 150: "model_i/axion_vortex"}


def build_datasets(data_dir: str, image_sizes, train_size: int, num_workers: int = 1) -> dict:
    """Builds (or finds) a small data set per image size in `data_dir`: {px: timed build}
    (sizes without a config are left out). `num_workers=1` simulates in this process."""
    from deeplense_tf import build_dataset
    from deeplense_tf.benchmarks import simulation

    built = {}
    for px in image_sizes:
        if px not in CONFIGS:
            continue
        sizes = (train_size, max(1, train_size // 8), max(1, train_size // 8))
        reused = build_dataset.make_builder(
            CONFIGS[px], os.path.join(data_dir, str(px)), train_size=sizes[0],
            validation_size=sizes[1], test_size=sizes[2]).is_prepared()
        result = simulation.timed_build(os.path.join(data_dir, str(px)), sizes,
                                        num_workers=num_workers, config=CONFIGS[px])
        if reused:  # Found prepared: the time says nothing about building.
            result.update(reused=True, seconds=None, images_per_s=None)
        result["data_dir"] = os.path.join(data_dir, str(px))
        result["dataset"] = f"deeplense_lensing/{result['config']}"
        built[px] = result
    return built


def input_pipeline_benchmark(data_dir: str, dataset: str, batch_size: int, *,
                             min_images: int = 2048, repeats: int = 3) -> dict:
    """Images/s of `Pipeline.train_epoch` alone (no model): read, cache, shuffle,
    augment, batch, prefetch. Two settings: `cached` (decoded examples kept in memory,
    training's steady state when the data fit, as `--cache=auto` decides) and
    `from_records` (TFRecords read and inflated every epoch, when they do not).

    One epoch's dataset is built (as training builds one per epoch) and iterated once
    untimed (filling the cache, warming the file cache); each of `repeats` timed blocks
    then iterates it again, whole epochs (shuffle buffer refilled each time), until at
    least `min_images` images. Building an epoch's dataset (tracing its maps) is a fixed
    cost per epoch, reported as `epoch_setup_s`: on a 30,000-image epoch it is noise, on
    these small sets it would dominate."""
    from deeplense_tf import input_pipeline
    from deeplense_tf.benchmarks import measure, train_step

    out = {"dataset": dataset, "status": "ok"}
    for mode, cache in (("cached", True), ("from_records", False)):
        pipeline = input_pipeline.Pipeline(data_dir, dataset, [train_step.TARGET], cache=cache)
        n = pipeline.num_examples("train")
        batch = min(batch_size, n)
        start = time.perf_counter()
        epoch = pipeline.train_epoch(batch, 0)
        setup = time.perf_counter() - start
        per_epoch = 0
        for images, _ in epoch:
            per_epoch += int(images.shape[0])
        rates, cpu_ms, others = [], [], []
        clock = measure.Clock()
        for _ in range(repeats):
            count = 0
            while count < min_images:
                for images, _ in epoch:
                    count += int(images.shape[0])
            wall, cpu, other = clock.lap()
            rates.append(count / wall)
            cpu_ms.append(1e3 * cpu / count)
            others.append(other)
        out[f"{mode}_images_per_s"] = statistics.median(rates)
        out[f"{mode}_images_per_s_blocks"] = rates
        # CPU time of this process (tf.data's threads) per image: on a CPU-only host the
        # pipeline takes it from the training step, whatever the wall-clock rates.
        out[f"{mode}_cpu_ms_per_image"] = statistics.median(cpu_ms)
        out[f"{mode}_other_processes_cores"] = statistics.median(others)
        out[f"{mode}_epoch_setup_s"] = setup
        out.update(train_examples=n, images_per_epoch=per_epoch, batch_size=batch,
                   image_size=pipeline.image_shape[0])
    out["images_per_s"] = out["cached_images_per_s"]
    return out


def run(work_dir: str, image_sizes, *, train_size: int, batch_size: int, simulation: bool = True,
        repeats: int = 3, block_seconds: float = 0.25, max_images: int = 64,
        num_workers: int | None = None, min_pipeline_images: int = 512) -> dict:
    """Simulation (per image size: one core and all cores), a small build per image
    size, read-back (TFDS and raw TFRecord pipelines) and the input pipeline."""
    from deeplense_tf.benchmarks import simulation as sim

    out = {"train_size": train_size, "generation": [], "build": {}, "read": {},
           "input_pipeline": {}}
    sizes = [px for px in image_sizes if px in CONFIGS]
    skipped = sorted(set(image_sizes) - set(sizes))
    if skipped:
        out["skipped"] = {str(px): f"no data-set config simulates {px} px images (have: "
                          f"{sorted(CONFIGS)})" for px in skipped}
    parts = out["wall_s"] = {}
    start = time.perf_counter()

    def lap(name):
        nonlocal start
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - start
        start = time.perf_counter()

    if simulation:
        cases = {c.name: c for c in sim.cases()}
        for px in sizes:
            out["generation"].append(sim.generation_benchmark(
                cases[GENERATION_CASES[px]], repeats=repeats, max_images=max_images,
                block_seconds=block_seconds, num_workers=num_workers))
        lap("generation")
    built = build_datasets(work_dir, sizes, train_size)
    lap("build")
    for px, build in built.items():
        out["build"][str(px)] = build
        if simulation:
            out["read"][str(px)] = sim.read_benchmark(build["path"], batch_size=batch_size,
                                                      repeats=repeats)
            lap("read")
        out["input_pipeline"][str(px)] = input_pipeline_benchmark(
            build["data_dir"], build["dataset"], batch_size, repeats=repeats,
            min_images=min_pipeline_images)
        lap("input_pipeline")
    return out
