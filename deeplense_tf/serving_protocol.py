"""TF Serving's REST protocol: routes, request JSON to arrays, arrays to response JSON, errors.

Follows tensorflow/serving's ``model_servers/http_rest_api_handler.cc``,
``http_rest_api_util.cc``, ``http_server.cc`` (status codes) and ``util/json_tensor.cc``
(the JSON tensor format), so that a client cannot tell this server from
``tensorflow_model_server`` on valid requests, and gets the same HTTP status (with a
message naming the problem) on invalid ones. Deliberate differences, all stricter:
non-finite inputs (NaN, Infinity), an empty batch and input names that the signature
does not have are refused with 400 (TF Serving passes the first two to the model and
ignores unknown names in ``inputs``), and input shapes are checked against the
signature before the model runs.

Pure numpy and the standard library: no TensorFlow here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import math
import re
import threading
import urllib.parse
from typing import Callable, Mapping

import numpy as np

_ECHO_LIMIT = 200  # characters of a request echoed back in an error message
_MAX_RANK = 32


class ServingError(Exception):
    """An error with TF Serving's status code and the HTTP status that code maps to."""

    code = "UNKNOWN"
    http_status = 500


class InvalidArgument(ServingError):
    code, http_status = "INVALID_ARGUMENT", 400


class NotFound(ServingError):
    code, http_status = "NOT_FOUND", 404


class FailedPrecondition(ServingError):
    code, http_status = "FAILED_PRECONDITION", 400


class PayloadTooLarge(ServingError):
    # libevent, under TF Serving's HTTP server, answers an oversized body with 413.
    code, http_status = "RESOURCE_EXHAUSTED", 413


class Unavailable(ServingError):
    code, http_status = "UNAVAILABLE", 503


class Internal(ServingError):
    code, http_status = "INTERNAL", 500


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


# --------------------------------------------------------------------------- routes

# The regular expressions of http_rest_api_util.cc (RE2 "(?i)" = case-insensitive).
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I
)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_MAX_INT64 = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class Route:
    """What a request asks for: ``verb`` is predict, classify, regress, status or metadata."""

    verb: str
    model_name: str
    version: int | None = None
    label: str | None = None


def parse_route(method: str, target: str) -> Route:
    """Maps an HTTP method and request target to a Route, as TF Serving does."""
    path = target.split("?", 1)[0]
    if not path.lower().startswith("/v1/"):
        raise NotFound(f"Malformed request: {method} {path}")
    match = None
    if method == "POST":
        match = _PREDICT_PATH.fullmatch(path)
    elif method == "GET":
        match = _STATUS_PATH.fullmatch(path)
    if match is None:
        raise InvalidArgument(f"Malformed request: {method} {path}")
    name, version, label, verb = match.groups()
    if method == "GET":
        verb = "metadata" if verb else "status"
        if not name:
            raise InvalidArgument("Missing model name in request.")
    if version is not None:
        if int(version) > _MAX_INT64:
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    return Route(verb.lower(), urllib.parse.unquote(name), version, urllib.parse.unquote(label) if label else None)


