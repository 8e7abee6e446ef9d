"""Versioned SavedModels on disk, loaded and swapped the way TF Serving does it.

A ``ModelRepository`` watches ``base_path`` (``<export_base>/<model_name>``) for integer
version directories, loads the ones its version policy wants (by default the latest),
replays each version's warm-up records before it serves, and unloads versions the
policy no longer wants only once a wanted version is AVAILABLE. Requests take a
reference to one ``LoadedVersion`` and keep it until they finish, so swapping versions
never drops a request. It also answers model status and metadata in TF Serving's terms.

Differences from TF Serving, both to keep serving: a version whose load fails is
passed over (the policy then picks among the other versions, so the previous one
stays served), and it is tried again only once its ``saved_model.pb`` changes.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from deeplense_tf.serving import protos
from deeplense_tf.serving.protocol import InputSpec, Internal, InvalidArgument, NotFound

DEFAULT_SIGNATURE = "serving_default"


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ServableVersionPolicy: ``latest`` (n newest), ``all`` or ``specific``."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def choose(self, on_disk: Sequence[int]) -> set[int]:
        if self.kind == "all":
            return set(on_disk)
        if self.kind == "specific":
            return set(on_disk) & set(self.versions)
        return set(sorted(on_disk)[-max(self.num_versions, 1):])


class LoadedVersion:
    """One loaded SavedModel version: its signatures, their inputs and metadata."""

    def __init__(self, model_name: str, version: int, path: str):
        self.model_name = model_name
        self.version = version
        self.path = path
        self._saved_model = tf.saved_model.load(path)
        self._signatures = dict(self._saved_model.signatures)
        self.input_specs = {}
        for name, function in self._signatures.items():
            _, kwargs = function.structured_input_signature
            self.input_specs[name] = {
                key: InputSpec(np.dtype(spec.dtype.as_numpy_dtype), tuple(spec.shape.as_list()))
                for key, spec in kwargs.items()
            }
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as stream:
            proto.ParseFromString(stream.read())
        signature_defs = proto.meta_graphs[0].signature_def
        # SignatureDefMap printed as TF Serving prints it (field names kept, defaults shown).
        self.signature_def_map = {
            "signature_def": {
                key: json_format.MessageToDict(
                    signature_defs[key], always_print_fields_with_no_presence=True, preserving_proto_field_name=True
                )
                for key in sorted(signature_defs)
            }
        }

    def inputs_of(self, signature_name: str) -> Mapping[str, InputSpec]:
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self.input_specs:
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        return self.input_specs[name]

    def signature(self, signature_name: str = ""):
        """The callable signature (a ConcreteFunction taking keyword tensors)."""
        function = self._signatures.get(signature_name or DEFAULT_SIGNATURE)
        if function is None:
            raise InvalidArgument(f'Serving signature name: "{signature_name}" not found in signature def')
        return function

    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        function = self.signature(signature_name)
        try:
            outputs = function(**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.InvalidArgumentError as error:
            raise InvalidArgument(error.message) from None
        except tf.errors.OpError as error:
            raise Internal(error.message) from None
        return {key: value.numpy() for key, value in outputs.items()}

    def warm_up(self) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests``; returns the record count."""
        logs = protos.read_warmup_file(os.path.join(self.path, protos.WARMUP_RELATIVE_PATH))
        for log in logs:
            if not log.HasField("predict_log"):
                raise ValueError("only predict_log warm-up records are supported")
            request = log.predict_log.request
            self.predict(request.model_spec.signature_name, protos.request_inputs(request))
        return len(logs)


def _has_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
        os.path.join(path, "saved_model.pbtxt")
    )


