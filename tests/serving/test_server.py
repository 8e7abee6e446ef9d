"""The local TF-Serving-compatible REST server, over real sockets on 127.0.0.1 (port 0)."""

import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from deeplense_tf.export import export_saved_model
from deeplense_tf.serving.repository import ModelRepository, VersionPolicy, repositories_from_config
from deeplense_tf.serving.server import ModelServer


def call(server, method, path, body=None, headers=None, connection=None):
    """(status, headers, parsed JSON) of one request."""
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
    finally:
        if own:
            connection.close()
    return response.status, dict(response.getheaders()), json.loads(payload)


@pytest.fixture(scope="module")
def server(exported, contract):
    base = os.path.join(exported[0], contract.MODEL_NAME)
    repository = ModelRepository(contract.MODEL_NAME, base, version_labels={"stable": 1, "canary": 2})
    with ModelServer([repository], port=0, poll_interval_s=0) as running:
        yield running


def test_binds_loopback_on_a_free_port(server):
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0


def test_predict_row_and_columnar_match_the_keras_model(server, keras_model, contract):
    images = contract.images(3, seed=1)
    expected = {k: np.asarray(v) for k, v in keras_model(images, training=False).items()}
    path = f"/v1/models/{contract.MODEL_NAME}:predict"
    status, headers, row = call(server, "POST", path, {"instances": images.tolist()})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert len(row["predictions"]) == 3
    for i, prediction in enumerate(row["predictions"]):
        assert sorted(prediction) == ["log10_m_axion", "log10_m_axion_std"]
        for name, value in prediction.items():
            np.testing.assert_allclose(value, expected[name][i], rtol=1e-5, atol=1e-6)
    status, _, columnar = call(server, "POST", path, {"inputs": {"image": images.tolist()}, "signature_name": "serving_default"})
    assert status == 200
    for name, values in columnar["outputs"].items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-5, atol=1e-6)


def test_version_and_label_routes(server, contract):
    body = {"instances": contract.images(1).tolist()}
    name = contract.MODEL_NAME
    assert call(server, "POST", f"/v1/models/{name}/versions/1:predict", body)[0] == 200
    assert call(server, "POST", f"/v1/models/{name}/labels/stable:predict", body)[0] == 200
    status, _, error = call(server, "POST", f"/v1/models/{name}/labels/canary:predict", body)
    assert (status, error) == (404, {"error": f"Servable not found for request: Specific({name}, 2)"})


def test_status_and_metadata(server, contract):
    name = contract.MODEL_NAME
    available = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    status, _, document = call(server, "GET", f"/v1/models/{name}")
    assert (status, document) == (200, {"model_version_status": [available]})
    assert call(server, "GET", f"/v1/models/{name}/versions/1")[2] == {"model_version_status": [available]}
    assert call(server, "GET", f"/v1/models/{name}/labels/stable")[2] == {"model_version_status": [available]}
    status, _, metadata = call(server, "GET", f"/v1/models/{name}/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": name, "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    image = signature["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "64", "64", "1"]
    assert sorted(signature["outputs"]) == ["log10_m_axion", "log10_m_axion_std"]


