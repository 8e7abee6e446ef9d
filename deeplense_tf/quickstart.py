r"""The main job on an embedded default, end to end, in minutes on a laptop CPU.

  python -m deeplense_tf.quickstart --workdir=quickstart_run

1. simulates a small DeepLense Model II axion data set (3,000 / 500 / 1,000 images),
2. trains a small ResNet with a Gaussian head on it (log10 m_a with uncertainties) with
   configs/quickstart.cfg,
3. evaluates it on the whole test split beside the constant predictor,
4. exports it in TF Serving's layout,
5. starts the local TF-Serving-compatible REST endpoint, sends one request with the
   client, prints the answer, and stops the server,

and prints where everything is. Every step is also a command of its own; the printed
lines say which. Re-running resumes or reuses what is already there.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

from absl import app, flags

from deeplense_tf import build_dataset, console, evaluate, export, train, training

FLAGS = flags.FLAGS

CONFIG = "model_ii_axion"
MODEL_NAME = "deeplense_axion"


def flagfile() -> str:
    """configs/quickstart.cfg, the training flagfile (installed with the package)."""
    from importlib import resources

    return str(resources.files("deeplense_tf.configs") / "quickstart.cfg")


def default_train_config(data_dir: str, dataset: str, epochs: int | None = None
                         ) -> training.TrainConfig:
    """The TrainConfig of configs/quickstart.cfg, on `dataset` in `data_dir`."""
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    argv = ["quickstart", f"--flagfile={flagfile()}", "--workdir=unused",
            f"--data_dir={data_dir}", f"--dataset={dataset}"]
    flag_values(argv + ([f"--epochs={epochs}"] if epochs is not None else []))
    return train.config_from_flags(flag_values)


def run(workdir: str, train_size: int = 3000, epochs: int | None = None,
        test_size: int = 1000, validation_size: int = 500) -> dict:
    """The five steps; `epochs` None trains for configs/quickstart.cfg's epochs."""
    data_dir = os.path.join(workdir, "data")
    t0 = time.perf_counter()
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # one bar per split from the builder instead of TFDS's nested ones
    builder = build_dataset.build(CONFIG, data_dir, train_size=train_size,
                                  validation_size=validation_size, test_size=test_size,
                                  progress=True)
    dataset = f"deeplense_lensing/{builder.builder_config.name}"
    print(f"[1/5] data set: {json.dumps(build_dataset.summary(builder)['splits'])} in "
          f"{builder.data_dir} ({time.perf_counter() - t0:.0f} s)\n"
          f"      command: python -m deeplense_tf.build_dataset --config={CONFIG} "
          f"--data_dir={data_dir} --train_size={train_size} --validation_size={validation_size} "
          f"--test_size={test_size}")

    run_dir = os.path.join(workdir, "train")
    config = default_train_config(data_dir, dataset, epochs)
    t0 = time.perf_counter()
    summary = training.train_and_evaluate(config, run_dir)
    print(f"[2/5] trained {config.model} (configs/quickstart.cfg) for {summary['steps']} steps "
          f"({time.perf_counter() - t0:.0f} s): best validation loss "
          f"{summary['best_validation_loss']:.3f} at epoch {summary['best_epoch'] + 1}\n"
          f"      model: {os.path.join(run_dir, 'model.keras')}\n"
          f"      TensorBoard: tensorboard --logdir {run_dir}\n"
          f"      command: python -m deeplense_tf.train --flagfile=configs/quickstart.cfg "
          f"--data_dir={data_dir} --dataset={dataset} --epochs={config.epochs} --workdir={run_dir}")
    t0 = time.perf_counter()
    report_dir = os.path.join(workdir, "report")
    results = evaluate.run(os.path.join(run_dir, "model.keras"), data_dir, dataset, report_dir)
    print(f"[3/5] test split ({results['num_examples']} images, {time.perf_counter() - t0:.0f} s):\n"
          + "\n".join("      " + line for line in evaluate.headline(results).splitlines())
          + f"\n      report: {os.path.join(report_dir, 'report.md')}\n"
          f"      command: python -m deeplense_tf.evaluate --workdir={run_dir} "
          f"--data_dir={data_dir} --dataset={dataset} --output_dir={report_dir}")

    export_base = os.path.join(workdir, "export")
    version_dir = export.export_saved_model(os.path.join(run_dir, "model.keras"), export_base,
                                            MODEL_NAME)
    print(f"[4/5] SavedModel for TF Serving: {version_dir}\n"
          f"      command: python -m deeplense_tf.export --model={run_dir}/model.keras "
          f"--export_base={export_base} --model_name={MODEL_NAME}")

    answer = serve_one_request(os.path.join(export_base, MODEL_NAME), builder)
    return {"data": build_dataset.summary(builder), "train": summary, "test": results,
            "export": version_dir, "served": answer}


def serve_one_request(model_base_path: str, builder) -> dict:
    """Starts the REST endpoint on a free loopback port, predicts one test image, stops."""
    import numpy as np

    from deeplense_tf.serving import client
    from deeplense_tf.serving.repository import ModelRepository
    from deeplense_tf.serving.server import ModelServer

    example = next(iter(builder.as_dataset(split="test").take(1)))
    image = example["image"].numpy()[None]
    truth = float(example["log10_m_axion"])
    with ModelServer([ModelRepository(MODEL_NAME, model_base_path)], port=0) as server:
        answer = client.predict(server.url, MODEL_NAME, image)
        print(f"[5/5] POST {server.url}/v1/models/{MODEL_NAME}:predict (one test image):\n"
              f"      log10_m_axion = {float(answer['log10_m_axion'][0]):.3f} "
              f"± {float(answer['log10_m_axion_std'][0]):.3f} (true {truth:.3f})\n"
              f"      server command: python -m deeplense_tf.serve "
              f"--model_base_path={model_base_path} --model_name={MODEL_NAME} "
              "--rest_api_port=8501")
    print("      server stopped")
    return {k: np.asarray(v).tolist() for k, v in answer.items()}


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags when it runs, so importing this module (a test, a
    notebook) never clashes with another program's `--workdir` or `--epochs`."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("workdir", "quickstart_run", "Where data, runs and reports go.", **fv)
    flags.DEFINE_integer("train_size", 3000, "Simulated training images.", **fv)
    flags.DEFINE_integer("test_size", 1000, "Simulated test images.", **fv)
    flags.DEFINE_integer("epochs", None, "Training epochs (default: configs/quickstart.cfg's).",
                         **fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.setup(log_file=os.path.join(FLAGS.workdir, "quickstart.log"))
    run(FLAGS.workdir, FLAGS.train_size, FLAGS.epochs, FLAGS.test_size)


if __name__ == "__main__":
    define_flags()
    app.run(main)
