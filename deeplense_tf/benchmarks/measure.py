"""Timing and memory measurement shared by the model benchmarks.

Timing: the first call (tracing, plus XLA compilation when on, plus one step) is timed
on its own; then `warmup` untimed calls; then `repeats` timed blocks of `steps` calls,
each block ending with a host sync, and the median seconds per call over the blocks is
reported, beside the median CPU seconds of this process per call and the cores other
processes kept busy meanwhile (on a shared machine, the context of a wall-clock rate).
A measurement stops adding blocks once `max_seconds` of timed work have passed (at
least one block always runs), so a slow configuration costs a bounded time;
`repeats_done` says how many blocks the median is over.

Memory: peak resident set size (RSS) of this process during one measurement. On Linux
the kernel's high-water mark (VmHWM) is reset before the measurement (writing 5 to
/proc/self/clear_refs) and read after it: exact, and it includes everything resident
(TensorFlow runtime, model, optimizer state, activations). Elsewhere a psutil thread
samples RSS every few milliseconds (a lower bound of the peak). On GPUs the allocator's
peak (`tf.config.experimental.get_memory_info`) is reset and read the same way.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import threading
import time

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _vm_hwm_mb() -> float | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakMemory(contextlib.AbstractContextManager):
    """Peak host RSS and accelerator memory (MiB) inside a `with` block:
    `peak_rss_mb`, `peak_accelerator_mb` (None without GPUs) and `rss_method`."""

    def __init__(self, gpus: tuple[str, ...] = (), sample_s: float = 0.002):
        self.gpus = tuple(gpus)
        self.sample_s = sample_s
        self.peak_rss_mb = self.peak_accelerator_mb = self.rss_before_mb = None
        self.rss_method = ""
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        import tensorflow as tf

        for gpu in self.gpus:
            tf.config.experimental.reset_memory_stats(gpu)
        self.rss_before_mb = rss_mb()
        if _reset_hwm() and _vm_hwm_mb() is not None:
            self.rss_method = "VmHWM"
        else:
            self.rss_method = "sampled"
            self._sampled = self.rss_before_mb
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.sample_s):
            self._sampled = max(self._sampled, rss_mb())

    def __exit__(self, *exc):
        import tensorflow as tf

        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_rss_mb = max(self._sampled, rss_mb())
        else:
            self.peak_rss_mb = _vm_hwm_mb()
        if self.gpus:
            self.peak_accelerator_mb = sum(
                tf.config.experimental.get_memory_info(gpu)["peak"] for gpu in self.gpus) / 2**20
        return False

    def as_dict(self) -> dict:
        return {"peak_rss_mb": self.peak_rss_mb, "rss_before_mb": self.rss_before_mb,
                "rss_method": self.rss_method, "peak_accelerator_mb": self.peak_accelerator_mb}


class Clock:
    """Wall time, CPU time of this process (all its threads) and CPU time the whole
    machine was busy, between laps. On a shared machine wall-clock rates move with
    other processes' load; this process's CPU time per call moves much less, and the
    machine's busy time minus ours says how many cores the others took meanwhile."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self.last = self._read()

    def _read(self):
        ours = self._process.cpu_times()
        machine_times = self._psutil.cpu_times()
        busy = sum(machine_times) - machine_times.idle - getattr(machine_times, "iowait", 0.0)
        return time.perf_counter(), ours.user + ours.system, busy

    def lap(self) -> tuple[float, float, float]:
        """(wall s, our CPU s, cores used by other processes) since the last lap."""
        now = self._read()
        wall, ours, busy = (a - b for a, b in zip(now, self.last))
        self.last = now
        return wall, ours, max(0.0, busy - ours) / wall if wall > 0 else 0.0


def timed_calls(call, sync, *, warmup: int = 1, steps: int = 1, repeats: int = 3,
                max_seconds: float = 30.0) -> dict:
    """Times `call()` as described in the module docstring. `sync(result)` must block
    until the result is on the host (device work is asynchronous on GPUs)."""
    clock = Clock()
    sync(call())
    first = clock.lap()[0]
    for _ in range(warmup):
        sync(call())
    clock.lap()
    per_call, cpu_per_call, others, timed = [], [], [], 0.0
    for _ in range(max(1, repeats)):
        result = None
        for _ in range(steps):
            result = call()
        sync(result)
        wall, cpu, other = clock.lap()
        per_call.append(wall / steps)
        cpu_per_call.append(cpu / steps)
        others.append(other)
        timed += wall
        if timed >= max_seconds:
            break
    median = statistics.median(per_call)
    return {"first_call_s": first, "seconds_per_call": median, "seconds_per_call_blocks": per_call,
            "cpu_seconds_per_call": statistics.median(cpu_per_call),
            "other_processes_cores": statistics.median(others),
            "repeats_done": len(per_call), "steps_per_repeat": steps, "warmup_calls": warmup,
            # Tracing (and XLA compilation) on top of one steady call.
            "compile_s": max(0.0, first - median)}


def machine() -> dict:
    """What the numbers were measured on: the simulation benchmark's description (CPU,
    cores, versions, load average) plus memory, GPUs and Keras."""
    import keras
    import psutil
    import tensorflow as tf

    from deeplense_tf.benchmarks import simulation

    info = simulation.machine()
    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    info.update(memory_gb=round(psutil.virtual_memory().total / 2**30, 1), gpus=gpus,
                platform=platform.platform(), keras=keras.__version__)
    return info


def describe(machine_info: dict) -> str:
    """One line naming the machine, e.g. for table captions."""
    accel = ", ".join(machine_info["gpus"]) if machine_info["gpus"] else "no GPU"
    return (f"{machine_info['cpu']}, {machine_info['cores']} cores, "
            f"{machine_info['memory_gb']} GiB, {accel}; TensorFlow {machine_info['tensorflow']}, "
            f"Keras {machine_info['keras']}; load average "
            f"{machine_info['load_average_1_5_15_min'][0]} at the start")
