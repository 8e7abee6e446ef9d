"""Simulating many lenses on all cores, reproducibly.

Example i of a split is drawn from its own generator, seeded by (seed, split, i), so
the images do not depend on the number of workers or on how the work is chunked.
Workers are spawned (not forked: the parent may hold TensorFlow's thread pools), each
builds one simulator and receives chunks of indices; results come back in order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from typing import Iterator

from deeplense_tf.simulation.simulator import SimulatedLens, example_rng

_WORKER_RECIPE = None
_WORKER_SIMULATOR = None

# One thread per worker for the numeric libraries: processes are the parallelism.
_SINGLE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                             "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
# glibc returns every multi-MB numpy temporary to the kernel when freed and faults it in
# again, zeroed, for the next image (650k page faults instead of 45k per 192 CDM images).
# Keeping them on the heap makes a worker 1.3-2x faster (docs/benchmarks_simulation.md,
# `python -m deeplense_tf.benchmarks.simulation --malloc=default,tuned`). Read by glibc at
# process start, so they reach the spawned workers only; a user's own setting wins.
_WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432",
                      "MALLOC_TRIM_THRESHOLD_": "134217728"}


def _worker_env() -> dict:
    """Environment variables the spawned workers get (a user's malloc settings kept)."""
    env = {**_WORKER_MALLOC_ENV, **_SINGLE_THREAD_ENV}
    env.update({k: os.environ[k] for k in _WORKER_MALLOC_ENV if k in os.environ})
    return env


def default_num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1


def spawn_pool(processes: int, initializer, initargs=()):
    """A pool of spawned processes that start with `_worker_env()` (one BLAS thread, the
    malloc settings above); the parent's own environment is left as it was."""
    with environment(_worker_env()):  # inherited by the spawned workers only
        return multiprocessing.get_context("spawn").Pool(processes, initializer=initializer,
                                                         initargs=initargs)


@contextlib.contextmanager
def environment(values: dict):
    """os.environ updated with `values` (for processes started meanwhile), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _init_worker(recipe):
    global _WORKER_RECIPE, _WORKER_SIMULATOR
    _WORKER_RECIPE, _WORKER_SIMULATOR = recipe, recipe.simulator()


def _simulate_chunk(task) -> list[tuple[int, SimulatedLens]]:
    seed, split_index, start, stop = task
    sim = _WORKER_SIMULATOR
    out = []
    for index in range(start, stop):
        name = sim.class_names[index % len(sim.class_names)]  # Balanced classes.
        out.append((index, sim.simulate(example_rng(seed, split_index, index), substructure=name)))
    return out


def simulate_split(recipe, seed: int, split_index: int, count: int, num_workers: int | None = None,
                   chunk_size: int = 32) -> Iterator[tuple[int, SimulatedLens]]:
    """Yields (index, lens) for index in [0, count), in order."""
    if count < 0:
        raise ValueError(f"count: must be >= 0, got {count}")
    num_workers = default_num_workers() if num_workers is None else num_workers
    if num_workers < 1:
        raise ValueError(f"num_workers: must be >= 1, got {num_workers}")
    tasks = [(seed, split_index, start, min(start + chunk_size, count))
             for start in range(0, count, chunk_size)]
    if num_workers == 1 or len(tasks) <= 1:
        _init_worker(recipe)
        for task in tasks:
            yield from _simulate_chunk(task)
        return
    with spawn_pool(min(num_workers, len(tasks)), _init_worker, (recipe,)) as pool:
        for chunk in pool.imap(_simulate_chunk, tasks):
            yield from chunk