def _bad_requests(name):
    image = np.zeros((1, 64, 64, 1)).tolist()
    return [
        ("POST", "/v1/models/other:predict", {"instances": image}, 404, "Servable not found for request: Latest(other)"),
        ("POST", f"/v1/models/{name}/versions/9:predict", {"instances": image}, 404, f"Specific({name}, 9)"),
        ("POST", f"/v1/models/{name}/labels/nope:predict", {"instances": image}, 400, "Unrecognized servable version label: nope"),
        ("POST", f"/v1/models/{name}:predict", {"instances": image, "signature_name": "x"}, 400, '"x" not found in signature def'),
        ("POST", f"/v1/models/{name}:predict", b"{not json", 400, "JSON Parse error"),
        ("POST", f"/v1/models/{name}:predict", {"instances": image, "inputs": image}, 400, "only one of 'inputs' or 'instances'"),
        ("POST", f"/v1/models/{name}:predict", {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
        ("POST", f"/v1/models/{name}:predict", {"inputs": {"pixels": image}}, 400, "unknown input names ['pixels']"),
        ("POST", f"/v1/models/{name}:predict", {"instances": np.zeros((1, 32, 32, 1)).tolist()}, 400, "expects [-1,64,64,1]"),
        ("POST", f"/v1/models/{name}:predict", {"instances": [[["0.5"] * 64] * 64]}, 400, "is not of expected type: float"),
        ("POST", f"/v1/models/{name}:predict", b'{"instances": [[[NaN]]]}', 400, "input 'image'"),
        ("POST", f"/v1/models/{name}:predict", {"instances": []}, 400, "No values in 'instances' array"),
        ("POST", f"/v1/models/{name}:classify", {"examples": []}, 400, "Expected classify signature"),
        ("GET", "/v1/models/other", None, 404, "Could not find any versions of model other"),
        ("GET", f"/v1/models/{name}/versions/9", None, 404, f"Could not find version 9 of model {name}"),
        ("GET", "/v1/models/other/metadata", None, 404, "Latest(other)"),
        ("GET", "/healthz", None, 404, "Malformed request"),
        ("DELETE", f"/v1/models/{name}", None, 400, "Malformed request: DELETE"),
    ]


def test_errors_carry_tf_serving_status_codes(server, contract):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for method, path, body, status, message in _bad_requests(contract.MODEL_NAME):
        got, _, document = call(server, method, path, body, connection=connection)  # kept alive
        assert (got, message in document.get("error", "")) == (status, True), (method, path, document)
    connection.close()


def test_oversized_bodies_get_413_and_the_server_keeps_serving(exported, contract):
    base = os.path.join(exported[0], contract.MODEL_NAME)
    with ModelServer([ModelRepository("m", base)], port=0, poll_interval_s=0, max_body_bytes=100_000) as small:
        big = json.dumps({"instances": contract.images(2).tolist()}).encode()
        assert len(big) > 100_000
        status, headers, document = call(small, "POST", "/v1/models/m:predict", big)
        assert status == 413 and "exceeds the limit of 100000 bytes" in document["error"]
        assert headers.get("Connection") == "close"

        def chunks():
            for start in range(0, len(big), 8192):
                yield big[start:start + 8192]

        # http.client sends an iterable body chunked (no Content-Length).
        status, _, document = call(small, "POST", "/v1/models/m:predict", chunks())
        assert status == 413
        # A body announced too large is refused before it is sent (Expect: 100-continue).
        connection = http.client.HTTPConnection("127.0.0.1", small.port, timeout=60)
        connection.putrequest("POST", "/v1/models/m:predict")
        connection.putheader("Content-Length", str(10**9))
        connection.putheader("Expect", "100-continue")
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["error"]
        connection.close()
        small_body = {"instances": contract.images(1).tolist()}
        assert call(small, "POST", "/v1/models/m:predict", small_body)[0] == 200
        chunked_ok = json.dumps(small_body).encode()
        status, _, _ = call(small, "POST", "/v1/models/m:predict", iter([chunked_ok[:100], chunked_ok[100:]]))
        assert status == 200


def _malformed_bodies(valid: bytes, count: int, rng: random.Random):
    junk_values = ["null", "true", '"x"', "{}", "[]", "-", "1e999", "NaN", '{"b64": "AA=="}', "[[[[", "0x10"]
    for i in range(count):
        kind = i % 6
        if kind == 0:  # truncated
            yield valid[: rng.randrange(len(valid))]
        elif kind == 1:  # a few bytes overwritten
            body = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.choice(b'[]{},:"-.e0x \x00\xff')
            yield bytes(body)
        elif kind == 2:  # a value replaced by one of another type
            text = valid.decode()
            at = text.index("0.", rng.randrange(20, len(text) - 200))
            end = text.index("]", at)
            yield (text[:at] + rng.choice(junk_values) + text[end:]).encode()
        elif kind == 3:  # random JSON documents
            yield json.dumps(rng.choice([
                {"instances": rng.choice(junk_values)}, {"inputs": {"image": [[1.0] * rng.randint(0, 5)]}},
                {"instances": [[[[rng.random()]] * 64] * 64] * 2, "inputs": []}, [1, 2], "instances", 3.5,
                {"instances": [{"image": []}]}, {"signature_name": ["serving_default"], "instances": [1]},
            ])).encode()
        elif kind == 4:  # random bytes
            yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        else:  # deep or ragged nesting
            depth = rng.randint(3, 2000)
            yield b'{"inputs": ' + b"[" * depth + b"1" + b"]" * rng.randint(0, depth) + b"}"


def test_hundreds_of_malformed_bodies_then_a_valid_request(server, contract):
    rng = random.Random(4)
    valid = json.dumps({"instances": contract.images(1).round(3).tolist()}).encode()
    path = f"/v1/models/{contract.MODEL_NAME}:predict"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    statuses = []
    for body in _malformed_bodies(valid, 300, rng):
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        document = json.loads(response.read())
        statuses.append(response.status)
        assert response.status in (200, 400), (response.status, document, body[:200])
        if response.status == 400:
            assert document["error"]
        if response.will_close:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    assert statuses.count(400) > 250  # the few 200s are mutations that stayed valid
    status, _, document = call(server, "POST", path, valid)
    assert status == 200 and len(document["predictions"]) == 1


def test_concurrent_clients_get_their_own_answers(server, keras_model, contract):
    path = f"/v1/models/{contract.MODEL_NAME}:predict"
    results, errors = {}, []

    def client(index):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            for j in range(4):
                images = contract.images(1 + (index + j) % 3, seed=100 * index + j)
                status, _, document = call(server, "POST", path, {"inputs": images.tolist()}, connection=connection)
                assert status == 200, document
                results[(index, j)] = (images, document["outputs"])
            connection.close()
        except Exception as error:  # surfaced in the main thread
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 32
    for images, outputs in results.values():
        expected = keras_model(images, training=False)
        for name, values in outputs.items():
            np.testing.assert_allclose(values, np.asarray(expected[name]), rtol=1e-5, atol=1e-6)


def test_keep_alive_reuses_one_connection(server, contract):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"instances": contract.images(1).tolist()}
    call(server, "POST", f"/v1/models/{contract.MODEL_NAME}:predict", body, connection=connection)
    sock = connection.sock
    for _ in range(3):
        status, _, _ = call(server, "POST", f"/v1/models/{contract.MODEL_NAME}:predict", body, connection=connection)
        assert status == 200 and connection.sock is sock
    connection.close()


def test_new_version_is_swapped_in_without_dropping_requests(tmp_path, contract):
    base = str(tmp_path / "exports")
    first = contract.build_model(seed=1)
    second = contract.build_model(seed=2)
    export_saved_model(first, base, "m", warmup_batch_sizes=(1,))
    images = contract.images(1, seed=7)
    expected = {1: np.asarray(first(images)["log10_m_axion"]), 2: np.asarray(second(images)["log10_m_axion"])}
    body = json.dumps({"inputs": images.tolist()}).encode()
    answers, failures, stop = [], [], threading.Event()
    with ModelServer([ModelRepository("m", os.path.join(base, "m"))], port=0, poll_interval_s=0.2) as server:

        def hammer():
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            while not stop.is_set():
                status, _, document = call(server, "POST", "/v1/models/m:predict", body, connection=connection)
                if status != 200:
                    failures.append(document)
                else:
                    answers.append(document["outputs"]["log10_m_axion"][0])
            connection.close()

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.3)
        export_saved_model(second, base, "m", warmup_batch_sizes=(1,))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            versions = call(server, "GET", "/v1/models/m")[2]["model_version_status"]
            if versions[0]["version"] == "2" and versions[0]["state"] == "AVAILABLE":
                break
            time.sleep(0.1)
        time.sleep(0.3)
        stop.set()
        thread.join(timeout=60)
        status = call(server, "GET", "/v1/models/m")[2]["model_version_status"]
    assert failures == []
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "END")]
    served = {1 if np.isclose(a, expected[1][0], rtol=1e-5) else 2 if np.isclose(a, expected[2][0], rtol=1e-5) else None for a in answers}
    assert served == {1, 2}
    assert np.isclose(answers[-1], expected[2][0], rtol=1e-5)


