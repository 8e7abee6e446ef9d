r"""A local REST endpoint that speaks TensorFlow Serving's protocol over our SavedModels.

Usage:
  python -m deeplense_tf.serve --model_base_path=exports/deeplense_axion \
      --model_name=deeplense_axion --rest_api_port=8501 [--host=127.0.0.1]
  python -m deeplense_tf.serve --model_config_file=serving/models.config

Serves what ``tensorflow_model_server`` serves over REST, on the same URLs and with
the same JSON, so a client written for one works with the other (see
``protocol`` for the few stricter checks):

  POST /v1/models/NAME[/versions/V|/labels/L]:predict   {"instances": ...} or {"inputs": ...}
  GET  /v1/models/NAME[/versions/V|/labels/L]           model status
  GET  /v1/models/NAME[/versions/V|/labels/L]/metadata  signature defs

It loads the latest version under the base path at start, polls for new versions
every ``--file_system_poll_wait_seconds`` and swaps them in without dropping requests,
replays each version's warm-up records before serving it, binds 127.0.0.1 unless told
otherwise, refuses bodies over ``--max_body_bytes`` and serves concurrent clients
(a thread per connection, HTTP/1.1 keep-alive). ``--rest_api_port=0`` binds a free
port, printed at start. Only the standard library and TensorFlow: no web framework.
``--grpc_port`` adds TF Serving's gRPC ``PredictionService/Predict`` (``grpc_api``).
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import threading
import time
from typing import Mapping, Sequence

from absl import app, flags, logging

from deeplense_tf import console
from deeplense_tf.serving import protocol
from deeplense_tf.serving.repository import ModelRepository, RepositoryPoller, freeze_heap, repositories_from_config

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # 64 images of 150x150 are 32 MiB of the client's JSON


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection must not block shutdown
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        logging.exception("error on a connection from %s", client_address)


class _IPv6HTTPServer(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "deeplense-tf-serve"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.model_server.idle_timeout_s  # closes idle connections
        super().setup()
        # Responses go out in one write; without NODELAY a client's delayed ACK can
        # still hold a small response back by tens of milliseconds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def handle_expect_100(self):
        # Refuse an oversized body before the client sends it.
        try:
            self._check_length()
        except protocol.ServingError as error:
            self.close_connection = True
            self._reply(error.http_status, protocol.error_body(str(error)))
            self._linger()
            return False
        return super().handle_expect_100()

    def _check_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        try:
            length = int(value)
        except ValueError:
            raise protocol.InvalidArgument(f"invalid Content-Length: {value!r}") from None
        if length < 0:
            raise protocol.InvalidArgument(f"invalid Content-Length: {value!r}")
        limit = self.server.model_server.max_body_bytes
        if length > limit:
            raise protocol.PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
        return length

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self._check_length()
        if not length:
            return b""
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _read_chunked(self) -> bytes:
        limit = self.server.model_server.max_body_bytes
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise protocol.InvalidArgument("malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > limit:
                raise protocol.PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ConnectionError("client closed the connection mid-body")
            chunks.append(chunk)
            self.rfile.readline(16)  # CRLF after the chunk

    def _serve(self):
        try:
            body = self._read_body()
        except protocol.ServingError as error:
            self.close_connection = True  # the unread body would be taken for a request
            self._reply(error.http_status, protocol.error_body(str(error)))
            self._linger()
            return
        status, payload = self.server.model_server.handle(self.command, self.path, body)
        self._reply(status, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

    def _linger(self, seconds: float = 2.0) -> None:
        """Discards what the client still sends, briefly, before the connection closes.

        Closing at once while a refused body is still arriving resets the connection,
        and the client would see a broken pipe instead of the 413.
        """
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass

    def _reply(self, status: int, payload: bytes) -> None:
        reason = self.responses.get(status, ("",))[0]
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"Date: {self.date_time_string()}\r\n"
        )
        if self.close_connection:
            head += "Connection: close\r\n"
        # Head and body in one write: no Nagle/delayed-ACK stall between them.
        self.wfile.write(head.encode("latin-1") + b"\r\n" + payload)
        if self.server.model_server.log_requests:
            self.log_request(status, len(payload))

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        logging.info("%s %s", self.address_string(), format % args)


class ModelServer:
    """TF Serving's REST API over ModelRepositories, on a background or foreground loop.

    Use as a context manager in tests::

        with ModelServer([ModelRepository("m", base_path)], port=0) as server:
            client.predict(server.url, "m", images)
    """

    def __init__(
        self,
        repositories: Sequence[ModelRepository],
        host: str = "127.0.0.1",
        port: int = 8501,
        poll_interval_s: float = 1.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        idle_timeout_s: float = 120.0,
        log_requests: bool = False,
        grpc_port: int | None = None,
    ):
        self.repositories: Mapping[str, ModelRepository] = {r.model_name: r for r in repositories}
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.log_requests = log_requests
        for repository in self.repositories.values():
            repository.poll()  # the first versions load before the port opens
            if not repository.versions_on_disk():
                logging.warning("no versions of %s under %s yet; polling", repository.model_name, repository.base_path)
        freeze_heap()
        server_class = _IPv6HTTPServer if ":" in host else _HTTPServer
        self._httpd = server_class((host, port), _Handler)
        self._httpd.model_server = self
        self._poller = RepositoryPoller(list(self.repositories.values()), poll_interval_s)
        self._thread: threading.Thread | None = None
        self._grpc_server, self.grpc_port = None, None
        if grpc_port is not None:
            from deeplense_tf.serving.grpc_api import start_grpc_server

            self._grpc_server, self.grpc_port = start_grpc_server(
                lambda name: self._repository(name, "predict"), host, grpc_port, max_body_bytes
            )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> "ModelServer":
        """Serves on a background thread and returns."""
        self._poller.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._poller.start()
        self._httpd.serve_forever()

    def shutdown(self) -> None:
        self._poller.stop()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=1.0).wait()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def _repository(self, name: str, verb: str) -> ModelRepository:
        repository = self.repositories.get(name)
        if repository is None:
            if verb == "status":
                raise protocol.NotFound(f"Could not find any versions of model {name}")
            raise protocol.NotFound(f"Servable not found for request: Latest({name})")
        return repository

    def handle(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        """One request: HTTP method, request target and body in; status and JSON out."""
        try:
            route = protocol.parse_route(method, target)
            if route.verb == "predict":
                return 200, self._predict(route, body)
            repository = self._repository(route.model_name, route.verb)
            if route.verb == "status":
                return 200, protocol.format_model_status(repository.status(route.version, route.label))
            servable = repository.get(route.version, route.label)
            if route.verb == "metadata":
                return 200, protocol.format_model_metadata(route.model_name, servable.version, servable.signature_def_map)
            # classify / regress need Example-based signatures, which our exports lack.
            raise protocol.InvalidArgument(
                f"Expected {route.verb} signature method_name to be tensorflow/serving/{route.verb}. "
                "Was: tensorflow/serving/predict"
            )
        except protocol.ServingError as error:
            return error.http_status, protocol.error_body(str(error))
        except Exception as error:  # the server keeps serving whatever one request did
            logging.exception("internal error on %s %s", method, target)
            return 500, protocol.error_body(f"Internal error: {type(error).__name__}: {error}")

    def _predict(self, route: protocol.Route, body: bytes) -> bytes:
        servable = None

        def input_specs(signature_name: str):
            nonlocal servable
            servable = self._repository(route.model_name, "predict").get(route.version, route.label)
            return servable.inputs_of(signature_name)

        request = protocol.parse_predict_request(body, input_specs)
        outputs = servable.predict(request.signature_name, request.inputs)
        return protocol.format_predict_response(outputs, request.row_format)


def _parse_labels(items: Sequence[str]) -> dict[str, int]:
    labels = {}
    for item in items:
        label, _, version = item.partition("=")
        if not label or not version.isdigit():
            raise app.UsageError(f"--version_labels wants LABEL=VERSION items, got {item!r}")
        labels[label] = int(version)
    return labels


def _define_flags() -> None:
    # Defined only when run as a program: modules imported together must not clash.
    flags.DEFINE_string("model_name", None, "Name to serve the model under (with --model_base_path).")
    flags.DEFINE_string("model_base_path", None, "Directory holding the integer version directories of the model.")
    flags.DEFINE_string("model_config_file", None, "TF Serving models.config (text ModelServerConfig), instead of the two flags above.")
    flags.DEFINE_list("version_labels", [], "LABEL=VERSION pairs for /labels/LABEL routes (with --model_base_path).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the endpoint to the network.")
    flags.DEFINE_integer("rest_api_port", 8501, "Port of the REST API; 0 picks a free port (printed at start).")
    flags.DEFINE_integer("grpc_port", None, "Also serve gRPC PredictionService/Predict on this port (TF Serving: 8500).")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0, "Seconds between polls for new versions; 0 to poll only at start.")
    flags.DEFINE_boolean("enable_model_warmup", True, "Replay assets.extra/tf_serving_warmup_requests before serving a version.")
    flags.DEFINE_integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES, "Largest request body accepted (larger ones get 413).")
    flags.DEFINE_boolean("log_requests", False, "Log every request.")
    flags.DEFINE_integer("tensorflow_intra_op_parallelism", 0, "Threads inside one op (0: TensorFlow picks).")
    flags.DEFINE_integer("tensorflow_inter_op_parallelism", 0, "Ops run at once (0: TensorFlow picks).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.setup()
    FLAGS = flags.FLAGS
    # TF Serving's flags of the same names; they must be set before any model loads.
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.tensorflow_inter_op_parallelism)
    if FLAGS.model_config_file:
        with open(FLAGS.model_config_file) as stream:
            repositories = repositories_from_config(
                stream.read(), os.path.dirname(os.path.abspath(FLAGS.model_config_file)), FLAGS.enable_model_warmup
            )
    elif FLAGS.model_name and FLAGS.model_base_path:
        repositories = [
            ModelRepository(
                FLAGS.model_name,
                FLAGS.model_base_path,
                version_labels=_parse_labels(FLAGS.version_labels),
                warm_up=FLAGS.enable_model_warmup,
            )
        ]
    else:
        raise app.UsageError("give --model_name and --model_base_path, or --model_config_file")
    started = time.monotonic()
    server = ModelServer(
        repositories,
        host=FLAGS.host,
        port=FLAGS.rest_api_port,
        poll_interval_s=FLAGS.file_system_poll_wait_seconds,
        max_body_bytes=FLAGS.max_body_bytes,
        log_requests=FLAGS.log_requests,
        grpc_port=FLAGS.grpc_port,
    )
    # SIGTERM (docker stop, kill) ends the loop like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    names = ", ".join(sorted(server.repositories))
    grpc_note = f", gRPC Predict on port {server.grpc_port}" if server.grpc_port else ""
    print(f"Serving {names} at {server.url} (REST, TF Serving protocol{grpc_note}; "
          f"ready in {time.monotonic() - started:.1f} s)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    _define_flags()
    app.run(main)
