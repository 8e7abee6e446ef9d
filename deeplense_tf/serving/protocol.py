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

from deeplense_tf.serving import client

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
# out of the text and parses the small rest with json. Text in the client's
# fixed-width layout is checked and read column by column with numpy. Any other text
# has its brackets and commas checked against those of an array of the signature's
# shape with byte-level operations, then json reads the numbers alone as one flat
# list, which also checks that each slot between the commas holds exactly one JSON
# number. Whatever neither can vouch for goes the exact way (json.loads of the whole
# body), which also words every error message.

_PLACEHOLDER = "\u0000deeplense-tensor\u0000"  # a JSON string no client sends
_NUMERIC_BYTES = b"0123456789.eE+-,[] \t\r\n"
_NUMBER_BYTES = b"0123456789.eE+-"
_WHITESPACE_BYTES = b" \t\r\n"
_FAST_PATH_MIN_BYTES = 512
# Brackets and commas to 1, every other byte to 0.
_PUNCTUATION_MARKS = bytes(1 if byte in b"[]," else 0 for byte in range(256))


@functools.lru_cache(maxsize=32)
def _item_punctuation(inner: tuple[int, ...]) -> tuple[bytes, np.ndarray]:
    """One item's brackets and commas, and which gaps between them hold a number.

    The mask has a gap before and after the item (between it and the batch's
    brackets or commas), so that ``batch`` copies of it cover the whole array.
    """
    def text(dims):
        if len(dims) == 1:
            return b"[" + b",".join([b"0"] * dims[0]) + b"]"
        return b"[" + b",".join([text(dims[1:])] * dims[0]) + b"]"

    codes = np.frombuffer(text(inner), np.uint8)
    positions = np.flatnonzero(codes != ord("0"))
    gaps = np.concatenate([[False], np.diff(positions) > 1, [False]])
    return codes[positions].tobytes(), gaps


def _numeric_array(span: bytes, inner: tuple[int, ...]) -> np.ndarray | None:
    """A (batch, *inner) array if ``span`` is exactly such a JSON array of numbers, else None."""
    if not inner or any(d is None or d < 1 for d in inner):
        return None
    values = _fixed_width_array(span, inner)
    if values is not None:
        return values
    compact = span.translate(None, _WHITESPACE_BYTES)
    punctuation = compact.translate(None, _NUMBER_BYTES)
    per_item, gaps = _item_punctuation(inner)
    batch, remainder = divmod(len(punctuation) - 1, len(per_item) + 1)
    if batch < 1 or remainder or punctuation != b"[" + b",".join([per_item] * batch) + b"]":
        return None
    # Numbers exactly where the shape has them, none beside a bracket ("[1]2", "1[2]").
    marks = np.frombuffer(compact.translate(_PUNCTUATION_MARKS), bool)
    holds_number = np.diff(np.flatnonzero(marks)) > 1
    if not (holds_number.reshape(batch, len(gaps)) == gaps).all():
        return None
    # Without the brackets the numbers are a flat JSON list; json refuses what JSON
    # forbids ("+1", ".5", "01", "1 2", "1e5e5" ...) and rounds as strtod does.
    try:
        values = np.array(json.loads(b"[" + span.translate(None, b"[]") + b"]"))
    except (ValueError, OverflowError):
        return None
    if values.dtype.kind not in "fi" or values.size != batch * math.prod(inner):
        return None  # integers beyond int64 and the like: the exact way
    return values.reshape((batch, *inner))


# The client's layout (``client.item_frame``): every element in a row of
# 2 * rank + 15 bytes, its number in the 14 after its opening brackets: a sign or a
# blank, nine digits (the first not 0) and an exponent, " 850624204e-09", or zero as
# "0e+00" ("-0e+00") after blanks.
_FIXED_WIDTH = client.NUMBER_WIDTH
# Per column of a number: the lowest byte allowed and how far above it the others lie.
_FIXED_LOW = np.frombuffer(b" " + b"1" + b"0" * 8 + b"e+00", np.uint8)
_FIXED_EXTENT = np.array([ord("-") - ord(" ")] + [8] + [9] * 8 + [0, ord("-") - ord("+"), 9, 9], np.uint8)
_IS_SIGN = np.zeros(256, bool)
_IS_SIGN[list(b" -")] = True  # a blank or "-" before the digits
_IS_PLUS_MINUS = np.zeros(256, bool)
_IS_PLUS_MINUS[list(b"+-")] = True
_FIXED_ZEROS = np.stack([np.frombuffer(text.rjust(_FIXED_WIDTH), np.uint8) for text in (b"0e+00", b"-0e+00")])
# Digit bytes times these weights, less the offset, give the nine-digit mantissa.
_MANTISSA_WEIGHTS = 10.0 ** np.arange(8, -1, -1)
_MANTISSA_OFFSET = ord("0") * _MANTISSA_WEIGHTS.sum()
_EXACT_POW10 = 10.0 ** np.arange(100)  # exact in float64 up to 10**22