# ---------------------------------------------------------------- request parsing


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One signature input: numpy dtype and shape (None for unknown dimensions)."""

    dtype: np.dtype
    shape: tuple


@dataclasses.dataclass
class PredictRequest:
    signature_name: str  # "" when the request names none (the default signature)
    row_format: bool  # "instances" (row) or "inputs" (columnar)
    inputs: dict[str, np.ndarray]


def _echo(value) -> str:
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT] + "..."


def _json_type(value) -> str:
    # JsonTypeString() of json_tensor.cc
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _dtype_name(dtype: np.dtype) -> str:
    return {"float32": "float", "float64": "double"}.get(dtype.name, dtype.name)


def _dense_shape(value) -> list[int]:
    # GetDenseTensorShape(): follows the first element of each list.
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _exact_fill(value, dtype: np.dtype, shape: list[int], level: int, out: list) -> None:
    """FillTensorProto() of json_tensor.cc: walks the JSON value, same checks and messages."""
    if not isinstance(value, list):
        if level != len(shape):
            raise InvalidArgument(
                f"JSON Value: {_echo(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        kind = dtype.kind
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind in "iu" and isinstance(value, float)):
            raise InvalidArgument(
                f"JSON Value: {_echo(value)} Type: {_json_type(value)} is not of expected type: {_dtype_name(dtype)}"
            )
        if kind == "f" and math.isfinite(value):
            info = np.finfo(dtype)
            exact_int_limit = 2 ** (info.nmant + 1) - 1
            lossy = abs(value) > exact_int_limit if isinstance(value, int) else abs(value) > float(info.max)
            if lossy:
                raise InvalidArgument(
                    f"Cannot convert JSON value: {value} to {_dtype_name(dtype)} without loss of precision."
                )
        if kind in "iu":
            limits = np.iinfo(dtype)
            if not limits.min <= value <= limits.max:
                raise InvalidArgument(
                    f"JSON Value: {value} Type: Number is not of expected type: {_dtype_name(dtype)}"
                )
        out.append(value)
        return
    if level >= len(shape):
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _exact_fill(item, dtype, shape, level + 1, out)


def _to_array(value, dtype: np.dtype, may_hold_bools: bool) -> np.ndarray:
    """A JSON value (nested lists of numbers) as an array, with TF Serving's checks."""
    if not may_hold_bools:
        # Fast path: numpy builds rectangular numeric arrays in C. Anything it cannot
        # take as plainly numeric falls through to the exact walk for the message.
        try:
            array = np.array(value)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is not None and array.dtype.kind in "fi" and not (dtype.kind in "iu" and array.dtype.kind == "f"):
            if dtype.kind == "f":
                # Beyond the largest integer the float holds exactly, whether a JSON
                # integer loses precision needs the exact walk (numpy merged the types).
                finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
                if finite.size == 0 or np.abs(finite).max() <= 2 ** (np.finfo(dtype).nmant + 1) - 1:
                    return array.astype(dtype)
            else:
                limits = np.iinfo(dtype)
                if array.size == 0 or (array.min() >= limits.min and array.max() <= limits.max):
                    return array.astype(dtype)
    shape = _dense_shape(value)
    if len(shape) > _MAX_RANK:
        raise InvalidArgument(f"JSON lists nested {len(shape)} deep; a tensor has at most {_MAX_RANK} dimensions")
    flat: list = []
    _exact_fill(value, dtype, shape, 0, flat)
    return np.array(flat, dtype=dtype).reshape(shape)


def _format_shape(shape) -> str:
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


