r"""Exports a trained Keras model as a versioned SavedModel for TensorFlow Serving.

Usage:
  python -m deeplense_tf.export --model=runs/axion/best.keras \
      --export_base=exports --model_name=deeplense_axion [--version=N]

writes ``exports/deeplense_axion/<N>/`` (TF Serving's layout: ``saved_model.pb``,
``variables/``, ``assets.extra/``), N being the next free version unless given. The
``serving_default`` signature takes raw pixels as ``image`` (float32
``[batch, H, W, 1]``, normalization inside the model) and returns the model's named
outputs in physical units (for example ``log10_m_axion`` and ``log10_m_axion_std``),
float32 ``[batch]``; the batch dimension stays dynamic.

Why not ``model.export()`` or ``tf.saved_model.save(model)``: the first stores every
weight twice and the second also stores the optimizer of a compiled model. Here a
``tf.Module`` holds only the model's variables and one ``tf.function`` with an explicit
input signature, so the SavedModel carries the weights once and nothing else.

Stock TF Serving refuses graphs containing XLA-must-compile functions (Keras' TF
backend wraps grouped convolutions in one); such a model is refused at export. Warm-up
requests (``assets.extra/tf_serving_warmup_requests``) make TF Serving run the model
once per batch size before it reports the version AVAILABLE.

The export is atomic: everything is written into a hidden directory beside the
versions and renamed to the integer version at the end, so a server polling the base
path never sees a half-written version, and a failed export leaves none.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from deeplense_tf import console
from deeplense_tf.serving import protos

_SIGNATURE_KEY = "serving_default"
_INPUT_NAME = "image"
_EXPORT_INFO_RELATIVE_PATH = os.path.join("assets.extra", "deeplense_export.json")


def version_directories(base_path: str) -> list[int]:
    """The integer version directories under ``base_path``, ascending (TF Serving's rule)."""
    if not os.path.isdir(base_path):
        return []
    versions = []
    for name in os.listdir(base_path):
        if name.isdigit() and os.path.isdir(os.path.join(base_path, name)):
            versions.append(int(name))
    return sorted(versions)


def find_xla_must_compile(graph_def) -> list[str]:
    """Names of functions and nodes in a GraphDef (library included) that demand XLA."""

    def must_compile(attrs) -> bool:
        return "_XlaMustCompile" in attrs and attrs["_XlaMustCompile"].b

    found = [node.name for node in graph_def.node if must_compile(node.attr)]
    for function in graph_def.library.function:
        if must_compile(function.attr):
            found.append(function.signature.name)
        found.extend(f"{function.signature.name}/{node.name}" for node in function.node_def if must_compile(node.attr))
    return found


def _check_contract(model) -> tuple[int, int]:
    """Checks the model contract (one ``image`` input (H, W, 1), dict output); returns (H, W)."""
    if len(model.inputs) != 1:
        raise ValueError(f"expected one input named {_INPUT_NAME!r}, the model has {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape)
    name = getattr(model.inputs[0], "name", "")
    if name != _INPUT_NAME:
        raise ValueError(f"the model input is named {name!r}; the serving contract needs {_INPUT_NAME!r}")
    if len(shape) != 4 or shape[-1] != 1 or shape[1] is None or shape[2] is None:
        raise ValueError(f"expected an input of shape (batch, H, W, 1) with H and W known, got {shape}")
    if not isinstance(model.output, dict):
        raise ValueError("the model must return a dict of named outputs (physical units), e.g. {'log10_m_axion': ...}")
    return shape[1], shape[2]


def _serving_module(model, height: int, width: int) -> tf.Module:
    """The tf.Module that is saved: the model's variables and ``serve``, nothing else."""
    module = tf.Module()
    # Tracking the variables (not the Keras model) stores each weight once.
    module.model_variables = [getattr(variable, "value", variable) for variable in model.variables]
    input_dtype = model.inputs[0].dtype

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 1], tf.float32, name=_INPUT_NAME)])
    def serve(image):
        outputs = model(tf.cast(image, input_dtype), training=False)
        return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

    module.serve = serve
    return module


def _warmup_requests(model_name: str, height: int, width: int, batch_sizes: Sequence[int]):
    for batch_size in batch_sizes:
        image = np.zeros((batch_size, height, width, 1), np.float32)
        yield protos.predict_request(model_name, {_INPUT_NAME: image}, _SIGNATURE_KEY)


