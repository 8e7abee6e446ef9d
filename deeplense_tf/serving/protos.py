"""TF Serving's protobuf messages, declared here instead of importing tensorflow-serving-api.

The ``tensorflow-serving-api`` wheel depends on the full ``tensorflow`` wheel, which
clashes with ``tensorflow-cpu`` in one environment. The few messages this package
writes or reads are therefore declared below from their ``.proto`` definitions in
tensorflow/serving, with the same package, message names and field numbers, so the
bytes are the ones TF Serving reads:

- ``apis/model.proto``: ModelSpec
- ``apis/predict.proto``: PredictRequest, PredictResponse
- ``apis/prediction_log.proto``: PredictLog, PredictionLog (only its ``predict_log``
  member; warm-up files hold nothing else)
- ``config/model_server_config.proto``: ModelConfig, ModelConfigList, ModelServerConfig
  (without ``logging_config`` and ``custom_model_config``)
- ``sources/storage_path/file_system_storage_path_source.proto``: the version policy
- ``servables/tensorflow/session_bundle_config.proto``: BatchingParameters
- ``config/monitoring_config.proto``: PrometheusConfig, MonitoringConfig

They live in a private descriptor pool, so they never collide with the real ones when
tensorflow-serving-api is installed next to us. Tensors are TensorFlow's own
``TensorProto`` (copied into that pool from TensorFlow's descriptors).
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow.core.framework import tensor_pb2

# Where TF Serving looks for warm-up records inside a SavedModel version directory.
WARMUP_RELATIVE_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
# TF Serving replays at most this many warm-up records.
MAX_WARMUP_RECORDS = 1000

_F = descriptor_pb2.FieldDescriptorProto
_SCALAR_TYPES = {
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "bool": _F.TYPE_BOOL,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
}

# message name -> fields (name, number, type, label or oneof). A type starting with
# "." is a message; "map<K,V>" declares a map field; label "repeated" or a oneof name.
_SERVING_MESSAGES = {
    # apis/model.proto
    "ModelSpec": [
        ("name", 1, "string", None),
        ("version", 2, ".google.protobuf.Int64Value", "version_choice"),
        ("version_label", 4, "string", "version_choice"),
        ("signature_name", 3, "string", None),
    ],
    # apis/predict.proto
    "PredictRequest": [
        ("model_spec", 1, ".tensorflow.serving.ModelSpec", None),
        ("inputs", 2, "map<string,.tensorflow.TensorProto>", None),
        ("output_filter", 3, "string", "repeated"),
    ],
    "PredictResponse": [
        ("model_spec", 2, ".tensorflow.serving.ModelSpec", None),
        ("outputs", 1, "map<string,.tensorflow.TensorProto>", None),
    ],
    # apis/prediction_log.proto
    "PredictLog": [
        ("request", 1, ".tensorflow.serving.PredictRequest", None),
        ("response", 2, ".tensorflow.serving.PredictResponse", None),
    ],
    "PredictionLog": [
        ("predict_log", 6, ".tensorflow.serving.PredictLog", "log_type"),
    ],
    # sources/storage_path/file_system_storage_path_source.proto (there nested in
    # FileSystemStoragePathSourceConfig; wire and text format only see field names).
    "ServableVersionPolicy": [
        ("latest", 100, ".tensorflow.serving.ServableVersionPolicy.Latest", "policy_choice"),
        ("all", 101, ".tensorflow.serving.ServableVersionPolicy.All", "policy_choice"),
        ("specific", 102, ".tensorflow.serving.ServableVersionPolicy.Specific", "policy_choice"),
    ],
    "ServableVersionPolicy.Latest": [("num_versions", 1, "uint32", None)],
    "ServableVersionPolicy.All": [],
    "ServableVersionPolicy.Specific": [("versions", 1, "int64", "repeated")],
    # config/model_server_config.proto
    "ModelConfig": [
        ("name", 1, "string", None),
        ("base_path", 2, "string", None),
        ("model_platform", 4, "string", None),
        ("model_version_policy", 7, ".tensorflow.serving.ServableVersionPolicy", None),
        ("version_labels", 8, "map<string,int64>", None),
    ],
    "ModelConfigList": [("config", 1, ".tensorflow.serving.ModelConfig", "repeated")],
    "ModelServerConfig": [
        ("model_config_list", 1, ".tensorflow.serving.ModelConfigList", "config"),
    ],
    # servables/tensorflow/session_bundle_config.proto
    "BatchingParameters": [
        ("max_batch_size", 1, ".google.protobuf.Int64Value", None),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", None),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", None),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value", None),
        ("thread_pool_name", 5, ".google.protobuf.StringValue", None),
        ("allowed_batch_sizes", 6, "int64", "repeated"),
        ("pad_variable_length_inputs", 7, "bool", None),
    ],
    # config/monitoring_config.proto
    "PrometheusConfig": [("enable", 1, "bool", None), ("path", 2, "string", None)],
    "MonitoringConfig": [
        ("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig", None),
    ],
}


def _add_field(message, name, number, type_, label_or_oneof, oneofs):
    field = message.field.add(name=name, number=number, json_name=name)
    field.label = _F.LABEL_REPEATED if label_or_oneof == "repeated" else _F.LABEL_OPTIONAL
    if label_or_oneof not in (None, "repeated"):
        if label_or_oneof not in oneofs:
            oneofs.append(label_or_oneof)
            message.oneof_decl.add(name=label_or_oneof)
        field.oneof_index = oneofs.index(label_or_oneof)
    if type_.startswith("map<"):
        key_type, value_type = type_[4:-1].split(",")
        entry = message.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
        entry.options.map_entry = True
        _add_field(entry, "key", 1, key_type, None, [])
        _add_field(entry, "value", 2, value_type, None, [])
        field.label = _F.LABEL_REPEATED
        field.type = _F.TYPE_MESSAGE
        field.type_name = entry.name  # resolved relative to the enclosing message
    elif type_.startswith("."):
        field.type = _F.TYPE_MESSAGE
        field.type_name = type_
    else:
        field.type = _SCALAR_TYPES[type_]


def _copy_file_with_dependencies(pool, file_descriptor, done):
    for dependency in file_descriptor.dependencies:
        _copy_file_with_dependencies(pool, dependency, done)
    if file_descriptor.name not in done:
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        pool.Add(proto)
        done.add(file_descriptor.name)


def _build_pool():
    pool = descriptor_pool.DescriptorPool()
    done: set[str] = set()
    _copy_file_with_dependencies(pool, tensor_pb2.DESCRIPTOR, done)
    _copy_file_with_dependencies(pool, wrappers_pb2.DESCRIPTOR, done)
    serving = descriptor_pb2.FileDescriptorProto(
        name="deeplense_tf/tensorflow_serving_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[tensor_pb2.DESCRIPTOR.name, wrappers_pb2.DESCRIPTOR.name],
    )
    messages = {}
    for name, fields in _SERVING_MESSAGES.items():
        parent, _, nested = name.rpartition(".")
        container = messages[parent].nested_type if parent else serving.message_type
        message = messages[name] = container.add(name=nested)
        oneofs: list[str] = []
        for field in fields:
            _add_field(message, *field, oneofs)
    pool.Add(serving)
    return pool


_POOL = _build_pool()


def message_class(name: str):
    """The message class for ``tensorflow.serving.<name>`` (or ``tensorflow.<name>``)."""
    full_name = name if name.startswith("tensorflow.") else f"tensorflow.serving.{name}"
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


ModelSpec = message_class("ModelSpec")
PredictRequest = message_class("PredictRequest")
PredictResponse = message_class("PredictResponse")
PredictLog = message_class("PredictLog")
PredictionLog = message_class("PredictionLog")
ModelServerConfig = message_class("ModelServerConfig")
BatchingParameters = message_class("BatchingParameters")
MonitoringConfig = message_class("MonitoringConfig")


def parse_text_config(message_name: str, text: str):
    """Parses a TF Serving text-format config (models.config, batching, monitoring)."""
    return text_format.Parse(text, message_class(message_name)())


def predict_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray],
    signature_name: str = "serving_default",
    version: int | None = None,
):
    """A ``tensorflow.serving.PredictRequest`` holding ``inputs`` as TensorProtos."""
    request = PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for key, value in inputs.items():
        # Round-trip through bytes: TensorFlow's TensorProto class and this pool's are
        # the same message but different Python classes.
        request.inputs[key].ParseFromString(tf.make_tensor_proto(value).SerializeToString())
    return request


def request_inputs(request) -> dict[str, np.ndarray]:
    """The input tensors of a PredictRequest as numpy arrays."""
    arrays = {}
    for key, proto in request.inputs.items():
        tf_proto = tensor_pb2.TensorProto.FromString(proto.SerializeToString())
        arrays[key] = tf.make_ndarray(tf_proto)
    return arrays


def write_warmup_file(path: str, requests: Iterable) -> int:
    """Writes PredictRequests as TF Serving warm-up records (TFRecord of PredictionLog)."""
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
            count += 1
    if count > MAX_WARMUP_RECORDS:
        raise ValueError(f"TF Serving replays at most {MAX_WARMUP_RECORDS} warm-up records, got {count}")
    return count


def read_warmup_file(path: str) -> list:
    """The PredictionLog records of a warm-up file (empty when it does not exist)."""
    if not tf.io.gfile.exists(path):
        return []
    logs = []
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
        logs.append(PredictionLog.FromString(record.numpy()))
    return logs
