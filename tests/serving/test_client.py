"""deeplense_tf.serving.client against the local server; the serving/ config files."""

import json
import os

import numpy as np
import pytest

from deeplense_tf.export import export_saved_model
from deeplense_tf.serving import client, protos
from deeplense_tf.serving.repository import ModelRepository
from deeplense_tf.serving.server import ModelServer

SERVING_DIR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "serving")


@pytest.fixture(scope="module")
def server(exported, contract):
    base = os.path.join(exported[0], contract.MODEL_NAME)
    with ModelServer([ModelRepository(contract.MODEL_NAME, base, version_labels={"stable": 1})], port=0, poll_interval_s=0) as running:
        yield running


def test_predict_returns_named_float32_arrays(server, keras_model, contract):
    images = contract.images(5, seed=3)
    expected = keras_model(images, training=False)
    for address in (server.url, server.url.replace("http://", "")):
        outputs = client.predict(address, contract.MODEL_NAME, images)
        assert sorted(outputs) == ["log10_m_axion", "log10_m_axion_std"]
        for name, values in outputs.items():
            assert values.dtype == np.float32 and values.shape == (5,)
            np.testing.assert_allclose(values, np.asarray(expected[name]), rtol=1e-5, atol=1e-6)


def test_predict_routes_and_splits_batches(server, keras_model, contract):
    images = contract.images(5, seed=4)
    split = client.predict(server.url, contract.MODEL_NAME, images, max_batch_size=2)
    whole = client.predict(server.url, contract.MODEL_NAME, images, version=1, signature_name="serving_default")
    by_label = client.predict(server.url, contract.MODEL_NAME, images[0], label="stable")  # one (H, W, 1) image
    for name in whole:  # batch size changes the float rounding a little (oneDNN)
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(by_label[name], whole[name][:1], rtol=1e-5, atol=1e-6)


def test_status_metadata_and_errors(server, contract):
    status = client.model_status(server.url, contract.MODEL_NAME)
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = client.model_metadata(server.url, contract.MODEL_NAME, version=1)
    assert "serving_default" in metadata["metadata"]["signature_def"]["signature_def"]
    with pytest.raises(client.ServingClientError) as raised:
        client.predict(server.url, "unknown", contract.images(1))
    assert raised.value.status == 404 and "Latest(unknown)" in raised.value.message
    with pytest.raises(client.ServingClientError) as raised:
        client.predict(server.url, contract.MODEL_NAME, contract.images(1, image_size=32))
    assert raised.value.status == 400 and "expects [-1,64,64,1]" in raised.value.message


def test_images_are_checked_before_sending(server, contract):
    images = contract.images(2)
    images[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        client.predict(server.url, contract.MODEL_NAME, images)
    with pytest.raises(ValueError, match="shape"):
        client.predict(server.url, contract.MODEL_NAME, np.zeros((2, 64, 64)))


def test_single_output_model_gets_its_name_from_metadata(tmp_path, contract):
    model = contract.build_model(outputs=("log10_m_axion",))
    export_saved_model(model, str(tmp_path), "single", warmup_batch_sizes=())
    with ModelServer([ModelRepository("single", str(tmp_path / "single"))], port=0, poll_interval_s=0) as server:
        outputs = client.predict(server.url, "single", contract.images(2))
    assert list(outputs) == ["log10_m_axion"] and outputs["log10_m_axion"].shape == (2,)


def test_image_encoding_is_lossless_json(contract):
    images = contract.images(2) * np.float32(1e4) - np.float32(3.0)
    images[0, 0, 0, 0] = np.float32(1e-30)
    decoded = np.array(json.loads(client.encode_images(images)), dtype=np.float32)
    np.testing.assert_array_equal(decoded, images)


def test_encoding_gives_back_every_float32_bit_for_bit():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = values[np.isfinite(values)]  # every exponent, subnormals, both signs
    extremes = [0.0, -0.0, 1.0, -1.0, 10.0, 1e9, 123456789.0, 0.1, 1e-45, -1e-45]
    values = np.concatenate([np.float32(extremes), np.finfo(np.float32).max * np.float32([1, -1]),
                             np.finfo(np.float32).tiny * np.float32([1, -1]), values])
    decoded = np.array(json.loads(client.encode_images(values)), dtype=np.float32)
    np.testing.assert_array_equal(decoded.view(np.uint32), values.view(np.uint32))  # -0.0 too


@pytest.mark.parametrize("shape", [(1,), (3,), (2, 1), (1, 3, 2), (2, 3, 4, 1), (2, 1, 1, 2, 1)])
def test_encoding_is_a_json_array_of_the_shape_in_a_fixed_width_layout(shape):
    values = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    text = client.encode_images(values)
    np.testing.assert_array_equal(np.array(json.loads(text), dtype=np.float32), values)
    width = 2 * len(shape) + client.NUMBER_WIDTH + 1
    assert len(text) == values.size * width
    assert text.startswith(b"[" * len(shape)) and text.rstrip().endswith(b"]" * len(shape))


def test_encoding_refuses_what_json_cannot_hold():
    with pytest.raises(ValueError, match="NaN or infinite"):
        client.encode_images(np.float32([1.0, np.inf]))
    with pytest.raises(ValueError, match="non-empty"):
        client.encode_images(np.zeros((0, 2), np.float32))


@pytest.mark.parametrize(
    "name, message_name",
    [
        ("models.config", "ModelServerConfig"),
        ("batching_parameters.txt", "BatchingParameters"),
        ("monitoring.config", "MonitoringConfig"),
    ],
)
def test_serving_config_files_parse_as_tf_serving_protos(name, message_name):
    with open(os.path.join(SERVING_DIR, name)) as stream:
        config = protos.parse_text_config(message_name, stream.read())
    if message_name == "ModelServerConfig":
        (model,) = config.model_config_list.config
        assert model.name == "deeplense_axion" and model.base_path == "/models/deeplense_axion"
    elif message_name == "BatchingParameters":
        assert config.max_batch_size.value == 64
    else:
        assert config.prometheus_config.enable


def test_sample_request_is_served(server):
    with open(os.path.join(SERVING_DIR, "sample_request.json"), "rb") as stream:
        body = stream.read()
    document = client._request(server.url, "POST", "/v1/models/deeplense_axion:predict", body, 30.0)
    (prediction,) = document["predictions"]
    assert sorted(prediction) == ["log10_m_axion", "log10_m_axion_std"]


def test_wait_until_available_and_load_images(server, contract, tmp_path):
    status = client.wait_until_available(server.url, contract.MODEL_NAME, timeout_s=5)
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    with pytest.raises(TimeoutError):
        client.wait_until_available(server.url, "unknown", timeout_s=0.3)
    images = client.load_images(os.path.join(SERVING_DIR, "sample_request.json"))
    assert images.shape == (1, 64, 64, 1) and images.dtype == np.float32
    columnar = tmp_path / "columnar.json"
    columnar.write_text(json.dumps({"inputs": {"image": images.tolist()}}))
    np.testing.assert_array_equal(client.load_images(str(columnar)), images)
