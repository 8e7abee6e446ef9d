"""gRPC PredictionService/Predict, called as the stock tensorflow-serving-api stub calls it."""

import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from deeplense_tf.serving import protos
from deeplense_tf.serving.repository import ModelRepository
from deeplense_tf.serving.server import ModelServer


@pytest.fixture(scope="module")
def predict(exported, contract):
    base = os.path.join(exported[0], contract.MODEL_NAME)
    repository = ModelRepository(contract.MODEL_NAME, base, version_labels={"stable": 1})
    with ModelServer([repository], port=0, poll_interval_s=0, grpc_port=0) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            # What PredictionServiceStub.Predict is: a unary call on this path.
            yield channel.unary_unary(
                "/tensorflow.serving.PredictionService/Predict",
                request_serializer=protos.PredictRequest.SerializeToString,
                response_deserializer=protos.PredictResponse.FromString,
            )


def _outputs(response):
    return {k: tf.make_ndarray(tensor_pb2.TensorProto.FromString(v.SerializeToString())) for k, v in response.outputs.items()}


def test_predict_matches_the_keras_model(predict, keras_model, contract):
    images = contract.images(3, seed=5)
    response = predict(protos.predict_request(contract.MODEL_NAME, {"image": images}), timeout=60)
    assert response.model_spec.name == contract.MODEL_NAME and response.model_spec.version.value == 1
    expected = keras_model(images, training=False)
    outputs = _outputs(response)
    assert sorted(outputs) == ["log10_m_axion", "log10_m_axion_std"]
    for name, value in outputs.items():
        np.testing.assert_allclose(value, np.asarray(expected[name]), rtol=1e-5, atol=1e-6)
    request = protos.predict_request(contract.MODEL_NAME, {"image": images})
    request.model_spec.version_label = "stable"
    request.output_filter.append("log10_m_axion")
    assert sorted(_outputs(predict(request, timeout=60))) == ["log10_m_axion"]


@pytest.mark.parametrize(
    "change, code",
    [
        (lambda r: setattr(r.model_spec, "name", "other"), grpc.StatusCode.NOT_FOUND),
        (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND),
        (lambda r: setattr(r.model_spec, "version_label", "nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r.model_spec, "signature_name", "x"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.inputs["image"].CopyFrom(protos.predict_request("m", {"image": np.zeros((1, 8, 8, 1), np.float32)}).inputs["image"]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.inputs["image"].CopyFrom(protos.predict_request("m", {"image": np.zeros((1, 64, 64, 1))}).inputs["image"]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.inputs["pixels"].CopyFrom(r.inputs["image"]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_errors_carry_tf_serving_codes(predict, contract, change, code):
    request = protos.predict_request(contract.MODEL_NAME, {"image": contract.images(1)})
    change(request)
    with pytest.raises(grpc.RpcError) as raised:
        predict(request, timeout=60)
    assert raised.value.code() == code and raised.value.details()
