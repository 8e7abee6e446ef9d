"""TF Serving's REST protocol without a server: routes, request parsing, response JSON."""

import json

import numpy as np
import pytest

from deeplense_tf.serving import protocol
from deeplense_tf.serving.protocol import InputSpec, InvalidArgument, NotFound, Route

SPECS = {"image": InputSpec(np.dtype("float32"), (None, 2, 2, 1))}


def specs_for(signature_name):
    if signature_name not in ("", "serving_default"):
        raise InvalidArgument(f'Serving signature name: "{signature_name}" not found in signature def')
    return SPECS


def parse(document):
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return protocol.parse_predict_request(body, specs_for)


IMAGE = [[[0.5], [1.0]], [[2.0], [-3.25]]]


@pytest.mark.parametrize(
    "method, target, route",
    [
        ("POST", "/v1/models/m:predict", Route("predict", "m")),
        ("POST", "/V1/Models/m:PREDICT", Route("predict", "m")),
        ("POST", "/v1/models/m/versions/3:predict", Route("predict", "m", version=3)),
        ("POST", "/v1/models/m/labels/stable:predict", Route("predict", "m", label="stable")),
        ("POST", "/v1/models/my%20model:predict?x=1", Route("predict", "my model")),
        ("POST", "/v1/models/m:regress", Route("regress", "m")),
        ("GET", "/v1/models/m", Route("status", "m")),
        ("GET", "/v1/models/m/versions/2", Route("status", "m", version=2)),
        ("GET", "/v1/models/m/labels/canary", Route("status", "m", label="canary")),
        ("GET", "/v1/models/m/metadata", Route("metadata", "m")),
        ("GET", "/v1/models/m/versions/2/metadata", Route("metadata", "m", version=2)),
    ],
)
def test_routes(method, target, route):
    assert protocol.parse_route(method, target) == route


@pytest.mark.parametrize(
    "method, target, error, status",
    [
        ("GET", "/", "Malformed request: GET /", 404),
        ("POST", "/v2/models/m:predict", "Malformed request", 404),
        ("GET", "/v1/models/m:predict", "Malformed request: GET /v1/models/m:predict", 400),
        ("POST", "/v1/models/m", "Malformed request: POST /v1/models/m", 400),
        ("POST", "/v1/models/m/versions/x:predict", "Malformed request", 400),
        ("POST", "/v1/models/m/versions/99999999999999999999:predict", "Failed to convert version", 400),
        ("PUT", "/v1/models/m:predict", "Malformed request: PUT", 400),
        ("GET", "/v1/models", "Missing model name in request.", 400),
    ],
)
def test_bad_routes(method, target, error, status):
    with pytest.raises(protocol.ServingError, match=error) as raised:
        protocol.parse_route(method, target)
    assert raised.value.http_status == status


def test_row_and_columnar_requests():
    row = parse({"instances": [IMAGE, IMAGE]})
    assert row.row_format and row.signature_name == ""
    assert row.inputs["image"].dtype == np.float32 and row.inputs["image"].shape == (2, 2, 2, 1)
    np.testing.assert_array_equal(row.inputs["image"][0], np.array(IMAGE, np.float32))
    objects = parse({"instances": [{"image": IMAGE}], "signature_name": "serving_default"})
    assert objects.signature_name == "serving_default" and objects.inputs["image"].shape == (1, 2, 2, 1)
    columnar = parse({"inputs": {"image": [IMAGE]}})
    assert not columnar.row_format and columnar.inputs["image"].shape == (1, 2, 2, 1)
    bare = parse({"inputs": [IMAGE, IMAGE, IMAGE]})
    assert bare.inputs["image"].shape == (3, 2, 2, 1)
    integers = parse({"instances": [[[[1], [2]], [[3], [4]]]]})
    assert integers.inputs["image"].dtype == np.float32


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"{", "JSON Parse error"),
        (b"\xff\xfe", "JSON Parse error"),
        (b"[1, 2]", "Is not object"),
        ({"signature_name": 3, "instances": [IMAGE]}, "'signature_name' key must be a string value"),
        ({"signature_name": "other", "instances": [IMAGE]}, 'Serving signature name: "other" not found'),
        ({}, "Missing 'inputs' or 'instances' key"),
        ({"instances": [IMAGE], "inputs": [IMAGE]}, "expecting only one of 'inputs' or 'instances'"),
        ({"instances": IMAGE[0][0][0]}, "Excepting 'instances' to be an list/array"),
        ({"instances": []}, "No values in 'instances' array"),
        ({"inputs": []}, "input 'image' has an empty batch"),
        ({"inputs": {"image": []}}, "input 'image' has an empty batch"),
        ({"inputs": {"pixels": [IMAGE]}}, "unknown input names ['pixels']"),
        ({"inputs": {}}, "Missing named input: image"),
        ({"instances": [{"pixels": IMAGE}]}, "keys must be equal to: image"),
        ({"instances": [IMAGE, {"image": IMAGE}]}, "Expecting value/list but got object at item 1"),
        ({"instances": [[[[0.5], [1.0]]]]}, "has shape [1,1,2,1], but signature 'serving_default' expects [-1,2,2,1]"),
        ({"instances": [IMAGE, [[[0.5]]]]}, "Failed to process element: 1 of 'instances' list"),
        ({"instances": [[[[0.5], [1.0]], [[2.0]]]]}, "element: 0 of 'instances' list. Error: Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        ({"instances": [[[["a"], [1.0]], [[2.0], [3.0]]]]}, 'JSON Value: "a" Type: String is not of expected type: float'),
        ({"instances": [[[[True], [1.0]], [[2.0], [3.0]]]]}, "JSON Value: true Type: True is not of expected type: float"),
        ({"instances": [[[[None], [1.0]], [[2.0], [3.0]]]]}, "Type: Null is not of expected type: float"),
        ({"instances": [[[[{}], [1.0]], [[2.0], [3.0]]]]}, "Type: Object is not of expected type: float"),
        ({"instances": [[[[1e39], [1.0]], [[2.0], [3.0]]]]}, "to float without loss of precision"),
        ({"instances": [[[[16777217], [1.0]], [[2.0], [3.0]]]]}, "Cannot convert JSON value: 16777217 to float"),
        (b'{"instances": [[[[NaN], [1.0]], [[2.0], [3.0]]]]}', "NaN or infinite values (first at index [0, 0, 0, 0])"),
        (b'{"instances": [[[[1.0], [1.0]], [[2.0], [-Infinity]]]]}', "NaN or infinite values"),
        (b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON"),
    ],
)
def test_bad_requests_name_the_problem(body, message):
    with pytest.raises(InvalidArgument) as raised:
        parse(body)
    assert message in str(raised.value)
    assert raised.value.http_status == 400


