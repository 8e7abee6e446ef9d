"""Quiet terminals: TensorFlow's noise filtered from our commands, our lines and errors kept."""

import logging
import os
import subprocess
import sys

from absl import logging as absl_logging

from deeplense_tf import console, pretrained


def test_command_line_verbosity_forms():
    assert console._command_line_verbosity(["--model=x"]) == 0
    assert console._command_line_verbosity(["-v", "1"]) == 1
    assert console._command_line_verbosity(["--verbosity=2", "--x"]) == 2
    assert console._command_line_verbosity(["-v1"]) == 1
    assert console._command_line_verbosity(["--verbosity", "-1"]) == -1


def test_only_our_commands_are_quietened(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "deeplense_tf.export", "--model=x"])
    assert console.running_command() == "deeplense_tf.export"
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "pytest"])
    assert console.running_command() is None
    monkeypatch.setattr(sys, "orig_argv", ["python", "script.py"])
    assert console.running_command() is None


def test_stderr_fd_filter_drops_banners_and_keeps_the_rest(capfd):
    with console.filtered_stderr_fd(("oneDNN custom operations",)):
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"a real error from C++\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "a real error from C++" in err


def _record(pathname, level=logging.INFO, message="hello"):
    return logging.LogRecord("absl", level, pathname, 1, message, None, None)


def test_log_filter_keeps_our_lines_and_warnings_only():
    noise = console._DropNoise()
    ours = os.path.join(os.path.dirname(console.__file__), "training.py")
    theirs = "/somewhere/site-packages/tensorflow/python/saved_model/builder_impl.py"
    assert noise.filter(_record(ours))
    assert not noise.filter(_record(theirs))
    assert noise.filter(_record(theirs, logging.WARNING, "disk almost full"))
    assert not noise.filter(_record(theirs, logging.WARNING, "`FeatureConnector.dtype` is deprecated"))


def test_progress_off_a_terminal_logs_one_summary_line(tmp_path):
    log = tmp_path / "run.log"
    console.add_log_file(str(log))
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)  # other tests may have lowered it
    try:
        with console.Progress(total=3, desc="simulate", unit="image", disable=True) as bar:
            for _ in range(3):
                bar.update(1, loss=0.5)
    finally:
        absl_logging.set_verbosity(verbosity)
        console.remove_log_file(str(log))
    text = log.read_text()
    assert "simulate: 3 images in" in text and "loss 0.5" in text
    assert text.count("simulate:") == 1


def test_a_command_prints_no_tensorflow_noise_and_v1_brings_it_back(tmp_path):
    name = pretrained.list()[0]
    command = [sys.executable, "-m", "deeplense_tf.export", f"--model={name}",
               f"--export_base={tmp_path}", "--model_name=m", "--warmup_batch_sizes="]
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    for noise in ("oneDNN", "absl::InitializeLog", "Sharding callback", "fingerprint"):
        assert noise not in quiet.stderr, (noise, quiet.stderr)
    assert "exported m version 1" in quiet.stderr
    loud = subprocess.run(command + ["-v", "1"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "fingerprint" in loud.stderr  # TensorFlow's own INFO lines are back
    assert quiet.stdout.strip().endswith("/m/1") and loud.stdout.strip().endswith("/m/2")
