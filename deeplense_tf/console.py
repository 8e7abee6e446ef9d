"""What the package's commands print: progress bars, a log file, and TensorFlow kept quiet.

Every `python -m deeplense_tf.<command>` shows progress (a bar with rate and ETA on a
terminal, one log line per stage elsewhere) and its own log lines, and hides TensorFlow's
start-up and deprecation noise: C++ banners (oneDNN, CPU instructions, XLA service),
`tf.data` sharding-callback timings, and TFDS's `FeatureConnector.dtype` deprecation.
absl's `--verbosity` (short form `-v`) brings it back: `-v 1` shows everything,
`-v -1` only warnings and errors.

TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, when it is imported, and most commands
import it before absl parses the flags; so the package's `__init__` calls
`quiet_tensorflow_for_command_line()` first thing, which acts only when the running
program is one of the package's own commands (`python -m deeplense_tf.NAME`), looks at the
raw command line for `-v`/`--verbosity`, and never overrides a level the user has set.
Importing the package as a library changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings

from deeplense_tf import import_hooks

# Messages TensorFlow and TFDS print through Python logging or warnings that tell a user
# of this package nothing (each seen on every run of a command).
_NOISE_WARNINGS = (
    r".*FeatureConnector\.dtype.*",
    r".*`np\.bool8` is a deprecated alias.*",
    r".*is deprecated and will be removed in a future version.*",
)
_NOISE_LOG_FRAGMENTS = (
    "FeatureConnector.dtype",
    "sharding callback",
    "Sharding callback",
    "oneDNN custom operations",
    "This TensorFlow binary is optimized",
    "Local rendezvous is aborting",
    "End of sequence",
    "Load dataset info from",
    "Reusing dataset",
    "Constructing tf.data.Dataset",
    "Fields info.[",
    "Using custom data configuration",
    "has no dataset_info.json",
)


def _command_line_verbosity(argv) -> int:
    """The value of `-v`/`--verbosity` on a raw command line (0 when absent)."""
    value = 0
    args = list(argv)
    for i, arg in enumerate(args):
        text = None
        if arg in ("-v", "--verbosity") and i + 1 < len(args):
            text = args[i + 1]
        elif arg.startswith("--verbosity="):
            text = arg.split("=", 1)[1]
        elif arg.startswith("-v") and arg[2:].lstrip("-").isdigit():
            text = arg[2:]
        if text is not None:
            try:
                value = int(text)
            except ValueError:
                pass
    return value


def running_command() -> str | None:
    """The package's command this process runs (`python -m deeplense_tf.NAME`), or None."""
    argv = getattr(sys, "orig_argv", None) or []
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m":
            module = argv[i + 1]
            return module if module.split(".")[0] == "deeplense_tf" else None
    return None


# What TensorFlow's C++ side prints while it is imported, before its logging is set up
# (so TF_CPP_MIN_LOG_LEVEL cannot hide it; with TensorFlow 2.21 it does not).
_IMPORT_NOISE = (
    "All log messages before absl::InitializeLog",
    "oneDNN custom operations",
    "This TensorFlow binary is optimized",
    "To enable the following instructions",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning",
    "Could not find cuda drivers",
    "Attempting to register factory for plugin",
)


_QUIET_ENV = "DEEPLENSE_TF_QUIET_TENSORFLOW"


def quiet_tensorflow_for_command_line() -> None:
    """Keeps TensorFlow's start-up noise off our commands' terminals (not a library's).

    Sets TF_CPP_MIN_LOG_LEVEL (unless the user has), and, since TensorFlow prints its
    banners before its logging honours that, catches what the C++ side writes to the
    stderr file descriptor while `tensorflow` is imported and passes on every line that
    is not a known banner.
    """
    if "tensorflow" in sys.modules:
        return
    # Worker processes a command starts (spawned simulation pools, Beam workers) are not
    # `python -m deeplense_tf...` themselves: they inherit the decision through the
    # environment.
    if os.environ.get(_QUIET_ENV) != "1":
        if running_command() is None or _command_line_verbosity(sys.argv[1:]) >= 1:
            return
        os.environ[_QUIET_ENV] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ errors only
    import_hooks.on_import("tensorflow", around=_quiet_tensorflow_import)


def _quiet_tensorflow_import():
    return filtered_stderr_fd(_IMPORT_NOISE)