def test_unknown_model_is_404_after_json_is_parsed():
    def missing(signature_name):
        raise NotFound("Servable not found for request: Latest(x)")

    with pytest.raises(InvalidArgument, match="JSON Parse error"):
        protocol.parse_predict_request(b"{", missing)
    with pytest.raises(NotFound):
        protocol.parse_predict_request(b'{"instances": [1]}', missing)


def test_row_response_has_one_object_per_instance():
    outputs = {"log10_m_axion": np.array([-22.5, -23.0], np.float32), "log10_m_axion_std": np.array([0.1, 0.25], np.float32)}
    document = json.loads(protocol.format_predict_response(outputs, row_format=True))
    assert document == {"predictions": [
        {"log10_m_axion": -22.5, "log10_m_axion_std": 0.1},
        {"log10_m_axion": -23.0, "log10_m_axion_std": 0.25},
    ]}
    single = json.loads(protocol.format_predict_response({"y": np.array([1.5, 2.0], np.float32)}, row_format=True))
    assert single == {"predictions": [1.5, 2.0]}  # one output: bare values, name dropped
    nested = json.loads(protocol.format_predict_response({"y": np.arange(4, dtype=np.float32).reshape(2, 2)}, row_format=True))
    assert nested == {"predictions": [[0.0, 1.0], [2.0, 3.0]]}


def test_columnar_response_is_keyed_by_output():
    outputs = {"b": np.array([1.0, 2.0], np.float32), "a": np.array([3, 4], np.int32)}
    assert json.loads(protocol.format_predict_response(outputs, row_format=False)) == {"outputs": {"a": [3, 4], "b": [1.0, 2.0]}}
    single = json.loads(protocol.format_predict_response({"y": np.array([0.5], np.float32)}, row_format=False))
    assert single == {"outputs": [0.5]}


def test_floats_are_printed_like_tf_serving():
    values = np.array([0.1, 1.0, 1e-5, 123456792.0, 1 / 3, -0.0, np.nan, np.inf, -np.inf, 3e38], np.float32)
    text = protocol.format_predict_response({"y": values}, row_format=False).decode()
    # six significant digits when they give the float back, nine otherwise; "x.0" for
    # whole numbers; NaN and Infinity as rapidjson writes them.
    assert text == '{"outputs": [0.1, 1.0, 1e-05, 123456792.0, 0.333333343, -0.0, NaN, Infinity, -Infinity, 3e+38]}'
    parsed = json.loads(text)["outputs"]
    np.testing.assert_array_equal(np.array(parsed, np.float32), values)  # lossless


def test_status_and_metadata_documents():
    status = json.loads(protocol.format_model_status([(2, "AVAILABLE", "OK", ""), (1, "END", "OK", "")]))
    assert status["model_version_status"][0] == {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    metadata = json.loads(protocol.format_model_metadata("m", 2, {"signature_def": {"serving_default": {}}}))
    assert metadata == {
        "model_spec": {"name": "m", "signature_name": "", "version": "2"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {}}}},
    }
    assert json.loads(protocol.error_body('bad "x"')) == {"error": 'bad "x"'}