def test_broken_version_does_not_replace_the_served_one(tmp_path, exported, contract):
    base = str(tmp_path / "m")
    shutil.copytree(exported[1], os.path.join(base, "1"))
    os.makedirs(os.path.join(base, "2"))
    with open(os.path.join(base, "2", "saved_model.pb"), "wb") as stream:
        stream.write(b"not a saved model")
    with ModelServer([ModelRepository("m", base)], port=0, poll_interval_s=0) as server:
        rows = call(server, "GET", "/v1/models/m")[2]["model_version_status"]
        assert [(r["version"], r["state"]) for r in rows] == [("2", "END"), ("1", "AVAILABLE")]
        assert rows[0]["status"]["error_code"] == "UNKNOWN" and rows[0]["status"]["error_message"]
        assert call(server, "POST", "/v1/models/m:predict", {"instances": contract.images(1).tolist()})[0] == 200


def test_models_config_file_with_policy_and_labels(tmp_path, exported, contract):
    base = tmp_path / "exports" / "m"
    for version in (1, 2):
        shutil.copytree(exported[1], str(base / str(version)))
    config = """
    model_config_list {
      config {
        name: "m"  base_path: "exports/m"  model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }"""
    (repository,) = repositories_from_config(config, str(tmp_path), warm_up=False)
    assert repository.version_policy == VersionPolicy("specific", versions=(1, 2))
    with ModelServer([repository], port=0, poll_interval_s=0) as server:
        rows = call(server, "GET", "/v1/models/m")[2]["model_version_status"]
        assert [(r["version"], r["state"]) for r in rows] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
        body = {"instances": contract.images(1).tolist()}
        for label in ("stable", "canary"):
            assert call(server, "POST", f"/v1/models/m/labels/{label}:predict", body)[0] == 200


@pytest.mark.slow
def test_command_lines_serve_and_client(exported, contract):
    base = os.path.join(exported[0], contract.MODEL_NAME)
    process = subprocess.Popen(
        [sys.executable, "-m", "deeplense_tf.serve", f"--model_base_path={base}",
         f"--model_name={contract.MODEL_NAME}", "--rest_api_port=0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", f"/v1/models/{contract.MODEL_NAME}")
        assert connection.getresponse().status == 200
        connection.close()
        # The client's command line on the sample request body (the README's flow).
        sample = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "serving", "sample_request.json")
        client = subprocess.run(
            [sys.executable, "-m", "deeplense_tf.serving_client", f"--server=127.0.0.1:{port}",
             f"--model_name={contract.MODEL_NAME}", "--wait_seconds=30", "predict", sample],
            capture_output=True, text=True, timeout=120,
        )
        assert client.returncode == 0, client.stderr[-2000:]
        answer = json.loads(client.stdout)
        assert sorted(answer) == ["log10_m_axion", "log10_m_axion_std"] and len(answer["log10_m_axion"]) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
