"""Simulating many lenses on all cores, reproducibly.

Example i of a split is drawn from its own generator, seeded by (seed, split, i), so
the images do not depend on the number of workers or on how the work is chunked.
Workers are spawned (not forked: the parent may hold TensorFlow's thread pools), each
builds one simulator and receives chunks of indices; results come back in order.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Iterator

from deeplense_tf.simulation.simulator import SimulatedLens, example_rng

_WORKER_RECIPE = None
_WORKER_SIMULATOR = None

# One thread per worker for the numeric libraries: processes are the parallelism.
_SINGLE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                             "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


def default_num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1


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
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
    os.environ.update(_SINGLE_THREAD_ENV)  # Inherited by the spawned workers only.
    try:
        pool = multiprocessing.get_context("spawn").Pool(
            min(num_workers, len(tasks)), initializer=_init_worker, initargs=(recipe,))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    with pool:
        for chunk in pool.imap(_simulate_chunk, tasks):
            yield from chunk