def export_saved_model(
    model,
    export_base: str,
    model_name: str,
    version: int | None = None,
    warmup_batch_sizes: Sequence[int] = (1, 64),
) -> str:
    """Exports ``model`` (a ``.keras`` path or a Keras model) for TF Serving.

    Args:
      model: path of a ``.keras`` file (loaded without compiling) or a Keras model
        following the serving contract: one input ``image`` (H, W, 1) of raw pixels,
        a dict of named float outputs of shape (batch,) in physical units.
      export_base: directory holding one directory per model name.
      model_name: the served model's name; versions go to ``export_base/model_name/``.
      version: integer version; by default one more than the highest present.
      warmup_batch_sizes: batch sizes of the zero-image warm-up requests TF Serving
        replays before serving a version; empty for none.

    Returns:
      The path of the new version directory.

    Raises:
      ValueError: the model breaks the contract, or its graph would need XLA.
      FileExistsError: ``version`` already exists.
    """
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(f"invalid model name {model_name!r}")
    source_info = {}
    bar = console.Progress(total=4, desc=f"export {model_name}", unit="stage", log_summary=False)
    if isinstance(model, (str, os.PathLike)):
        from deeplense_tf import pretrained

        path = pretrained.resolve(os.fspath(model))
        source_info = {"source_model": os.path.basename(path), "source_model_sha256": pretrained.file_sha256(path)}
        model = pretrained.load_model(path)
    height, width = _check_contract(model)
    bar.update(1, stage="loaded")

    base_path = os.path.join(export_base, model_name)
    os.makedirs(base_path, exist_ok=True)
    existing = version_directories(base_path)
    if version is None:
        version = existing[-1] + 1 if existing else 1
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    final_path = os.path.join(base_path, str(version))
    if os.path.exists(final_path):
        raise FileExistsError(f"version {version} of {model_name!r} already exists")

    module = _serving_module(model, height, width)
    concrete = module.serve.get_concrete_function()
    needs_xla = find_xla_must_compile(concrete.graph.as_graph_def())
    if needs_xla:
        raise ValueError(
            "the serving graph contains XLA-must-compile functions, which stock TF Serving "
            f"refuses (Keras wraps grouped convolutions in them): {sorted(set(needs_xla))[:5]}"
        )
    bar.update(1, stage="traced")

    # Hidden (and non-integer) name: TF Serving and our server ignore it while it grows.
    temp_path = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_path)
    try:
        tf.saved_model.save(module, temp_path, signatures={_SIGNATURE_KEY: concrete})
        bar.update(1, stage="saved")
        os.makedirs(os.path.join(temp_path, "assets.extra"), exist_ok=True)
        warmup_count = protos.write_warmup_file(
            os.path.join(temp_path, protos.WARMUP_RELATIVE_PATH),
            _warmup_requests(model_name, height, width, warmup_batch_sizes),
        )
        info = {
            "model_name": model_name,
            "version": version,
            "signature": _SIGNATURE_KEY,
            "input": {"name": _INPUT_NAME, "dtype": "float32", "shape": [None, height, width, 1]},
            "outputs": sorted(concrete.structured_outputs),
            "warmup_batch_sizes": list(warmup_batch_sizes),
            "warmup_records": warmup_count,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **source_info,
        }
        with open(os.path.join(temp_path, _EXPORT_INFO_RELATIVE_PATH), "w") as stream:
            json.dump(info, stream, indent=2)
        os.chmod(temp_path, 0o755)  # mkdtemp makes it private; servers may run as another user
        # rename() of a directory is atomic and fails if the target exists and is not empty.
        os.rename(temp_path, final_path)
        bar.update(1, stage="warm-up written")
    except BaseException:
        shutil.rmtree(temp_path, ignore_errors=True)
        raise
    finally:
        bar.close()
    logging.info("exported %s version %d to %s", model_name, version, final_path)
    return final_path


def _define_flags() -> None:
    # Defined only when run as a program: modules imported together must not clash.
    flags.DEFINE_string("model", None, "Trained model: a .keras file or a shipped model's name "
                        "(serving contract: input 'image', dict output).")
    flags.DEFINE_string("export_base", None, "Directory of exported models; versions go to <export_base>/<model_name>/<N>.")
    flags.DEFINE_string("model_name", None, "Name the model is served under (TF Serving's --model_name).")
    flags.DEFINE_integer("version", None, "Version number; default: one more than the highest existing version.")
    flags.DEFINE_list("warmup_batch_sizes", ["1", "64"], "Batch sizes of the warm-up requests written; empty for none.")
    flags.mark_flags_as_required(["model", "export_base", "model_name"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    console.setup()
    path = export_saved_model(
        FLAGS.model,
        FLAGS.export_base,
        FLAGS.model_name,
        version=FLAGS.version,
        warmup_batch_sizes=[int(size) for size in FLAGS.warmup_batch_sizes],
    )
    print(path)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