def check_input(name: str, array: np.ndarray, spec: InputSpec, signature: str) -> None:
    """Refuses an input whose batch is empty, shape disagrees with the signature or values are not finite."""
    if array.ndim and array.shape[0] == 0:
        raise InvalidArgument(f"input '{name}' has an empty batch (shape {_format_shape(array.shape)})")
    if array.ndim != len(spec.shape) or any(d is not None and d != a for d, a in zip(spec.shape, array.shape)):
        raise InvalidArgument(
            f"input '{name}' has shape {_format_shape(array.shape)}, but signature '{signature}' "
            f"expects {_format_shape(spec.shape)}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise InvalidArgument(f"input '{name}' holds NaN or infinite values (first at index {list(bad)})")


# ------------------------------------------------ fast path for large numeric arrays
#
# json.loads builds a Python list per innermost pixel ([v] for one channel) and the
# cyclic garbage collector then scans them again and again: a batch of 64 images of
# 64x64 took 0.4-0.7 s to parse. The fast path cuts the request's one numeric array
# out of the text, parses the small rest with json, and reads the numbers with numpy
# after checking, with vectorized byte tests, that the text is exactly a JSON array of
# the signature's shape holding JSON numbers. Whatever it cannot vouch for goes the
# exact way (json.loads of the whole body), which also words every error message.

_PLACEHOLDER = "\u0000deeplense-tensor\u0000"  # a JSON string no client sends
_NUMERIC_BYTES = b"0123456789.eE+-,[] \t\r\n"
_FAST_PATH_MIN_BYTES = 512


def _byte_classes() -> np.ndarray:
    classes = np.zeros(256, np.uint8)  # 0: boundary ([ ] ,)
    classes[list(b"123456789")] = 1  # D
    classes[ord("0")] = 2  # Z
    classes[ord(".")] = 3  # P
    classes[list(b"eE")] = 4  # E
    classes[ord("+")] = 5  # S
    classes[ord("-")] = 6  # M
    return classes


_CLASSES = _byte_classes()
_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[list(b" \t\r\n")] = True


def _bad_bigrams() -> np.ndarray:
    # Pairs of adjacent classes that no JSON number -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?
    # between boundaries can contain.
    digit, boundary, point, exponent, plus, minus = (1, 2), 0, 3, 4, 5, 6
    bad = np.zeros((7, 7), bool)
    bad[boundary, [point, exponent, plus]] = True
    for c in range(7):
        if c not in digit:
            bad[minus, c] = bad[plus, c] = bad[point, c] = bad[c, point] = bad[c, exponent] = True
        if c not in (boundary, exponent):
            bad[c, minus] = True
        if c != exponent:
            bad[c, plus] = True
    bad[exponent, [boundary, point, exponent]] = True
    return bad


_BAD_BIGRAMS = _bad_bigrams()


@functools.lru_cache(maxsize=32)
def _skeleton(dims: tuple[int, ...]) -> bytes:
    """A JSON array of ``dims`` with every number written as 0."""
    if len(dims) == 1:
        return b"[" + b",".join([b"0"] * dims[0]) + b"]"
    return b"[" + b",".join([_skeleton(dims[1:])] * dims[0]) + b"]"


def _numeric_array(span: bytes, inner: tuple) -> np.ndarray | None:
    """A (batch, *inner) float64 array if ``span`` is exactly such a JSON array, else None."""
    if not inner or any(d is None or d < 1 for d in inner):
        return None
    codes = np.frombuffer(span, np.uint8)
    if any(blank in span for blank in (b" ", b"\n", b"\t", b"\r")):
        whitespace = _WHITESPACE[codes]
        kept = np.flatnonzero(~whitespace)
        number = _CLASSES[codes[kept]] != 0
        # Whitespace inside a token ("1 2") would otherwise vanish unnoticed.
        if (number[:-1] & number[1:] & (np.diff(kept) > 1)).any():
            return None
        span = span.translate(None, b" \t\r\n")
        codes = np.frombuffer(span, np.uint8)
    classes = _CLASSES[codes]
    # What strtod reads but JSON forbids: "+1", ".5", "1.", "1.e5", "-.5", "1e+]" ...
    if _BAD_BIGRAMS.ravel()[classes[:-1] * 7 + classes[1:]].any():
        return None
    # ... and leading zeros, "[01" or ",-01" (an exponent may have them).
    zero_then_digit = (classes[1:-1] == 2) & ((classes[2:] - np.uint8(1)) < 2)  # next is 1-9 or 0
    at_start = classes[:-2] == 0
    at_start[1:] |= (classes[1:-2] == 6) & (classes[:-3] == 0)
    if (zero_then_digit & at_start).any():
        return None
    # Brackets, commas and one 0 per number, against the expected array's.
    number = classes != 0
    keep = ~number
    keep[0] |= number[0]
    keep[1:] |= number[1:] & ~number[:-1]
    skeleton = np.where(number, np.uint8(ord("0")), codes)[keep].tobytes()
    per_item = _skeleton(inner)
    batch, remainder = divmod(len(skeleton) - 1, len(per_item) + 1)
    if batch < 1 or remainder or skeleton != b"[" + b",".join([per_item] * batch) + b"]":
        return None
    try:  # raises on what strtod leaves unread, e.g. "1.2.3" or "1e5e5"
        values = np.fromstring(span.translate(_BRACKETS_TO_SPACES).decode("ascii"), sep=",")
    except ValueError:
        return None
    if values.size != batch * math.prod(inner):
        return None
    return values.reshape((batch, *inner))


_BRACKETS_TO_SPACES = bytes.maketrans(b"[]", b"  ")


def _json_loads(data: bytes):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(f"JSON Parse error: {error}") from None


def _load_json(body: bytes) -> tuple[object, bytes | None]:
    """The body's JSON, with its one large numeric array (if any) cut out as bytes."""
    start, end = body.find(b"["), body.rfind(b"]")
    if end - start >= _FAST_PATH_MIN_BYTES and not body[start:end + 1].translate(None, _NUMERIC_BYTES):
        try:
            rest = body[:start] + json.dumps(_PLACEHOLDER).encode() + body[end + 1:]
            return json.loads(rest), body[start:end + 1]
        except (ValueError, RecursionError):
            pass  # the exact parse below words the error
    return _json_loads(body), None


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused():
    """Pauses the cyclic GC while JSON is turned into lists (they hold no cycles)."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def parse_predict_request(
    body: bytes, input_specs: Callable[[str], Mapping[str, InputSpec]]
) -> PredictRequest:
    """Parses a predict request body, as FillPredictRequestFromJson() does.

    ``input_specs(signature_name)`` returns the signature's inputs; it raises NotFound
    for an unknown model or version and InvalidArgument for an unknown signature, and
    is called after the JSON is parsed (TF Serving's order of checks).
    """
    with _gc_paused():
        return _parse_predict_request(body, input_specs)


def _parse_predict_request(body: bytes, input_specs) -> PredictRequest:
    if not body.strip():
        raise InvalidArgument("JSON Parse error: The document is empty")
    document, span = _load_json(body)
    if span is not None:
        inputs_value = document.get("inputs") if isinstance(document, dict) else None
        slots = [document.get("instances"), inputs_value]
        if isinstance(inputs_value, dict):
            slots += list(inputs_value.values())
        if _PLACEHOLDER not in [slot for slot in slots if isinstance(slot, str)]:
            document, span = _json_loads(body), None  # the array sat somewhere else
    if not isinstance(document, dict):
        raise InvalidArgument(f"JSON Value: {_echo(document)} Is not object")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgument(
            f"JSON Value: {_echo(document)} not formatted correctly. 'signature_name' key must be a string value."
        )
    specs = input_specs(signature_name)
    shown_name = signature_name or "serving_default"
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise InvalidArgument(
            f"JSON Value: {_echo(document)} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
        )
    if not (has_instances or has_inputs):
        raise InvalidArgument("Missing 'inputs' or 'instances' key")
    may_hold_bools = b"true" in body or b"false" in body
    names = sorted(specs)
    if has_instances:
        instances = document["instances"]
        if instances == _PLACEHOLDER and len(names) > 1:
            instances = _json_loads(span)
        if not isinstance(instances, list) and instances != _PLACEHOLDER:
            raise InvalidArgument(f"JSON Value: {_echo(document)} Excepting 'instances' to be an list/array")
        if instances == _PLACEHOLDER and len(names) == 1:
            inputs = {names[0]: _span_to_array(span, specs[names[0]], may_hold_bools, instances=True)}
        else:
            if not instances:
                raise InvalidArgument(f"JSON Value: {_echo(document)} No values in 'instances' array")
            inputs = _instances_to_arrays(instances, specs, names, may_hold_bools)
    else:
        value = document["inputs"]
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise InvalidArgument(f"unknown input names {unknown} in 'inputs'; signature '{shown_name}' has {names}")
            missing = [name for name in names if name not in value]
            if missing:
                raise InvalidArgument(f"Missing named input: {missing[0]} in 'inputs' object.")
            inputs = {name: _span_to_array(span, specs[name], may_hold_bools) if value[name] == _PLACEHOLDER
                      else _to_array(value[name], specs[name].dtype, may_hold_bools) for name in names}
        elif len(names) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map"
            )
        elif value == _PLACEHOLDER:
            inputs = {names[0]: _span_to_array(span, specs[names[0]], may_hold_bools)}
        else:
            inputs = {names[0]: _to_array(value, specs[names[0]].dtype, may_hold_bools)}
    for name, array in inputs.items():
        check_input(name, array, specs[name], shown_name)
    batch_sizes = {array.shape[0] for array in inputs.values() if array.ndim}
    if len(batch_sizes) > 1:
        raise InvalidArgument(f"inputs have different batch sizes: {sorted(batch_sizes)}")
    return PredictRequest(signature_name, has_instances, inputs)


def _span_to_array(span: bytes, spec: InputSpec, may_hold_bools: bool, instances: bool = False) -> np.ndarray:
    """The cut-out numeric array: numpy's reading if it vouches for it, else the exact way."""
    array = _numeric_array(span, tuple(spec.shape[1:]))
    if array is not None and spec.dtype.kind == "f":
        finite = array[np.isfinite(array)]
        # Past 2**24 whether a JSON integer loses precision needs the exact walk.
        if finite.size == 0 or np.abs(finite).max() <= 2 ** (np.finfo(spec.dtype).nmant + 1) - 1:
            return array.astype(spec.dtype)
    value = _json_loads(span)
    if instances:
        return _stack_instances(value, spec, may_hold_bools, "")
    return _to_array(value, spec.dtype, may_hold_bools)


def _instances_to_arrays(instances: list, specs, names: list[str], may_hold_bools: bool) -> dict[str, np.ndarray]:
    # FillTensorMapFromInstancesList(): a plain list (one input) or a list of objects.
    if isinstance(instances[0], dict):
        rows: dict[str, list] = {name: [] for name in names}
        for index, item in enumerate(instances):
            if not isinstance(item, dict):
                raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
            if set(item) != set(names):
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: {_echo(item)} "
                    f"keys must be equal to: {','.join(names)}"
                )
            for name in names:
                rows[name].append(item[name])
        return {name: _stack_instances(rows[name], specs[name], may_hold_bools, name) for name in names}
    if len(names) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per tensorinfo_map"
        )
    for index, item in enumerate(instances):
        if isinstance(item, dict):
            raise InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
    return {names[0]: _stack_instances(instances, specs[names[0]], may_hold_bools, names[0])}