def _fixed_width_array(span: bytes, inner: tuple[int, ...]) -> np.ndarray | None:
    """A (batch, *inner) float64 array if ``span`` is in the client's layout, else None.

    Brackets, commas and blanks must be exactly the layout's and every number one of
    its form; then the text is exactly a JSON array of this shape. Exact: a
    nine-digit mantissa times or divided by a power of ten up to 10**22 is one
    correctly rounded float64 operation, the value strtod gives; the few numbers with
    larger exponents are read by float().
    """
    item = client.item_frame(inner)
    rank, width = len(inner) + 1, item.shape[1] + 2
    if len(span) % width == width - 1:
        span += b" "  # the blank after the last element lies outside the cut-out array
    count, remainder = divmod(len(span), width)
    batch, partial = divmod(count, len(item))
    if remainder or partial or batch < 1:
        return None
    rows = np.frombuffer(span, np.uint8).reshape(count, width)
    items = rows.reshape(batch, len(item), width)
    outer = rows[:, [0, -2, -1]]  # the batch's brackets, and the commas
    if not (
        (items[:, :, 1:rank] == item[:, :rank - 1]).all()
        and (items[:, :, rank + _FIXED_WIDTH:-2] == item[:, rank - 1 + _FIXED_WIDTH:-1]).all()
        and outer[0, 0] == ord("[") and (outer[1:, 0] == ord(" ")).all()
        and outer[-1, 1] == ord("]") and (outer[:-1, 1] == ord(" ")).all()
        and outer[-1, 2] == ord(" ") and (outer[:-1, 2] == ord(",")).all()
    ):
        return None
    fields = rows[:, rank:rank + _FIXED_WIDTH]
    in_range = (fields - _FIXED_LOW) <= _FIXED_EXTENT
    signs = _IS_SIGN[fields[:, 0]] & _IS_PLUS_MINUS[fields[:, 11]]
    zero = None
    if not (in_range.all() and signs.all()):  # zeros, or not the layout
        zero = (fields[:, None, :] == _FIXED_ZEROS).all(axis=2).any(axis=1)
        if not (in_range.all(axis=1) & signs | zero).all():
            return None
    # einsum, not matmul: a BLAS call leaves its threads spinning for a while, taking
    # the cores from the model that runs next (the batch-64 REST p50 was 287 ms against
    # 189 ms in-process with matmul, python -m deeplense_tf.benchmarks.serving).
    mantissa = np.einsum("ij,j->i", fields[:, 1:10], _MANTISSA_WEIGHTS) - _MANTISSA_OFFSET
    exponent = fields[:, 12].astype(np.intp) * 10 + fields[:, 13] - 11 * ord("0")
    negative = fields[:, 0] == ord("-")
    if zero is not None:
        mantissa[zero] = exponent[zero] = 0
        negative |= zero & (fields[:, _FIXED_WIDTH - 6] == ord("-"))  # "-0e+00"
    values = np.where(fields[:, 11] == ord("-"), mantissa / _EXACT_POW10[exponent], mantissa * _EXACT_POW10[exponent])
    for row in np.flatnonzero(exponent > 22):
        values[row] = float(fields[row, 1:].tobytes())
    values[negative] *= -1.0
    return values.reshape((batch, *inner))


def _json_loads(data: bytes):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(f"JSON Parse error: {error}") from None


def _load_json(body: bytes) -> tuple[object, bytes | None, bytes]:
    """The body's JSON, with its one large numeric array (if any) cut out as bytes.

    Returns the document, the cut-out array (or None) and the text json parsed.
    """
    start, end = body.find(b"["), body.rfind(b"]")
    if end - start >= _FAST_PATH_MIN_BYTES and not body[start:end + 1].translate(None, _NUMERIC_BYTES):
        try:
            rest = body[:start] + json.dumps(_PLACEHOLDER).encode() + body[end + 1:]
            return json.loads(rest), body[start:end + 1], rest
        except (ValueError, RecursionError):
            pass  # the exact parse below words the error
    return _json_loads(body), None, body


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
    # The cut-out array holds only number bytes; true and false can only be in the rest.
    document, span, rest = _load_json(body)
    if span is not None:
        inputs_value = document.get("inputs") if isinstance(document, dict) else None
        slots = [document.get("instances"), inputs_value]
        if isinstance(inputs_value, dict):
            slots += list(inputs_value.values())
        if _PLACEHOLDER not in [slot for slot in slots if isinstance(slot, str)]:
            document, span, rest = _json_loads(body), None, body  # the array sat somewhere else
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
    may_hold_bools = b"true" in rest or b"false" in rest
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
    """The cut-out numeric array: the fast reading if it vouches for it, else the exact way."""
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