class ModelRepository:
    """The versions of one model name under ``base_path``, kept in line with the disk."""

    def __init__(
        self,
        model_name: str,
        base_path: str,
        version_policy: VersionPolicy = VersionPolicy(),
        version_labels: Mapping[str, int] | None = None,
        warm_up: bool = True,
    ):
        self.model_name = model_name
        self.base_path = base_path
        self.version_policy = version_policy
        self.version_labels = dict(version_labels or {})
        self._warm_up = warm_up
        self._lock = threading.Lock()  # guards the two dicts below; loads run outside it
        self._available: dict[int, LoadedVersion] = {}
        self._states: dict[int, tuple[str, str, str]] = {}  # version -> (state, error_code, message)
        self._failed: dict[int, float] = {}  # version -> mtime of the saved_model.pb that failed
        self._poll_lock = threading.Lock()  # one poll at a time

    def versions_on_disk(self) -> list[int]:
        if not os.path.isdir(self.base_path):
            return []
        versions = []
        for name in os.listdir(self.base_path):
            path = os.path.join(self.base_path, name)
            # Only complete integer directories: an export in progress has a hidden name.
            if name.isdigit() and os.path.isdir(path) and _has_saved_model(path):
                versions.append(int(name))
        return sorted(versions)

    def _saved_model_mtime(self, version: int) -> float:
        try:
            return os.path.getmtime(os.path.join(self.base_path, str(version), "saved_model.pb"))
        except OSError:
            return 0.0

    def poll(self) -> bool:
        """Loads wanted versions not yet loaded, then unloads unwanted ones.

        Returns whether a version was loaded.
        """
        loaded_any = False
        with self._poll_lock:
            for _ in range(3):  # a failed load lets the policy pick the next version
                candidates = [
                    v for v in self.versions_on_disk()
                    if v not in self._failed or self._failed[v] != self._saved_model_mtime(v)
                ]
                wanted = self.version_policy.choose(candidates)
                with self._lock:
                    to_load = sorted((v for v in wanted if v not in self._available), reverse=True)
                if not to_load:
                    break
                for version in to_load:  # newest first: it is the one served
                    loaded_any |= self._load(version)
            with self._lock:
                if not any(v in self._available for v in wanted):
                    return loaded_any  # keep serving what we have until a wanted version is up
                for version in [v for v in self._available if v not in wanted]:
                    del self._available[version]  # in-flight requests keep their reference
                    self._states[version] = ("END", "OK", "")
                    logging.info("unloaded %s version %d", self.model_name, version)
        return loaded_any

    def _load(self, version: int) -> bool:
        path = os.path.join(self.base_path, str(version))
        with self._lock:
            self._states[version] = ("LOADING", "OK", "")
        try:
            loaded = LoadedVersion(self.model_name, version, path)
            records = loaded.warm_up() if self._warm_up else 0
        except Exception as error:  # a broken version must not take the server down
            self._failed[version] = self._saved_model_mtime(version)
            with self._lock:
                self._states[version] = ("END", "UNKNOWN", f"Failed to load version {version}: {error}")
            logging.error("failed to load %s version %d: %s", self.model_name, version, error)
            return False
        with self._lock:
            self._available[version] = loaded
            self._states[version] = ("AVAILABLE", "OK", "")
        logging.info("loaded %s version %d (%d warm-up records)", self.model_name, version, records)
        return True

    def _label_version(self, label: str) -> int:
        if label not in self.version_labels:
            raise InvalidArgument(f"Unrecognized servable version label: {label}")
        return self.version_labels[label]

    def get(self, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The version to serve a request with (the latest available by default)."""
        if label is not None:
            version = self._label_version(label)
        with self._lock:
            if version is None:
                if not self._available:
                    raise NotFound(f"Servable not found for request: Latest({self.model_name})")
                return self._available[max(self._available)]
            if version not in self._available:
                raise NotFound(f"Servable not found for request: Specific({self.model_name}, {version})")
            return self._available[version]

    def status(self, version: int | None = None, label: str | None = None) -> list[tuple[int, str, str, str]]:
        """(version, state, error_code, error_message) rows of GetModelStatus, newest first."""
        if label is not None:
            version = self._label_version(label)
        with self._lock:
            if version is not None:
                if version not in self._states:
                    raise NotFound(f"Could not find version {version} of model {self.model_name}")
                return [(version, *self._states[version])]
            if not self._states:
                raise NotFound(f"Could not find any versions of model {self.model_name}")
            return [(v, *self._states[v]) for v in sorted(self._states, reverse=True)]


def freeze_heap() -> None:
    """Moves the objects alive now (TensorFlow's, the loaded models') out of the GC's sight.

    Full collections would otherwise rescan them while requests allocate many lists.
    Garbage is collected first: frozen objects are never freed.
    """
    gc.collect()
    gc.freeze()


class RepositoryPoller:
    """Polls repositories every ``interval_s`` seconds on a daemon thread."""

    def __init__(self, repositories: Sequence[ModelRepository], interval_s: float):
        self._repositories = list(repositories)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-version-poller", daemon=True)

    def start(self) -> "RepositoryPoller":
        if self._interval_s > 0:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            loaded = False
            for repository in self._repositories:
                try:
                    loaded |= repository.poll()
                except Exception:  # keep polling whatever one poll did
                    logging.exception("polling %s failed", repository.model_name)
            if loaded:
                freeze_heap()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)


def repositories_from_config(text: str, config_dir: str = ".", warm_up: bool = True) -> list[ModelRepository]:
    """ModelRepositories from a TF Serving ``models.config`` (text ModelServerConfig).

    A relative ``base_path`` is taken relative to ``config_dir``.
    """
    config = protos.parse_text_config("ModelServerConfig", text)
    repositories = []
    for model in config.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ValueError(f"model {model.name!r}: unsupported model_platform {model.model_platform!r}")
        policy_proto = model.model_version_policy
        choice = policy_proto.WhichOneof("policy_choice")
        if choice == "all":
            policy = VersionPolicy("all")
        elif choice == "specific":
            policy = VersionPolicy("specific", versions=tuple(policy_proto.specific.versions))
        else:
            policy = VersionPolicy("latest", num_versions=policy_proto.latest.num_versions or 1)
        base_path = os.path.join(config_dir, model.base_path)
        repositories.append(ModelRepository(model.name, base_path, policy, dict(model.version_labels), warm_up))
    return repositories

