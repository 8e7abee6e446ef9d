r"""A small client for TF Serving's REST API (real TF Serving or ``python -m deeplense_tf.serve``).

Standard library and numpy only: it never imports TensorFlow, and the file works on its own::

    from deeplense_tf.serving import client
    outputs = client.predict("localhost:8501", "deeplense_axion", images)
    outputs["log10_m_axion"], outputs["log10_m_axion_std"]   # float32 arrays, (batch,)

Images are float32 raw pixels, ``(batch, H, W, 1)`` (or one ``(H, W, 1)`` image).
Connections are HTTP/1.1 keep-alive, one per thread and server, reused across calls.

Command line (``status``, ``metadata`` or ``predict IMAGES``, a ``.npy`` file or a
``.json`` request body; ``--wait_seconds`` first waits for the model to be AVAILABLE)::

    python -m deeplense_tf.serving_client --server=localhost:8501 \
        --model_name=deeplense_axion --wait_seconds=60 predict serving/sample_request.json
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import threading
import time
import urllib.parse
from typing import Mapping

import numpy as np


class ServingClientError(RuntimeError):
    """The server answered with an error: ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _split_server(url_or_host: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of "host:port", "http://host:port" or "http://host:port/prefix"."""
    if "://" not in url_or_host:
        url_or_host = "http://" + url_or_host
    parts = urllib.parse.urlsplit(url_or_host)
    if parts.scheme != "http":
        raise ValueError(f"only http:// servers are supported, got {url_or_host!r}")
    return parts.hostname or "localhost", parts.port or 8501, parts.path.rstrip("/")


_connections = threading.local()


def _request(url_or_host: str, method: str, path: str, body: bytes | None, timeout: float) -> dict:
    host, port, prefix = _split_server(url_or_host)
    pool = _connections.__dict__.setdefault("pool", {})
    headers = {"Content-Type": "application/json"} if body is not None else {}
    for attempt in range(2):  # a kept-alive connection may have been closed by the server
        connection = pool.get((host, port))
        if connection is None:
            connection = pool[(host, port)] = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request(method, prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            connection.close()
            pool.pop((host, port), None)
            if attempt:
                raise
            continue
        if response.will_close:
            connection.close()
            pool.pop((host, port), None)
        break
    try:
        document = json.loads(payload) if payload else {}
    except ValueError:
        document = {"error": payload.decode("utf-8", "replace")}
    if response.status != 200:
        raise ServingClientError(response.status, document.get("error", response.reason))
    return document


def _model_path(model_name: str, version: int | None, label: str | None) -> str:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    path = "/v1/models/" + urllib.parse.quote(model_name, safe="")
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += "/labels/" + urllib.parse.quote(label, safe="")
    return path


# Every number is written as a sign (or a blank), nine significant digits and a
# two-digit exponent, " 850624204e-09": 14 bytes, which give back the same float32.
# The brackets and commas around it are padded with blanks to a fixed width as well,
# so that every element of an array takes the same bytes and numpy writes the whole
# text in a few vectorized steps (0.24 ms for a 64x64 image, against 0.52 ms formatting
# number by number; python -m deeplense_tf.benchmarks.serving). It is
# plain JSON to any reader; ``protocol`` recognises the layout and reads it
# back without parsing the numbers one by one.
NUMBER_WIDTH = 14
_POW10 = 10.0 ** np.arange(-64, 65)  # index k + 64
_THREE_DIGITS = np.array([list(b"%03d" % i) for i in range(1000)], np.uint8)
_EXPONENTS = np.array([list(b"e%+03d" % k) for k in range(-64, 64)], np.uint8)  # index k + 64
_ZERO = np.frombuffer(b"0e+00".rjust(NUMBER_WIDTH), np.uint8)


@functools.lru_cache(maxsize=16)
def item_frame(shape: tuple[int, ...]) -> np.ndarray:
    """The fixed-width layout of one item (an image) of ``shape``, blanks for the numbers.

    One row of ``2 * len(shape) + 15`` bytes per element: its opening brackets
    (right-aligned in ``len(shape)`` bytes), the number (``NUMBER_WIDTH`` bytes), its
    closing brackets (left-aligned in ``len(shape)`` bytes) and a comma, a blank after
    the item's last element. Read-only; a batch of items wraps each row in one more
    bracket column on either side (``batch_frame``).
    """
    rank, count = len(shape), math.prod(shape)
    index = np.indices(shape).reshape(rank, count).T
    last = np.array(shape) - 1
    frame = np.full((count, 2 * rank + NUMBER_WIDTH + 1), ord(" "), np.uint8)
    for axis in range(rank):
        frame[(index[:, axis:] == 0).all(axis=1), axis] = ord("[")
        frame[(index[:, axis:] == last[axis:]).all(axis=1), rank + NUMBER_WIDTH + rank - 1 - axis] = ord("]")
    frame[:-1, -1] = ord(",")
    frame.flags.writeable = False
    return frame


def batch_frame(shape: tuple[int, ...]) -> np.ndarray:
    """A new (elements, 2 * len(shape) + 15) layout of a batch of ``shape[0]`` items."""
    item = item_frame(tuple(shape[1:]))
    width = item.shape[1] + 2
    frame = np.empty((shape[0], len(item), width), np.uint8)
    frame[:, :, 1:-2] = item[:, :-1]  # all but the item's comma
    frame[:, :, 0] = frame[:, :, -2] = ord(" ")
    frame[:, :, -1] = ord(",")
    frame[0, 0, 0], frame[-1, -1, -2], frame[-1, -1, -1] = ord("["), ord("]"), ord(" ")
    return frame.reshape(-1, width)


def encode_images(images) -> bytes:
    """JSON text of a float32 array (any shape with no empty axis), losslessly and fast."""
    images = np.asarray(images, dtype=np.float32)
    if images.size == 0 or images.ndim == 0:
        raise ValueError(f"expected a non-empty array, got shape {images.shape}")
    values = images.astype(np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("JSON has no NaN or infinite numbers")
    magnitude = np.abs(values)
    zero = magnitude == 0
    magnitude[zero] = 1.0
    # value = mantissa * 10**exponent with a mantissa of exactly nine digits.
    exponent = np.floor(np.log10(magnitude)).astype(np.int64) - 8
    mantissa = np.rint(magnitude * _POW10[64 - exponent]).astype(np.int64)
    off = (mantissa >= 1_000_000_000).astype(np.int64) - (mantissa < 100_000_000)
    if off.any():  # log10 rounded across a power of ten
        exponent += off
        mantissa = np.rint(magnitude * _POW10[64 - exponent]).astype(np.int64)
    high, rest = np.divmod(mantissa, 1_000_000)
    middle, low = np.divmod(rest, 1000)
    rank = images.ndim
    text = batch_frame(images.shape)
    number = text[:, rank:rank + NUMBER_WIDTH]
    number[:, 0] = np.where(np.signbit(values), np.uint8(ord("-")), np.uint8(ord(" ")))
    number[:, 1:4] = _THREE_DIGITS[high]
    number[:, 4:7] = _THREE_DIGITS[middle]
    number[:, 7:10] = _THREE_DIGITS[low]
    number[:, 10:] = _EXPONENTS[exponent + 64]
    if zero.any():
        negative = zero & np.signbit(values)
        number[zero] = _ZERO
        number[negative, NUMBER_WIDTH - 6] = ord("-")
    return text.tobytes()


def _as_batch(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[np.newaxis]
    if images.ndim != 4 or images.shape[-1] != 1 or images.shape[0] == 0:
        raise ValueError(f"expected images of shape (batch, H, W, 1) or (H, W, 1), got {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError("images hold NaN or infinite pixels")
    return images


def model_metadata(url_or_host: str, model_name: str, version: int | None = None, label: str | None = None, timeout: float = 30.0) -> dict:
    """GET .../metadata: the model's signature defs as TF Serving prints them."""
    return _request(url_or_host, "GET", _model_path(model_name, version, label) + "/metadata", None, timeout)


def model_status(url_or_host: str, model_name: str, version: int | None = None, label: str | None = None, timeout: float = 30.0) -> dict:
    """GET /v1/models/NAME: ``{"model_version_status": [{"version", "state", "status"}]}``."""
    return _request(url_or_host, "GET", _model_path(model_name, version, label), None, timeout)


def wait_until_available(url_or_host: str, model_name: str, timeout_s: float = 60.0) -> dict:
    """Polls the model status until a version is AVAILABLE (a server starting, a model loading)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = model_status(url_or_host, model_name, timeout=5.0)
            if any(v.get("state") == "AVAILABLE" for v in status.get("model_version_status", [])):
                return status
        except (OSError, ServingClientError):
            pass  # not listening yet, or the model not loaded yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"{model_name!r} not AVAILABLE at {url_or_host} after {timeout_s:.0f} s")
        time.sleep(0.2)


def load_images(path: str) -> np.ndarray:
    """Images from a ``.npy`` file or a TF Serving request body (``.json``)."""
    if not path.endswith(".json"):
        return np.load(path, allow_pickle=False)
    with open(path) as stream:
        document = json.load(stream)
    images = document["instances"] if "instances" in document else document["inputs"]
    if isinstance(images, dict):
        images = images["image"]
    return np.asarray(images, dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _single_output_name(url_or_host: str, model_name: str, version, label, signature_name: str, timeout: float) -> str:
    signature = model_metadata(url_or_host, model_name, version, label, timeout)["metadata"]["signature_def"]
    outputs = signature["signature_def"][signature_name or "serving_default"]["outputs"]
    return next(iter(outputs))


def predict(
    url_or_host: str,
    model_name: str,
    images,
    version: int | None = None,
    signature_name: str | None = None,
    label: str | None = None,
    input_name: str = "image",
    timeout: float = 30.0,
    max_batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Runs the model on ``images``; returns its named outputs as float32 arrays.

    Sends the columnar form (``{"inputs": {"image": ...}}``), ``max_batch_size`` images
    per request at most (TF Serving with batching refuses larger requests). A server
    answers a single-output model without the output's name; it is then read from the
    model's metadata.
    """
    batch = _as_batch(images)
    if len(batch) > max_batch_size:
        parts = [
            predict(url_or_host, model_name, batch[i:i + max_batch_size], version, signature_name, label, input_name, timeout, max_batch_size)
            for i in range(0, len(batch), max_batch_size)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    body = b'{"inputs": {' + json.dumps(input_name).encode() + b": " + encode_images(batch) + b"}"
    if signature_name:
        body += b', "signature_name": ' + json.dumps(signature_name).encode()
    body += b"}"
    path = _model_path(model_name, version, label) + ":predict"
    outputs = _request(url_or_host, "POST", path, body, timeout)["outputs"]
    if not isinstance(outputs, dict):
        name = _single_output_name(url_or_host, model_name, version, label, signature_name or "", timeout)
        outputs = {name: outputs}
    return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("server", "localhost:8501", "host:port or http://host:port of the REST API.")
    flags.DEFINE_string("model_name", None, "Served model name.")
    flags.DEFINE_integer("version", None, "Model version (default: the latest).")
    flags.DEFINE_string("label", None, "Version label, instead of --version.")
    flags.DEFINE_string("signature_name", None, "Signature (default: serving_default).")
    flags.DEFINE_float("wait_seconds", 0.0, "First wait up to this long for the model to be AVAILABLE.")
    flags.mark_flag_as_required("model_name")


def main(argv: list[str]) -> None:
    """Commands: ``status``, ``metadata``, ``predict IMAGES.npy``."""
    from absl import app, flags

    FLAGS = flags.FLAGS
    command = argv[1:]
    if FLAGS.wait_seconds > 0:
        wait_until_available(FLAGS.server, FLAGS.model_name, FLAGS.wait_seconds)
    if command == ["status"]:
        result = model_status(FLAGS.server, FLAGS.model_name, FLAGS.version, FLAGS.label)
    elif command == ["metadata"]:
        result = model_metadata(FLAGS.server, FLAGS.model_name, FLAGS.version, FLAGS.label)
    elif len(command) == 2 and command[0] == "predict":
        images = load_images(command[1])
        outputs = predict(FLAGS.server, FLAGS.model_name, images, FLAGS.version, FLAGS.signature_name, FLAGS.label)
        # float32 values in their shortest decimal form (tolist() would show float64 noise)
        result = {name: [float(str(v)) for v in value.ravel()] for name, value in outputs.items()}
    else:
        raise app.UsageError("commands: status | metadata | predict IMAGES (.npy, or a .json request body)")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