def test_fast_array_path_agrees_with_json_and_refuses_what_json_refuses():
    rng = np.random.default_rng(0)
    inner = (4, 4, 1)
    accepted = 0
    for trial in range(600):
        values = rng.standard_normal((int(rng.integers(1, 4)), *inner)) * 10.0 ** int(rng.integers(-6, 6))
        style = trial % 3
        if style == 0:
            text = json.dumps(values.tolist())  # ", " separators, 17 digits
        elif style == 1:
            text = json.dumps(values.astype(np.float32).tolist(), separators=(",", ":"))
        else:
            text = json.dumps(np.round(values).astype(int).tolist(), indent=1)  # newlines, integers
        data = bytearray(text.encode())
        mutated = trial % 2 == 1
        if mutated:
            for _ in range(int(rng.integers(1, 3))):
                data[int(rng.integers(len(data)))] = int(rng.choice(list(b"0123456789.eE+-,[] ")))
        data = bytes(data)
        fast = protocol._numeric_array(data, inner)
        try:
            reference = np.array(json.loads(data), dtype=np.float64)
        except ValueError:  # invalid JSON or ragged
            reference = None
        if fast is None:
            assert mutated, text[:200]  # every valid array of the right shape takes the fast path
            continue
        accepted += 1
        assert reference is not None, data[:200]
        np.testing.assert_array_equal(fast, reference)
    assert accepted > 300


def _json_array(data: bytes):
    try:
        return np.array(json.loads(data), dtype=np.float64)
    except ValueError:  # invalid JSON or ragged
        return None


def test_fixed_width_reader_takes_the_clients_layout_exactly():
    from deeplense_tf.serving import client

    rng = np.random.default_rng(3)
    for trial in range(300):
        inner = tuple(int(d) for d in rng.integers(1, 4, int(rng.integers(1, 4))))
        values = rng.standard_normal((int(rng.integers(1, 4)), *inner)) * 10.0 ** rng.uniform(-44, 38)
        values = values.astype(np.float32)
        if trial % 2:
            values.flat[0], values.flat[-1] = 0.0, -0.0
        text = client.encode_images(values)
        if trial % 3 == 0:
            text = text.rstrip()  # how the request parser cuts the array out of the body
        array = protocol._fixed_width_array(text, inner)
        assert array is not None
        # The value strtod gives (json reads numbers with it), sign of zero included.
        np.testing.assert_array_equal(array.view(np.int64), _json_array(text).view(np.int64))
        assert array.astype(np.float32).tobytes() == values.tobytes()


def test_fixed_width_reader_accepts_no_text_that_json_reads_differently():
    from deeplense_tf.serving import client

    rng = np.random.default_rng(4)
    accepted = refused = 0
    for trial in range(1500):
        inner = (2, int(rng.integers(1, 3)), 1)
        values = (rng.standard_normal((int(rng.integers(1, 3)), *inner)) * 10.0 ** rng.uniform(-30, 30)).astype(np.float32)
        values.flat[int(rng.integers(values.size))] = 0.0
        data = bytearray(client.encode_images(values))
        for _ in range(int(rng.integers(1, 3))):
            data[int(rng.integers(len(data)))] = int(rng.choice(list(b"0123456789.eE+-,[] ")))
        data = bytes(data)
        array = protocol._fixed_width_array(data, inner)
        reference = _json_array(data)
        if array is None:
            refused += 1
            continue
        accepted += 1  # e.g. a digit changed in place: still the layout, another number
        assert reference is not None and reference.shape == array.shape, data
        np.testing.assert_array_equal(array.view(np.int64), reference.view(np.int64))
    assert accepted > 100 and refused > 100


def test_fast_path_gives_the_same_request_as_the_exact_path():
    images = (np.random.default_rng(1).random((3, 2, 2, 1)) * 100).astype(np.float32)
    for body in (
        json.dumps({"instances": images.tolist()}),
        json.dumps({"inputs": {"image": images.tolist()}, "signature_name": "serving_default"}, indent=2),
        json.dumps({"inputs": images.tolist()}, separators=(",", ":")),
    ):
        padded = body.replace("[", "[ " * 1, 1) + " " * 600  # long enough for the fast path
        request = parse(padded.encode())
        np.testing.assert_array_equal(request.inputs["image"], images)
    specs = {"image": InputSpec(np.dtype("float32"), (None, 64, 64, 1))}
    big = np.random.default_rng(2).random((2, 64, 64, 1), dtype=np.float32)
    for text in (json.dumps({"instances": big.tolist()}), json.dumps({"inputs": {"image": big.tolist()}})):
        request = protocol.parse_predict_request(text.encode(), lambda _: specs)
        np.testing.assert_array_equal(request.inputs["image"], big)
    # An array cut out of the wrong place falls back to the exact parse and its message.
    with pytest.raises(InvalidArgument, match="'signature_name' key must be a string"):
        parse(json.dumps({"signature_name": list(range(300)), "instances": 1}).encode())
