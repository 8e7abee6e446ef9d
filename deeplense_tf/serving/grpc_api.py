"""TF Serving's gRPC ``PredictionService.Predict`` over the same model repositories.

The method is registered under its TF Serving name
(``/tensorflow.serving.PredictionService/Predict``) with this package's wire-compatible
PredictRequest/PredictResponse, so the stock ``PredictionServiceStub`` of
tensorflow-serving-api calls it unchanged. Errors carry TF Serving's gRPC status codes
(INVALID_ARGUMENT, NOT_FOUND, ...). Only Predict is served: no GetModelMetadata,
Classify, Regress or ModelService.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable

import grpc
import numpy as np
import tensorflow as tf

from deeplense_tf.serving import protocol, protos

SERVICE = "tensorflow.serving.PredictionService"


def _predict(get_repository: Callable, request, context):
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label or None
    try:
        servable = get_repository(spec.name).get(version, label)
        signature = spec.signature_name or "serving_default"
        specs = servable.inputs_of(signature)
        inputs = protos.request_inputs(request)
        unknown, missing = sorted(set(inputs) - set(specs)), sorted(set(specs) - set(inputs))
        if unknown or missing:
            raise protocol.InvalidArgument(
                f"input names {sorted(inputs)} do not match signature '{signature}' inputs {sorted(specs)}"
            )
        for name, array in inputs.items():
            if array.dtype != specs[name].dtype:
                raise protocol.InvalidArgument(
                    f"input '{name}' is {array.dtype.name}, signature '{signature}' expects {specs[name].dtype.name}"
                )
            protocol.check_input(name, array, specs[name], signature)
        outputs = servable.predict(signature, inputs)
        wanted = list(request.output_filter) or sorted(outputs)
        missing_outputs = sorted(set(wanted) - set(outputs))
        if missing_outputs:
            raise protocol.InvalidArgument(f"output_filter names unknown outputs {missing_outputs}")
    except protocol.ServingError as error:
        context.abort(getattr(grpc.StatusCode, error.code), str(error))
    response = protos.PredictResponse()
    response.model_spec.name = spec.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature
    for name in wanted:
        value = np.asarray(outputs[name])
        response.outputs[name].ParseFromString(tf.make_tensor_proto(value).SerializeToString())
    return response


def start_grpc_server(get_repository: Callable, host: str, port: int, max_message_bytes: int, workers: int = 16):
    """Starts a gRPC server with PredictionService/Predict; returns (server, bound port)."""
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: _predict(get_repository, request, context),
        request_deserializer=protos.PredictRequest.FromString,
        response_serializer=protos.PredictResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Predict": handler}),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"could not bind gRPC on {address}")
    server.start()
    return server, bound
