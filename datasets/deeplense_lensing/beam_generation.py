"""Simulated splits generated through Apache Beam, and Beam options checked before that.

The builder imports this module only when Beam options are given, so the local path
needs no apache-beam. The Beam pieces live here rather than in the builder module
because Beam workers unpickle them by module name: `tfds build datasets/deeplense_lensing`
loads the builder from its folder under a name the workers cannot import, while this
module is always reached by its installed name.

Options are written as `tfds build --beam_pipeline_options` takes them: comma-separated
`name=value` items (a bare `name` for Beam's switches, e.g. `save_main_session`), each
becoming the flag `--name=value`. Beam itself drops names it does not know with a log
line and exits the process on a malformed value; here both are errors naming the
option, raised before anything is simulated.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import difflib
import os

import apache_beam as beam
from absl import logging
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners import runner as beam_runner

from deeplense_tf.datasets.deeplense_lensing.deeplense_lensing_dataset_builder import (
    simulated_example)
from deeplense_tf.simulation import parallel, recipes
from deeplense_tf.simulation.simulator import example_rng

# Indices per element of the `Create` that seeds a split: the job graph stays small
# (Dataflow caps its size) however many images a split holds.
_INDEX_RANGE = 1024


def options_from_string(text: str) -> PipelineOptions:
    """`PipelineOptions` from `name=value,name=value,...`, checked (see `check_options`)."""
    flags = []
    for item in text.split(","):
        item = item.strip()
        name = item.split("=", 1)[0]
        if not item:
            raise ValueError(f"beam options {text!r}: empty item; expected comma-separated "
                             "name=value items, e.g. runner=DirectRunner,direct_num_workers=2")
        if item.startswith("-"):
            raise ValueError(f"beam option {item!r}: write it without dashes, as "
                             f"{item.lstrip('-')}")
        if not name:
            raise ValueError(f"beam option {item!r}: empty name; expected name=value")
        if "=" in item and not item.split("=", 1)[1]:
            raise ValueError(f"beam option {item!r}: empty value; expected {name}=VALUE")
        flags.append(f"--{item}")
    options = PipelineOptions(flags)
    check_options(options)
    return options


def check_options(options: PipelineOptions) -> dict:
    """Refuses option names Beam does not know, malformed values and unknown runners;
    returns every option's value."""

    def strict(parser):  # ArgumentError instead of printing usage and exiting.
        parser.exit_on_error = False

    try:
        values = options.get_all_options(retain_unknown_options=True, add_extra_args_fn=strict)
    except argparse.ArgumentError as err:
        raise ValueError(_describe(err)) from None
    known = set(PipelineOptions([]).get_all_options())
    unknown = sorted(set(values) - known)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        raise ValueError(f"beam option {unknown[0]!r}: not an Apache Beam option (Beam would "
                         "ignore it)" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    if values.get("runner"):
        check_runner(values["runner"])
    direct_workers = (values.get("direct_num_workers") != 1
                      or values.get("direct_running_mode") != "in_memory")
    if _runner_name(values) in ("directrunner", "switchingdirectrunner") and direct_workers:
        # Only the FnApiRunner reads these two; Beam's DirectRunner tries PrismRunner first.
        logging.warning(
            "runner=DirectRunner first tries PrismRunner (its binary is downloaded from "
            "GitHub), which runs one in-process worker and ignores direct_num_workers and "
            "direct_running_mode; it falls back to FnApiRunner when Prism cannot start. "
            "runner=FnApiRunner uses them directly.")
    return values


def _runner_name(values: dict) -> str:
    """The runner's class name in lower case (Beam accepts `direct` for DirectRunner)."""
    name = (values.get("runner") or StandardOptions.DEFAULT_RUNNER).split(".")[-1].lower()
    return name if name.endswith("runner") else f"{name}runner"


def _describe(err: argparse.ArgumentError) -> str:
    name = (err.argument_name or "").lstrip("-").split("/")[0]
    if "expected one argument" in err.message:
        return f"beam option {name!r}: needs a value, e.g. {name}=VALUE"
    if "ignored explicit argument" in err.message:
        return f"beam option {name!r}: a switch that takes no value; write {name} alone"
    return f"beam option {name!r}: {err.message}"


def check_runner(name: str) -> None:
    """Whether Beam can create the runner `name` here (DataflowRunner also needs the
    `apache-beam[gcp]` libraries to submit a job)."""
    expected = (f"expected one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)} or the dotted "
                "path of a PipelineRunner subclass")
    try:
        runner = beam_runner.create_runner(name)
    except ValueError:
        raise ValueError(f"beam option runner={name}: unknown runner; {expected}") from None
    except (ImportError, AttributeError) as err:
        raise ValueError(f"beam option runner={name}: cannot be loaded ({err}); {expected}") from None
    if not isinstance(runner, beam_runner.PipelineRunner):
        raise ValueError(f"beam option runner={name}: not a PipelineRunner; {expected}")
    if type(runner).__name__ == "DataflowRunner":
        try:
            import apache_beam.runners.dataflow.internal.apiclient  # noqa: F401
        except ImportError as err:
            raise ValueError(f"beam option runner={name}: submitting to Dataflow needs Beam's GCP "
                             f"libraries ({err}): pip install 'apache-beam[gcp]=="
                             f"{beam.__version__}'") from None


def is_local_runner(values: dict) -> bool:
    """Whether the runner of these option values runs on this machine (the default does)."""
    return _runner_name(values) in {name.lower() for name in StandardOptions.LOCAL_RUNNERS}


class SimulateSplit(beam.PTransform):
    """(key, example) pairs of one simulated split: the same keys and examples, bit for
    bit, as the builder's local path (`parallel.simulate_split`, which draws example
    `index` from `example_rng(seed, split_index, index)` with class `index % number of
    classes`, then the builder's `simulated_example`)."""

    def __init__(self, recipe_name: str, seed: int, split: str, split_index: int, count: int):
        super().__init__()
        self._args = (recipe_name, seed, split, split_index, count)
        self._count = count

    def expand(self, begin):
        ranges = [(start, min(start + _INDEX_RANGE, self._count))
                  for start in range(0, self._count, _INDEX_RANGE)]
        return (begin
                | "IndexRanges" >> beam.Create(ranges)
                | "Indices" >> beam.FlatMap(lambda bounds: range(*bounds))
                # Breaks fusion with the Create, so the runner spreads the indices over
                # all its workers instead of simulating each range on one.
                | "Spread" >> beam.Reshuffle()
                | "Simulate" >> beam.ParDo(_Simulate(*self._args)))


class _Simulate(beam.DoFn):
    """Simulates one example per index, with one simulator per DoFn instance."""

    def __init__(self, recipe_name, seed, split, split_index, count):
        self._recipe_name, self._seed, self._split = recipe_name, seed, split
        self._split_index, self._count = split_index, count
        self._recipe = self._simulator = None

    def setup(self):
        _keep_freed_memory()
        self._recipe = recipes.get(self._recipe_name)
        self._simulator = self._recipe.simulator()

    def process(self, index):
        sim = self._simulator
        name = sim.class_names[index % len(sim.class_names)]  # Balanced classes, as locally.
        lens = sim.simulate(example_rng(self._seed, self._split_index, index), substructure=name)
        yield simulated_example(self._recipe, self._split, index, self._count, lens)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _keep_freed_memory() -> None:
    """The glibc settings the local path gives its simulation workers
    (`parallel._WORKER_MALLOC_ENV`: keep freed numpy temporaries instead of faulting them
    in again). Beam starts its workers itself, so they are set with mallopt in the
    running process; a user's own MALLOC_*_ variables win. DeepLense-CDM images on the
    2-core VM: 10.4 -> 4.0 CPU ms each, 190,000 -> 2 page faults per 60 images."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name or any(name in os.environ for name in parallel._WORKER_MALLOC_ENV):
        return
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    env = parallel._WORKER_MALLOC_ENV
    mallopt(_M_MMAP_THRESHOLD, int(env["MALLOC_MMAP_THRESHOLD_"]))
    mallopt(_M_TRIM_THRESHOLD, int(env["MALLOC_TRIM_THRESHOLD_"]))

