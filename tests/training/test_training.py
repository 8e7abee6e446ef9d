"""End-to-end training: one step, resume after SIGKILL, strategies, bad input, NaN,
HParams, the chief under multi-worker."""

import dataclasses
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from deeplense_tf import training

DATASET = "deeplense_lensing/euclid_axion_tiny"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def _config(data_dir, **kwargs):
    base = dict(data_dir=data_dir, dataset=DATASET, targets=["log10_m_axion"], model="resnet18",
                variant="test", epochs=1, batch_size=4, log_every_steps=1, warmup_epochs=0.0)
    base.update(kwargs)
    return training.TrainConfig(**base)


def test_one_step_produces_a_checkpoint_and_a_model(tiny_data, tmp_path):
    import keras

    import deeplense_tf.models  # noqa: F401  (registers the layers for loading)

    summary = training.train_and_evaluate(_config(tiny_data, train_steps=1), str(tmp_path))
    assert summary["completed"] and summary["steps"] == 1
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    model = keras.saving.load_model(str(tmp_path / "model.keras"))
    out = model(np.zeros((2, 64, 64, 1), np.float32))
    assert set(out) == {"log10_m_axion", "log10_m_axion_std"} and out["log10_m_axion"].shape == (2,)
    stats = json.loads((tmp_path / "statistics.json").read_text())
    np.testing.assert_allclose(deeplense_tf.models.target_scaling(model)[0], stats["target_mean"],
                               rtol=1e-6)
    assert any((tmp_path / "tensorboard" / "validation").iterdir())


def _events(directory):
    """(tag, summary value) of every summary in the event files directly in `directory`."""
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.data.TFRecordDataset(path).as_numpy_iterator():
            for value in tf.compat.v1.Event.FromString(event).summary.value:
                yield value.tag, value


def _hparams_data(tensorboard_dir):
    return [plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
            for _, value in _events(tensorboard_dir)
            if value.metadata.plugin_data.plugin_name == "hparams"]


def test_hparams_hold_the_flags_and_name_metrics_the_run_writes(tiny_data, tmp_path):
    config = _config(tiny_data, train_steps=1, targets=["log10_m_axion", "theta_e"])
    training.train_and_evaluate(config, str(tmp_path))
    training.train_and_evaluate(config, str(tmp_path))  # resumes a finished run
    tensorboard = str(tmp_path / "tensorboard")
    data = _hparams_data(tensorboard)
    starts = [d.session_start_info for d in data if d.HasField("session_start_info")]
    assert len(starts) == 1  # the resumed run wrote no second session
    hparams = starts[0].hparams
    assert set(hparams) == {field.name for field in dataclasses.fields(training.TrainConfig)}
    assert hparams["learning_rate"].number_value == config.learning_rate
    assert hparams["augment"].bool_value is True
    assert hparams["model"].string_value == "resnet18"
    assert hparams["targets"].string_value == "log10_m_axion,theta_e"
    [experiment] = [d.experiment for d in data if d.HasField("experiment")]
    assert {h.name for h in experiment.hparam_infos} == set(hparams)
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert ("validation", "theta_e/mae") in metrics
    assert ("validation", "log10_m_axion/nll") in metrics
    assert ("validation", "best_loss") in metrics
    written = {(group, tag) for group in ("train", "validation")
               for tag, value in _events(os.path.join(tensorboard, group))
               if value.metadata.plugin_data.plugin_name == "scalars"}
    assert metrics <= written
    validation_tags = {tag for group, tag in written if group == "validation"} - {"epoch"}
    assert set(training._validation_metric_names(config)) == validation_tags - {"best_loss"}


def test_the_chief_is_the_chief_task_else_worker_0(monkeypatch):
    def chief(cluster, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
        return training._is_chief(types.SimpleNamespace(cluster_resolver=resolver))

    workers = {"worker": ["a:1", "b:1"]}
    assert chief(workers, "worker", 0) and not chief(workers, "worker", 1)
    with_chief = {"chief": ["c:1"], **workers}
    assert chief(with_chief, "chief", 0) and not chief(with_chief, "worker", 0)
    assert training._is_chief(tf.distribute.get_strategy())

    assert training.log_file_name("default") == "train.log"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief,
                                                "task": {"type": "worker", "index": 0}}))
    assert training.log_file_name("multi_worker") == "train.worker-0.log"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief,
                                                "task": {"type": "chief", "index": 0}}))
    assert training.log_file_name("multi_worker") == "train.log"


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_point_losses_train_a_point_head(tiny_data, tmp_path, loss):
    training.train_and_evaluate(_config(tiny_data, train_steps=2, loss=loss, model="vit"),
                                str(tmp_path))
    import keras

    model = keras.saving.load_model(str(tmp_path / "model.keras"))
    assert set(model.output) == {"log10_m_axion"}


def test_restart_with_other_flags_is_refused(tiny_data, tmp_path):
    training.train_and_evaluate(_config(tiny_data, train_steps=1), str(tmp_path))
    with pytest.raises(training.TrainingError, match="another configuration.*learning_rate"):
        training.train_and_evaluate(_config(tiny_data, train_steps=1, learning_rate=0.5),
                                    str(tmp_path))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path,
                                                                  monkeypatch):
    poison = tf.Variable(1.0)
    original = training.loss_per_example
    monkeypatch.setattr(training, "loss_per_example",
                        lambda *a, **k: original(*a, **k) * poison)
    config = _config(tiny_data, epochs=3)
    with pytest.raises(training.TrainingError, match="non-finite training loss at step 7"):
        orig_save = training.save_model_atomic

        def save_then_poison(model, path):
            orig_save(model, path)
            poison.assign(float("nan"))  # after the first epoch's best model

        monkeypatch.setattr(training, "save_model_atomic", save_then_poison)
        training.train_and_evaluate(config, str(tmp_path))
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest.endswith("-6")  # the end of epoch 0, before the poison took effect
    assert not (tmp_path / "model.keras").exists()


