"""Export: TF Serving layout, serving_default signature, no XLA, warm-up records, atomicity."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2

from deeplense_tf import export
from deeplense_tf.serving import protos


def _saved_model_proto(path):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as stream:
        proto.ParseFromString(stream.read())
    return proto


def _xla_must_compile(graph_def):
    """Independent walk: graph nodes, library functions and their nodes."""
    flagged = []
    for node in graph_def.node:
        if node.attr["_XlaMustCompile"].b:
            flagged.append(node.name)
    for function in graph_def.library.function:
        if function.attr["_XlaMustCompile"].b:
            flagged.append(function.signature.name)
        flagged += [node.name for node in function.node_def if node.attr["_XlaMustCompile"].b]
    return flagged


def _entries(base):
    return sorted(os.listdir(base)) if os.path.isdir(base) else []


def test_layout_is_tf_serving_versioned(exported, contract):
    export_base, path = exported
    assert path == os.path.join(export_base, contract.MODEL_NAME, "1")
    assert _entries(os.path.join(export_base, contract.MODEL_NAME)) == ["1"]  # no temp dir left
    for name in ("saved_model.pb", "variables/variables.index", protos.WARMUP_RELATIVE_PATH):
        assert os.path.isfile(os.path.join(path, name)), name


def test_serving_default_matches_keras_model(exported, keras_model, contract):
    loaded = tf.saved_model.load(exported[1])
    serving = loaded.signatures["serving_default"]
    _, inputs = serving.structured_input_signature
    assert list(inputs) == ["image"]
    assert inputs["image"].dtype == tf.float32
    assert inputs["image"].shape.as_list() == [None, contract.IMAGE_SIZE, contract.IMAGE_SIZE, 1]
    assert sorted(serving.structured_outputs) == ["log10_m_axion", "log10_m_axion_std"]
    for batch in (1, 5):  # the batch dimension is dynamic
        images = contract.images(batch, seed=batch)
        served = serving(image=tf.constant(images))
        expected = keras_model(images, training=False)
        for name, value in served.items():
            assert value.dtype == tf.float32 and value.shape == (batch,)
            np.testing.assert_allclose(value.numpy(), np.asarray(expected[name]), rtol=1e-5, atol=1e-6)


def test_exported_graph_needs_no_xla(exported):
    proto = _saved_model_proto(exported[1])
    assert proto.meta_graphs
    for meta_graph in proto.meta_graphs:
        assert len(meta_graph.graph_def.library.function) > 0  # the walk reaches the functions
        assert _xla_must_compile(meta_graph.graph_def) == []


def test_weights_stored_once_and_no_optimizer(exported, keras_model):
    path = exported[1]
    names = [name for name, _ in tf.train.list_variables(os.path.join(path, "variables", "variables"))]
    assert not [name for name in names if "optimizer" in name.lower()]
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in keras_model.variables)
    data_bytes = sum(
        os.path.getsize(os.path.join(path, "variables", f))
        for f in os.listdir(os.path.join(path, "variables"))
        if f.startswith("variables.data")
    )
    assert data_bytes < 1.1 * weight_bytes + 4096


def _decode_fields(data):
    """Protobuf wire format, decoded by hand: [(field number, wire type, value)]."""

    def varint(i):
        value = shift = 0
        while True:
            byte = data[i]
            value |= (byte & 0x7F) << shift
            i += 1
            if byte < 0x80:
                return value, i
            shift += 7

    fields, i = [], 0
    while i < len(data):
        key, i = varint(i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = varint(i)
        elif wire_type == 2:
            length, i = varint(i)
            value, i = data[i:i + length], i + length
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


def test_warmup_records_are_prediction_logs_with_tf_serving_field_numbers(exported, contract):
    path = os.path.join(exported[1], protos.WARMUP_RELATIVE_PATH)
    records = [record.numpy() for record in tf.data.TFRecordDataset(path)]
    assert len(records) == 2  # warmup_batch_sizes=(1, 4)
    for record, batch in zip(records, (1, 4)):
        # Field numbers from tensorflow_serving/apis/*.proto:
        # PredictionLog.predict_log = 6; PredictLog.request = 1;
        # PredictRequest.model_spec = 1, inputs = 2 (map entry: key = 1, value = 2);
        # ModelSpec.name = 1, signature_name = 3.
        (log_field,) = _decode_fields(record)
        assert log_field[:2] == (6, 2)
        (request_field,) = _decode_fields(log_field[2])
        assert request_field[:2] == (1, 2)
        request = {}
        for number, wire_type, value in _decode_fields(request_field[2]):
            assert wire_type == 2
            request.setdefault(number, []).append(value)
        assert sorted(request) == [1, 2]
        model_spec = {number: value for number, _, value in _decode_fields(request[1][0])}
        assert model_spec == {1: contract.MODEL_NAME.encode(), 3: b"serving_default"}
        (entry,) = request[2]
        entry = {number: value for number, _, value in _decode_fields(entry)}
        assert entry[1] == b"image"
        tensor = tf.make_ndarray(tensor_pb2.TensorProto.FromString(entry[2]))
        assert tensor.dtype == np.float32 and tensor.shape == (batch, contract.IMAGE_SIZE, contract.IMAGE_SIZE, 1)
        # And our own message classes read them back.
        log = protos.PredictionLog.FromString(record)
        assert log.predict_log.request.model_spec.name == contract.MODEL_NAME
        assert protos.request_inputs(log.predict_log.request)["image"].shape == tensor.shape


def test_versions_count_up_and_explicit_versions_are_kept(tmp_path, keras_model):
    base = str(tmp_path)
    assert export.export_saved_model(keras_model, base, "m", warmup_batch_sizes=()).endswith(os.sep + "1")
    assert export.export_saved_model(keras_model, base, "m", version=7, warmup_batch_sizes=()).endswith(os.sep + "7")
    assert export.export_saved_model(keras_model, base, "m", warmup_batch_sizes=()).endswith(os.sep + "8")
    with pytest.raises(FileExistsError):
        export.export_saved_model(keras_model, base, "m", version=7, warmup_batch_sizes=())
    assert _entries(os.path.join(base, "m")) == ["1", "7", "8"]
    assert export.version_directories(os.path.join(base, "m")) == [1, 7, 8]


def test_failed_export_leaves_no_version_directory(tmp_path, keras_model, monkeypatch):
    def broken_save(module, path, signatures=None):
        with open(os.path.join(path, "saved_model.pb"), "wb") as stream:
            stream.write(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(keras_model, str(tmp_path), "m")
    assert _entries(os.path.join(str(tmp_path), "m")) == []


def test_model_needing_xla_is_refused(tmp_path):
    import keras

    image = keras.Input((16, 16, 1), name="image")
    x = keras.layers.Conv2D(4, 3)(image)
    x = keras.layers.Conv2D(4, 3, groups=2)(x)  # Keras' TF backend compiles this with XLA
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, {"log10_m_axion": keras.layers.Reshape(())(keras.layers.Dense(1)(x))})
    # The walker sees the XLA function in the traced serving graph ...
    module = export._serving_module(model, 16, 16)
    assert _xla_must_compile(module.serve.get_concrete_function().graph.as_graph_def())
    # ... and the export refuses it, leaving nothing a server would load.
    with pytest.raises(ValueError, match="XLA"):
        export.export_saved_model(model, str(tmp_path), "m")
    assert _entries(os.path.join(str(tmp_path), "m")) == []


@pytest.mark.parametrize(
    "model, message",
    [
        ("two_inputs", "one input"),
        ("wrong_name", "'image'"),
        ("not_a_dict", "dict"),
    ],
)
def test_contract_violations_are_refused(tmp_path, model, message):
    import keras

    if model == "two_inputs":
        a, b = keras.Input((8, 8, 1), name="image"), keras.Input((8, 8, 1), name="mask")
        built = keras.Model([a, b], {"y": keras.layers.Reshape(())(keras.layers.Dense(1)(keras.layers.Flatten()(a + b)))})
    else:
        image = keras.Input((8, 8, 1), name="image" if model != "wrong_name" else "pixels")
        y = keras.layers.Reshape(())(keras.layers.Dense(1)(keras.layers.Flatten()(image)))
        built = keras.Model(image, y if model == "not_a_dict" else {"y": y})
    with pytest.raises(ValueError, match=message):
        export.export_saved_model(built, str(tmp_path), "m")


def test_registered_regressor_exports(tmp_path, contract):
    """A model of deeplense_tf.models (custom layers) round-trips through .keras and export."""
    models = pytest.importorskip("deeplense_tf.models")
    if not hasattr(models, "build_regressor"):
        pytest.skip("deeplense_tf.models.build_regressor not available")
    model = models.build_regressor(
        "resnet18", variant="test", image_shape=(32, 32, 1), targets=["log10_m_axion"],
        head="gaussian", target_mean=[-23.0], target_std=[0.6],
    )
    keras_path = str(tmp_path / "resnet18_test.keras")
    model.save(keras_path)
    path = export.export_saved_model(keras_path, str(tmp_path / "exports"), "axion", warmup_batch_sizes=(1,))
    serving = tf.saved_model.load(path).signatures["serving_default"]
    images = contract.images(2, image_size=32)
    served = serving(image=tf.constant(images))
    expected = model(images, training=False)
    assert sorted(served) == ["log10_m_axion", "log10_m_axion_std"]
    for name in served:
        np.testing.assert_allclose(served[name].numpy(), np.asarray(expected[name]), rtol=1e-4, atol=1e-5)
    assert _xla_must_compile(_saved_model_proto(path).meta_graphs[0].graph_def) == []


@pytest.mark.slow
def test_command_line(tmp_path, keras_model_path):
    result = subprocess.run(
        [sys.executable, "-m", "deeplense_tf.export", f"--model={keras_model_path}",
         f"--export_base={tmp_path}", "--model_name=cli", "--warmup_batch_sizes=1"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith(os.path.join("cli", "1"))
    assert os.path.isfile(os.path.join(str(tmp_path), "cli", "1", "saved_model.pb"))