def _stack_instances(items: list, spec: InputSpec, may_hold_bools: bool, name: str) -> np.ndarray:
    try:
        return _to_array(items, spec.dtype, may_hold_bools)
    except InvalidArgument:
        pass
    # Find the first offending instance and report it the way TF Serving does.
    first_shape = None
    for index, item in enumerate(items):
        try:
            array = _to_array(item, spec.dtype, may_hold_bools)
        except InvalidArgument as error:
            raise InvalidArgument(f"Failed to process element: {index} of 'instances' list. Error: {error}") from None
        if first_shape is None:
            first_shape = array.shape
        elif array.shape != first_shape:
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. Error: Expecting shape "
                f"{_format_shape(first_shape)} but got: {_format_shape(array.shape)}"
            )
    raise InvalidArgument(f"could not convert 'instances' for input '{name}'")  # not reached


# -------------------------------------------------------------- response formatting


def _format_scalars(flat: np.ndarray) -> list[str]:
    """JSON text of each value, as WriteDecimal() and the rapidjson writer print them."""
    kind = flat.dtype.kind
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind in "iu":
        return [str(v) for v in flat.tolist()]
    if kind != "f":
        raise InvalidArgument(f"Failed to write JSON value for tensor type: {flat.dtype.name}")
    values = flat.tolist()
    texts = ["%g" % v for v in values]  # absl::StrCat() prints six significant digits
    finite = np.isfinite(flat)
    round_trip = np.array([float(t) if f else 0.0 for t, f in zip(texts, finite)], dtype=flat.dtype)
    digits = np.finfo(flat.dtype).precision + (3 if flat.dtype == np.float32 else 2)  # max_digits10
    out = []
    for value, text, ok, same in zip(values, texts, finite, round_trip == flat):
        if not ok:
            text = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
        else:
            if not same:
                text = "%.*g" % (digits, value)
            if "." not in text and "e" not in text:
                text += ".0"
        out.append(text)
    return out


