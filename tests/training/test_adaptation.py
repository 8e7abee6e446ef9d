"""`train --adapt=dann|coral`: the gradient reversal, the alignment terms, an adversarial
game that really removes a domain difference, and an adapted run end to end, which reads
no target label and refuses inputs it cannot adapt with."""

import json

import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf import adaptation, input_pipeline, training

SOURCE = "deeplense_lensing/euclid_axion_tiny"
TARGET = "deeplense_lensing/euclid_axion_psf_tiny"


def _config(data_dir, **kwargs):
    base = dict(data_dir=data_dir, dataset=SOURCE, targets=["log10_m_axion"], model="resnet18",
                variant="test", epochs=1, batch_size=4, log_every_steps=1, warmup_epochs=0.0)
    base.update(kwargs)
    return training.TrainConfig(**base)


@pytest.fixture(scope="module")
def adapt_data(tiny_data):
    """tiny_data plus the tiny PSF-shifted set (the target domain) in the same directory."""
    from deeplense_tf import build_dataset

    build_dataset.build("euclid_axion_psf_tiny", tiny_data, num_workers=1)
    return tiny_data


def test_reversal_is_identity_forward_and_minus_weight_backward():
    x = tf.constant([[1.0, -2.0, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = adaptation.reverse_gradient(x, tf.constant(0.3))
        loss = tf.reduce_sum(y * tf.constant([[2.0, 5.0, -1.0]]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[-0.6, -1.5, 0.3]], rtol=1e-6)


def test_the_weight_ramps_from_zero_to_the_maximum():
    w = [float(adaptation.adversarial_weight(p, 0.5)) for p in np.linspace(0, 1, 11)]
    assert w[0] == 0.0 and np.all(np.diff(w) > 0)
    assert w[-1] == pytest.approx(0.5 * (2 / (1 + np.exp(-10)) - 1), rel=1e-6)
    assert float(adaptation.adversarial_weight(2.0, 0.5)) == pytest.approx(w[-1])


def test_coral_distance_is_the_moment_formula():
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(32, 6)), rng.normal(0.5, 2.0, size=(40, 6))
    d = 6
    want = (np.sum((fs.mean(0) - ft.mean(0)) ** 2) / d
            + np.sum((np.cov(fs, rowvar=False) - np.cov(ft, rowvar=False)) ** 2) / (4 * d * d))
    got = float(adaptation.coral_distance(tf.constant(fs, tf.float32), tf.constant(ft, tf.float32)))
    assert got == pytest.approx(want, rel=1e-4)
    assert float(adaptation.coral_distance(tf.constant(fs, tf.float32),
                                           tf.constant(fs, tf.float32))) == pytest.approx(0, abs=1e-6)


def test_the_adversarial_game_removes_a_domain_difference():
    """Two domains differ by a 2-sigma shift along an input direction the label does not
    depend on. A linear feature map trained on the label alone keeps the shift (a fresh
    batch's domains are told apart at the Bayes rate, 84%); with the reversed domain
    gradient the features lose it and the classifier is left at chance."""
    rng = np.random.default_rng(1)
    n, dim, shift = 128, 4, 2.0

    def train(weight):
        tf.keras.utils.set_random_seed(0)
        features = tf.Variable(np.eye(dim, dtype="float32"))
        head = tf.Variable(np.zeros((dim, 1), "float32"))
        classifier = adaptation.domain_classifier(dim, width=16, seed=0)
        optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9)
        accuracies = []
        for _ in range(800):  # fresh batches, as in training: no memorizing
            xs = rng.normal(size=(n, dim)).astype("float32")
            xt = rng.normal(size=(n, dim)).astype("float32")
            xt[:, 3] += shift
            with tf.GradientTape() as tape:
                fs, ft = xs @ features, xt @ features
                task = tf.reduce_mean((tf.squeeze(fs @ head, -1) - xs[:, 0] - 0.5 * xs[:, 1]) ** 2)
                domain, accuracy = adaptation.dann_loss(classifier, fs, ft, tf.constant(weight))
                loss = task + tf.reduce_mean(domain)
            variables = [features, head, *classifier.trainable_variables]
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            accuracies.append(float(accuracy))
        # The domain shift left in the features: the input shift through the map.
        return float(task), float(np.mean(accuracies[-100:])), shift * np.linalg.norm(features[3])

    task_plain, accuracy_plain, shift_plain = train(0.0)
    task_adapted, accuracy_adapted, shift_adapted = train(1.0)
    assert accuracy_plain > 0.8 and shift_plain > 1.5
    assert accuracy_adapted < 0.6 and shift_adapted < 0.3 * shift_plain
    assert task_adapted < 1e-3 and task_plain < 1e-3  # the label is learned either way


def test_unlabelled_batches_are_images_only_reshuffled_each_pass(adapt_data):
    pipeline = input_pipeline.Pipeline(adapt_data, TARGET, ())
    batches = list(pipeline.unlabelled_batches(8, 0, 7))  # 24 images: 3 batches a pass
    assert len(batches) == 7
    assert all(isinstance(b, tf.Tensor) and tuple(b.shape) == (8, 64, 64, 1) for b in batches)
    again = list(pipeline.unlabelled_batches(8, 0, 2, skip_batches=2))
    np.testing.assert_array_equal(again[0].numpy(), batches[2].numpy())
    # A new pass is reshuffled: the 4th batch is not the 1st again.
    assert not np.array_equal(batches[3].numpy(), batches[0].numpy())


@pytest.mark.parametrize("method", ["dann", "coral"])
def test_an_adapted_run_trains_logs_the_domain_terms_and_keeps_its_last_epoch(
        adapt_data, tmp_path, method, caplog):
    config = _config(adapt_data, epochs=2, adapt=method, adapt_dataset=TARGET, adapt_weight=0.5)
    summary = training.train_and_evaluate(config, str(tmp_path))
    assert summary["completed"] and summary["best_epoch"] == 1
    assert summary["model_selection"].startswith("last epoch")
    log = caplog.text
    assert "Adapting to the unlabelled images of " + TARGET in log
    assert "domain loss" in log and ("domain accuracy" in log) == (method == "dann")
    flags = (tmp_path / "flags.cfg").read_text()
    assert f"--adapt={method}" in flags and f"--adapt_dataset={TARGET}" in flags
    # The checkpoint holds the domain classifier's six weights too (tracked through the
    # optimizer); the shipped artefact is the regressor alone.
    import keras

    model = keras.saving.load_model(str(tmp_path / "model.keras"), compile=False)
    names = tf.train.load_checkpoint(str(tmp_path / "checkpoints")).get_variable_to_shape_map()
    trained = {n.split("/")[2] for n in names if n.startswith("optimizer/_trainable_variables/")}
    assert len(trained) == len(model.trainable_weights) + (6 if method == "dann" else 0)
    assert not [layer for layer in model.layers if layer.name.startswith("domain")]
    assert json.loads((tmp_path / "summary.json").read_text())["model_selection"] == \
        summary["model_selection"]


def test_an_adapted_run_resumes_with_its_domain_classifier(adapt_data, tmp_path, caplog):
    """Stopped after step 4 of 6, the same command restores model, optimizer and domain
    classifier (every checkpointed object must match) and ends where a whole run ends."""
    import keras

    config = _config(adapt_data, adapt="dann", adapt_dataset=TARGET, checkpoint_every_steps=2,
                     augment=False)
    whole = training.train_and_evaluate(config, str(tmp_path))
    assert whole["steps"] == 6
    finished = keras.saving.load_model(str(tmp_path / "model.keras"), compile=False)
    ckdir = str(tmp_path / "checkpoints")
    tf.compat.v1.train.update_checkpoint_state(ckdir, model_checkpoint_path=f"{ckdir}/ckpt-4")
    (tmp_path / "summary.json").unlink()
    caplog.clear()
    resumed = training.train_and_evaluate(config, str(tmp_path))
    assert resumed["steps"] == 6 and resumed["completed"]
    assert "Resumed from" in caplog.text and "(steps 5-6" in caplog.text
    again = keras.saving.load_model(str(tmp_path / "model.keras"), compile=False)
    for a, b in zip(finished.weights, again.weights):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(adapt="dann"), "needs --adapt_dataset"),
    (dict(adapt_dataset=TARGET), "needs --adapt=dann or --adapt=coral"),
    (dict(adapt="coral", adapt_dataset=TARGET, adapt_weight=0.0), "--adapt_weight: must be positive"),
    (dict(adapt="mmd", adapt_dataset=TARGET), "--adapt: 'mmd' is not one of"),
])
def test_bad_adaptation_flags_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _config("unused", **kwargs).validate()


def test_a_target_it_cannot_adapt_to_is_refused_before_any_work(adapt_data, tmp_path):
    with pytest.raises(ValueError, match="is the training data set itself"):
        training.train_and_evaluate(_config(adapt_data, adapt="dann", adapt_dataset=SOURCE),
                                    str(tmp_path / "same"))
    assert not (tmp_path / "same" / "flags.cfg").exists()
    with pytest.raises(ValueError, match=r"images of shape \(150, 150, 1\), but the training "
                                         r"images are \(64, 64, 1\)"):
        adaptation.check_target_dataset(SOURCE, (64, 64, 1), "deeplense_lensing/hst_cdm",
                                        (150, 150, 1))
    with pytest.raises(input_pipeline.DataError):
        training.train_and_evaluate(_config(adapt_data, adapt="dann",
                                            adapt_dataset="deeplense_lensing/euclid_wdm_tiny"),
                                    str(tmp_path / "missing"))