@contextlib.contextmanager
def filtered_stderr_fd(noise):
    """Captures file descriptor 2 (C/C++ writes included) into a temporary file, then
    writes back every line that contains none of the `noise` fragments."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr (embedded interpreters): do nothing
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True)
                    if not any(fragment in line for fragment in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


_OWN_DIRS = (os.path.dirname(os.path.abspath(__file__)),)


class _DropNoise(logging.Filter):
    """Below WARNING only our own modules' lines pass; known noise never does."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(fragment in message for fragment in _NOISE_LOG_FRAGMENTS):
            return False
        if record.levelno >= logging.WARNING:
            return True
        return os.path.abspath(record.pathname).startswith(_OWN_DIRS + _builder_dirs())


def _builder_dirs() -> tuple:
    """Where the TFDS builder's source lives (installed as deeplense_tf.datasets; an
    editable install maps it to the repository's datasets/ folder)."""
    module = sys.modules.get("deeplense_tf.datasets.deeplense_lensing.deeplense_lensing_dataset_builder")
    return (os.path.dirname(os.path.abspath(module.__file__)),) if module else ()


_NOISE_FILTER = _DropNoise()


def setup(verbosity: int | None = None, log_file: str | None = None) -> None:
    """Configures a command's output once absl has parsed its flags.

    verbosity: absl's (`-v`): below 1 TensorFlow's Python-side noise is filtered (our own
    INFO lines stay); 1 or more shows everything. None reads absl's flag.
    log_file: if given, every log line of this process (at INFO and above, noise
    included) is also appended to it, so a quiet terminal loses nothing.
    """
    from absl import logging as absl_logging

    if verbosity is None:
        verbosity = absl_logging.get_verbosity()
    handler = absl_logging.get_absl_handler()
    if verbosity < 1:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for pattern in _NOISE_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        # On the terminal's handlers only (absl's, and the one TensorFlow adds to its own
        # logger, which prints `INFO:tensorflow:...`): a log file still receives every line.
        _filter_terminal_handlers(handler)
        # absl prefixes every line with a timestamp and source position; on a terminal a
        # short form reads better (the log file keeps the full one).
        handler.setFormatter(logging.Formatter("%(message)s") if sys.stderr.isatty() else
                             absl_logging.PythonFormatter())
    elif _NOISE_FILTER in handler.filters:
        handler.removeFilter(_NOISE_FILTER)
    if log_file:
        add_log_file(log_file)


def _filter_terminal_handlers(absl_handler) -> None:
    handlers = [absl_handler]
    if "tensorflow" in sys.modules:
        handlers += [h for h in logging.getLogger("tensorflow").handlers
                     if not isinstance(h, logging.FileHandler)]
    for handler in handlers:
        if _NOISE_FILTER not in handler.filters:
            handler.addFilter(_NOISE_FILTER)


_FILE_HANDLERS: dict[str, logging.Handler] = {}


def add_log_file(path: str) -> logging.Handler:
    """Appends every log record of this process (INFO and above) to PATH."""
    from absl import logging as absl_logging

    path = os.path.abspath(path)
    if path in _FILE_HANDLERS:
        return _FILE_HANDLERS[path]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(absl_logging.PythonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    _FILE_HANDLERS[path] = handler
    return handler


def remove_log_file(path: str) -> None:
    handler = _FILE_HANDLERS.pop(os.path.abspath(path), None)
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def is_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """A progress bar with rate and ETA on a terminal; one summary log line elsewhere.

    with console.Progress(total=n, desc="simulate", unit="image") as bar:
        for ...: bar.update(k, loss=0.12)   # keyword values show beside the bar

    Off a terminal (CI, a redirected log) a bar would fill the log with carriage returns,
    so it logs `desc: n unit in s (rate/s)` when it closes, plus the postfix values.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", disable: bool | None = None,
                 log_summary: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.count = 0
        self.postfix: dict = {}
        self.started = time.perf_counter()
        self.log_summary = log_summary
        show = is_terminal() if disable is None else not disable
        self._bar = None
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True,
                             file=sys.stderr, smoothing=0.1)

    def update(self, n: int = 1, **postfix) -> None:
        self.count += n
        if postfix:
            self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)

    def set_postfix(self, **postfix) -> None:
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()})

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.log_summary and self.count:
            from absl import logging as absl_logging

            rate = self.count / self.elapsed if self.elapsed > 0 else float("nan")
            extra = "".join(f" {k} {_fmt(v)}" for k, v in self.postfix.items())
            plural = self.unit + ("es" if self.unit.endswith(("s", "sh", "ch", "x")) else "s")
            absl_logging.info(f"{self.desc}: {self.count} {plural} in {self.elapsed:.1f} s "
                              f"({rate:.1f}/s){extra}")
            self.log_summary = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