def _nest(texts: list[str], shape: tuple) -> str:
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ", ".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(texts[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def format_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """MakeJsonFromTensors(): ``predictions`` per row, or ``outputs`` per tensor.

    With one output tensor its name is dropped (bare values), with several each row
    (or the ``outputs`` object) is keyed by output name.
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    arrays = {name: np.asarray(outputs[name]) for name in names}
    texts = {name: _format_scalars(arrays[name].ravel()) for name in names}
    if not row_format:
        if len(names) == 1:
            body = _nest(texts[names[0]], arrays[names[0]].shape)
        else:
            body = "{" + ", ".join(f"{json.dumps(n)}: {_nest(texts[n], arrays[n].shape)}" for n in names) + "}"
        return ('{"outputs": ' + body + "}").encode()
    batch = None
    for name in names:
        if arrays[name].ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch is not None and arrays[name].shape[0] != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {arrays[name].shape[0]} expecting: {batch}"
            )
        batch = arrays[name].shape[0]
    rows = []
    for i in range(batch):
        cells = {}
        for name in names:
            inner = arrays[name].shape[1:]
            size = int(np.prod(inner)) if inner else 1
            cells[name] = _nest(texts[name][i * size:(i + 1) * size], inner)
        if len(names) == 1:
            rows.append(cells[names[0]])
        else:
            rows.append("{" + ", ".join(f"{json.dumps(n)}: {cells[n]}" for n in names) + "}")
    return ('{"predictions": [' + ", ".join(rows) + "]}").encode()


def format_model_status(versions: list[tuple[int, str, str, str]]) -> bytes:
    """GetModelStatusResponse as JSON: (version, state, error_code, error_message) each."""
    document = {
        "model_version_status": [
            {"version": str(version), "state": state, "status": {"error_code": code, "error_message": message}}
            for version, state, code, message in versions
        ]
    }
    return json.dumps(document, indent=1).encode()


def format_model_metadata(model_name: str, version: int, signature_def_map: Mapping) -> bytes:
    """GetModelMetadataResponse as TF Serving's REST handler prints it."""
    document = {
        "model_spec": {"name": model_name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": signature_def_map},
    }
    return json.dumps(document, indent=1).encode()