@pytest.mark.parametrize("kwargs, words", [
    (dict(model="resnet50"), "--model: 'resnet50'"),
    (dict(targets=["mass"]), "accepted:"),
    (dict(loss="l1"), "--loss: 'l1'"),
    (dict(model_overrides={"widht": 8}), "Unknown override"),
    (dict(batch_size=64), "exceeds the 24 training examples"),
])
def test_bad_configuration_is_named(tiny_data, tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        training.train_and_evaluate(_config(tiny_data, **kwargs), str(tmp_path))


def _train_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "deeplense_tf.train", *args], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def test_misspelled_flag_in_a_flagfile_stops_at_once(tiny_data, tmp_path):
    flagfile = tmp_path / "bad.cfg"
    flagfile.write_text("--dataset=x\n--learning_rat=0.1\n")
    proc = _train_cli([f"--flagfile={flagfile}", f"--workdir={tmp_path / 'w'}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "learning_rat" in out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_resumes(tiny_data, tmp_path):
    workdir = tmp_path / "run"
    args = ["--flagfile=configs/smoke.cfg", f"--data_dir={tiny_data}", f"--dataset={DATASET}",
            f"--workdir={workdir}", "--epochs=4", "--batch_size=4", "--checkpoint_every_steps=2"]
    proc = _train_cli(args)
    deadline = time.time() + 240
    while time.time() < deadline:  # Kill as soon as a mid-run checkpoint exists.
        latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
        if latest and int(latest.rsplit("-", 1)[1]) >= 8:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(tf.train.latest_checkpoint(str(workdir / "checkpoints")).rsplit("-", 1)[1])
    assert killed_at < 24 and not (workdir / "summary.json").exists()
    out, _ = _train_cli(args).communicate(timeout=300)
    assert "Resumed from" in out, out[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 24
    assert f"(steps {killed_at + 1}-" in out and "(steps 1-" not in out
    log = (workdir / "train.log").read_text()
    assert "Resumed from" in log and "(steps 1-" in log  # both attempts, appended


_MIRRORED = textwrap.dedent("""
    import json, sys, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from deeplense_tf import training
    config = training.TrainConfig(data_dir=sys.argv[1], dataset="%s", targets=["log10_m_axion"],
        model="resnet18", variant="test", strategy="mirrored", batch_size=int(sys.argv[3]),
        train_steps=3, log_every_steps=1)
    try:
        print("SUMMARY", json.dumps(training.train_and_evaluate(config, sys.argv[2])))
    except ValueError as err:
        print("ERROR", err)
""" % DATASET)


def test_mirrored_strategy_over_two_logical_cpus(tiny_data, tmp_path):
    out = subprocess.run([sys.executable, "-c", _MIRRORED, tiny_data, str(tmp_path), "4"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300).stdout
    summary = json.loads(out.split("SUMMARY", 1)[1])
    assert summary["replicas"] == 2 and summary["steps"] == 3 and summary["completed"]
    out = subprocess.run([sys.executable, "-c", _MIRRORED, tiny_data, str(tmp_path / "b"), "3"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300).stdout
    assert "ERROR --batch_size=3 is not divisible by the 2 replicas" in out


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _two_workers(data_dir, workdirs, timeout=240):
    """Runs smoke.cfg for 4 steps on a cluster of two local workers (worker 0 is the chief),
    each with its workdir; returns their outputs once both have succeeded."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index, workdir in enumerate(workdirs):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster,
                                              "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "deeplense_tf.train", "--flagfile=configs/smoke.cfg",
             f"--data_dir={data_dir}", f"--dataset={DATASET}", f"--workdir={workdir}",
             "--strategy=multi_worker", "--train_steps=4"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    return outs


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_with_two_local_workers(tiny_data, tmp_path):
    workdir = tmp_path / "run"
    _two_workers(tiny_data, [workdir, workdir])
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["steps"] == 4
    assert (workdir / "model.keras").exists()
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("tmp")) == []


@pytest.mark.slow
def test_only_the_chief_writes_and_every_worker_resumes_from_its_checkpoint(tiny_data, tmp_path):
    chief, other = tmp_path / "chief", tmp_path / "other"
    _two_workers(tiny_data, [chief, other])
    summary = json.loads((chief / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["steps"] == 4
    assert (chief / "model.keras").exists()
    assert "epoch 1/2 (steps 1-3: train loss" in (chief / "train.log").read_text()
    # The other worker's workdir holds its log only, nothing that looks like a run or a model.
    assert [p.name for p in other.iterdir()] == ["train.worker-1.log"]

    # The same command again, with the shared workdir a restart needs: every worker must
    # resume from the chief's last checkpoint (a worker starting afresh would hang the other).
    outs = _two_workers(tiny_data, [chief, chief])
    assert all("Resumed from" in out and "after 2 of 2 epochs" in out for out in outs), outs
    assert json.loads((chief / "summary.json").read_text())["steps"] == 4
    assert sorted(p.name for p in chief.iterdir() if p.name.startswith(("train", "tmp"))) == [
        "train.log", "train.worker-1.log"]
