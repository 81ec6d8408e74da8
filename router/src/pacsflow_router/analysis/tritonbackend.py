"""The Triton inference backend: the one module that talks to Triton (tritonclient).

A study's preprocessed batch goes to the ensemble :func:`modelrepo.ensemble_name` ``(model, version)`` at that
version, in chunks of at most the ensemble's ``max_batch_size``, as binary tensors (HTTP or gRPC) or, when Triton runs
on the same host, through a system shared-memory region registered once per client thread. The router's priority
(pipeline.PRIORITY: 1 triage, 2 assistive, 3 silent; 0 = the model's default) is Triton's request priority, so the
rendered models' ``priority_levels`` serve triage first; the ensemble passes it on to its steps.

Triton's errors map onto the router's in one place, :meth:`TritonBackend._classify`:

====================================================  ===================================================
Triton says                                           router raises
====================================================  ===================================================
connection refused / reset / timed out                InferenceUnavailableError (the study waits, retried)
model in the repository but not READY (loading,       InferenceUnavailableError, with Triton's reason
failed to load), queue full, queue timeout
ensemble for that version not in the repository       ModelNotFoundError (permanent, audited)
anything else (bad shape, backend exception)          InferenceError
====================================================  ===================================================
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from prometheus_client import Counter, Gauge, Histogram
from tritonclient.utils import InferenceServerException

from ..config import Inference, ModelRef
from ..domain import ModelOutput
from ..errors import InferenceError, InferenceUnavailableError, ModelNotFoundError
from ..metrics import REGISTRY
from ..models.repository import MANIFEST_PARAMETERS, PRIORITY_LEVELS, ensemble_name, version_models
from .manifest import MANIFEST_FILE

log = logging.getLogger(__name__)

INPUT = "image"
OUTPUTS = ("probability", "location")
OUTCOMES = ("ok", "unavailable", "model-not-found", "error")

REQUEST_SECONDS = Histogram(
    "pacsflow_triton_request_seconds", "Round trip of one Triton request (one study chunk), client side.",
    ["model", "version"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
REQUESTS = Counter(
    "pacsflow_triton_requests", "Triton requests by outcome (ok, unavailable, model-not-found, error).",
    ["model", "version", "outcome"], registry=REGISTRY)
IN_FLIGHT = Gauge(
    "pacsflow_triton_requests_in_flight", "Requests sent to Triton and not answered yet (queued or running there).",
    ["model", "version"], registry=REGISTRY)

# Messages Triton uses for transient states of a model that exists (core/src/*.cc, 2.51).
_TRANSIENT = ("exceeds maximum queue size", "request timeout expired", "has no available versions",
              "is not ready", "unavailable", "unable to find system shared memory region")
_region_ids = itertools.count()


@dataclass
class _Region:
    name: str
    handle: object
    byte_size: int


@dataclass
class _ThreadState:
    client: httpclient.InferenceServerClient | grpcclient.InferenceServerClient
    region: _Region | None = None
    registered: set[str] = field(default_factory=set)


class TritonBackend:
    """Runs models on a Triton server; implements ``inference.InferenceBackend``.

    Parameters
    ----------
    url : str
        ``host:port`` of Triton's HTTP or gRPC endpoint (matching ``protocol``).
    protocol : {"http", "grpc"}
        Client protocol; both send tensors as raw bytes.
    timeout_seconds : float
        Per-request timeout: connection, network, and Triton's own queue timeout for the request.
    shared_memory : bool
        Pass the input batch through system shared memory (only when Triton runs on this host).
    """

    def __init__(self, url: str, protocol: str = "http", timeout_seconds: float = 60.0, shared_memory: bool = False):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        self.url = url
        self.protocol = protocol
        self.timeout_seconds = timeout_seconds
        self.shared_memory = shared_memory
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()
        self._max_batch: dict[str, int] = {}

    @classmethod
    def from_config(cls, inference: Inference) -> TritonBackend:
        """The backend for the routing config's ``inference`` section (``backend: triton``)."""
        return cls(inference.url or "", inference.protocol, inference.timeout_seconds, inference.shared_memory)

    # -- clients -----------------------------------------------------------------------------------------------
    def _state(self) -> _ThreadState:
        # tritonclient's clients are not safe to share between threads; the router's pipeline and the benchmarks
        # call from several, so each thread gets its own client (and its own shared-memory region).
        state = getattr(self._local, "state", None)
        if state is None:
            if self.protocol == "http":
                client = httpclient.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_seconds, network_timeout=self.timeout_seconds)
                _no_delay(client)
            else:
                client = grpcclient.InferenceServerClient(self.url)
            state = _ThreadState(client)
            self._local.state = state
            with self._lock:
                self._states.append(state)
        return state

    def _region_for(self, state: _ThreadState, byte_size: int) -> _Region:
        region = state.region
        if region is None or region.byte_size < byte_size:
            if region is not None:
                self._drop_region(state)
            name = f"pacsflow_{os.getpid()}_{next(_region_ids)}"
            # Grow in whole studies' worth so that a slightly bigger study does not re-register every time.
            size = max(byte_size, 64 * 256 * 256 * 4)
            region = _Region(name, shm.create_shared_memory_region(name, "/" + name, size), size)
            state.region = region
        if region.name not in state.registered:
            state.client.register_system_shared_memory(region.name, "/" + region.name, region.byte_size)
            state.registered.add(region.name)
        return region

    def _drop_region(self, state: _ThreadState) -> None:
        region, state.region = state.region, None
        if region is None:
            return
        if region.name in state.registered:
            state.registered.discard(region.name)
            try:
                state.client.unregister_system_shared_memory(region.name)
            except (InferenceServerException, OSError) as exc:
                # Triton may be gone (its registrations with it); the local region is still ours to free.
                log.debug("unregistering shared memory %s failed: %s", region.name, exc)
        shm.destroy_shared_memory_region(region.handle)

    def _reset(self, state: _ThreadState) -> None:
        # A gRPC channel that failed to connect backs off for up to minutes; a fresh client reconnects at once.
        self._local.state = None
        with self._lock:
            if state in self._states:
                self._states.remove(state)
        try:
            self._drop_region(state)
            state.client.close()
        except (InferenceServerException, OSError) as exc:
            log.debug("closing a client of an unreachable Triton: %s", exc)

    def close(self) -> None:
        """Unregister and free the shared-memory regions and close the clients."""
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            self._drop_region(state)
            state.client.close()

    # -- the InferenceBackend interface -----------------------------------------------------------------------
    def ready(self, model: ModelRef) -> bool:
        """Whether Triton serves ``model`` at its pinned version right now."""
        state = self._state()
        try:
            return bool(state.client.is_model_ready(ensemble_name(model.name, model.version), str(model.version)))
        except (InferenceServerException, OSError) as exc:
            log.debug("readiness of %s v%d unknown: %s", model.name, model.version, exc)
            if isinstance(exc, OSError) or _unreachable(exc):
                self._reset(state)
            return False

    def served_manifest(self, model: ModelRef) -> dict[str, str] | None:
        """The manifest files that Triton's ensemble for ``model`` carries in its ``parameters`` (file name -> text,
        :data:`~pacsflow_router.models.repository.MANIFEST_PARAMETERS`), or None when it carries no ``model.json``
        (a repository rendered before ensembles carried them).

        Raises
        ------
        InferenceUnavailableError, ModelNotFoundError, InferenceError
            As :meth:`infer` does: Triton unreachable, no such version, anything else.
        """
        name = ensemble_name(model.name, model.version)
        state = self._state()
        try:
            if self.protocol == "grpc":
                config = state.client.get_model_config(name, str(model.version), as_json=True)["config"]
            else:
                config = state.client.get_model_config(name, str(model.version))
        except (InferenceServerException, OSError) as exc:
            raise self._classify(state, model, name, exc) from None
        parameters = config.get("parameters") or {}
        files = {file: parameters[key].get("string_value", "") for file, key in MANIFEST_PARAMETERS.items()
                 if key in parameters}
        return files if files.get(MANIFEST_FILE) else None

    def infer(self, model: ModelRef, batch: np.ndarray, *, priority: int = 0) -> ModelOutput:
        """Run one study's batch through the ensemble for ``model`` at its pinned version.

        Parameters
        ----------
        model : config.ModelRef
            Source model name and pinned version.
        batch : numpy.ndarray
            ``(N, 1, 256, 256)`` float32, one row per slice.
        priority : int
            Triton priority level (1 is served first); 0 uses the model's default (the lowest, silent).

        Returns
        -------
        domain.ModelOutput
            ``probability`` (N,) and ``location`` (N, 2).

        Raises
        ------
        InferenceUnavailableError
            Triton is unreachable, the model is not ready, or its queue is full: retry later.
        ModelNotFoundError
            Triton's repository has no such model version.
        InferenceError
            Triton rejected the request for another reason.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        name = ensemble_name(model.name, model.version)
        labels = (model.name, str(model.version))
        priority = min(max(int(priority), 0), PRIORITY_LEVELS)
        state = self._state()
        try:
            max_batch = self._max_batch_size(state, name, model.version)
            probabilities, locations = [], []
            for start in range(0, batch.shape[0], max_batch):
                p, loc = self._request(state, name, model.version, batch[start:start + max_batch], priority, labels)
                probabilities.append(p)
                locations.append(loc)
        except (InferenceServerException, OSError) as exc:
            error = self._classify(state, model, name, exc)
            REQUESTS.labels(*labels, _outcome(error)).inc()
            raise error from None
        REQUESTS.labels(*labels, "ok").inc()
        return ModelOutput(probability=np.concatenate(probabilities).reshape(-1),
                           location=np.concatenate(locations).reshape(-1, 2))

    # -- internals ---------------------------------------------------------------------------------------------
    def _max_batch_size(self, state: _ThreadState, name: str, version: int) -> int:
        if name not in self._max_batch:
            config = state.client.get_model_config(name, str(version))
            if self.protocol == "grpc":
                config = {"max_batch_size": config.config.max_batch_size}
            self._max_batch[name] = int(config.get("max_batch_size") or 1)
        return self._max_batch[name]

    def _request(self, state: _ThreadState, name: str, version: int, chunk: np.ndarray, priority: int,
                 labels: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        module = httpclient if self.protocol == "http" else grpcclient
        tensor = module.InferInput(INPUT, list(chunk.shape), "FP32")
        if self.shared_memory:
            region = self._region_for(state, chunk.nbytes)
            shm.set_shared_memory_region(region.handle, [chunk])
            tensor.set_shared_memory(region.name, chunk.nbytes)
        elif self.protocol == "http":
            tensor.set_data_from_numpy(chunk, binary_data=True)
        else:
            tensor.set_data_from_numpy(chunk)
        if self.protocol == "http":
            outputs = [httpclient.InferRequestedOutput(o, binary_data=True) for o in OUTPUTS]
        else:
            outputs = [grpcclient.InferRequestedOutput(o) for o in OUTPUTS]
        kwargs = {"model_version": str(version), "outputs": outputs, "priority": priority,
                  # Triton's queue timeout, in microseconds, so that a request never outlives the client's wait.
                  "timeout": int(self.timeout_seconds * 1e6)}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_seconds
        IN_FLIGHT.labels(*labels).inc()
        started = time.perf_counter()
        try:
            result = state.client.infer(name, [tensor], **kwargs)
        except InferenceServerException as exc:
            if self.shared_memory and "shared memory" in str(exc).lower():
                # Triton restarted and forgot our registration: register again once and resend.
                state.registered.clear()
                region = self._region_for(state, chunk.nbytes)
                tensor.set_shared_memory(region.name, chunk.nbytes)
                result = state.client.infer(name, [tensor], **kwargs)
            else:
                raise
        finally:
            IN_FLIGHT.labels(*labels).dec()
        REQUEST_SECONDS.labels(*labels).observe(time.perf_counter() - started)
        return result.as_numpy(OUTPUTS[0]), result.as_numpy(OUTPUTS[1])

    def _repository_index(self, state: _ThreadState) -> dict[str, dict[str, str]]:
        """Model name -> {version: state/reason} from Triton's repository index."""
        index = state.client.get_model_repository_index()
        if self.protocol == "grpc":
            entries = [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
                       for m in index.models]
        else:
            entries = index
        out: dict[str, dict[str, str]] = {}
        for entry in entries:
            text = entry.get("state", "") + (f" ({entry['reason']})" if entry.get("reason") else "")
            out.setdefault(entry["name"], {})[str(entry.get("version", ""))] = text
        return out

    def _classify(self, state: _ThreadState, model: ModelRef, name: str, exc: Exception) -> InferenceError:
        what = f"model {model.name} version {model.version} (Triton model {name})"
        message = str(exc)
        if isinstance(exc, OSError) or _unreachable(exc):
            self._max_batch.pop(name, None)
            self._reset(state)
            return InferenceUnavailableError(f"Triton at {self.url} is unreachable for {what}: {_short(message)}; "
                                             "the study stays queued and is retried")
        try:
            index = self._repository_index(state)
        except (InferenceServerException, OSError) as index_exc:
            return InferenceUnavailableError(f"Triton at {self.url} failed for {what} and its repository index "
                                             f"is unavailable ({_short(str(index_exc))}); retried later")
        if name not in index:
            versions = sorted(int(n.rsplit("_v", 1)[1]) for n in index
                              if n.startswith(f"{model.name}_v") and n.rsplit("_v", 1)[1].isdigit())
            return ModelNotFoundError(
                f"{what} is not in Triton's model repository (versions there: {versions or 'none'}); drop "
                f"model_repository/{model.name}/{model.version}/model.onnx and render, or pin an existing version")
        states = index[name]
        status = states.get(str(model.version)) or next(iter(states.values()), "")
        if not status.startswith("READY") or any(t in message.lower() for t in _TRANSIENT):
            # An ensemble whose step failed to load has no state of its own: the step's reason says what is wrong.
            reasons = [f"{m} {state}" for m in version_models(model.name, model.version)
                       for state in index.get(m, {}).values() if state and not state.startswith("READY")]
            detail = reasons[0] if reasons else (status or message)
            return InferenceUnavailableError(f"{what} is not ready in Triton ({_short(detail)}); "
                                             "the study stays queued and is retried")
        return InferenceError(f"Triton rejected {what}: {_short(message)}")

    # -- operations (tests, benchmarks, operator) ----------------------------------------------------------------
    def load(self, names: Iterable[str]) -> None:
        """Ask Triton (explicit model control) to load or reload ``names``, e.g. after a new version was rendered.

        Triton loads versions that appeared and keeps serving unchanged ones while it does.
        """
        client = self._state().client
        for name in names:
            client.load_model(name)
            self._max_batch.pop(name, None)

    def load_version(self, model: ModelRef) -> None:
        """Load (explicit model control) the Triton models that serve ``model`` at its version."""
        self.load(version_models(model.name, model.version))

    def repository_index(self) -> dict[str, dict[str, str]]:
        """Model name -> {version: state (reason)} as Triton reports it."""
        return self._repository_index(self._state())

    def statistics(self, model: ModelRef) -> dict[str, dict[str, Any]]:
        """Triton's inference statistics of the ensemble and its steps (HTTP JSON shape), keyed by model name."""
        client = self._state().client
        if self.protocol == "grpc":
            stats = client.get_inference_statistics(as_json=True)
        else:
            stats = client.get_inference_statistics()
        return {f"{e['name']}:{e['version']}": e for e in stats.get("model_stats", [])
                if e["name"].startswith(model.name)}


def _no_delay(client: httpclient.InferenceServerClient) -> None:
    # geventhttpclient leaves Nagle on, which costs ~40 ms per request here (request head and body go out as two
    # segments and wait for a delayed ACK); gRPC sets TCP_NODELAY itself. tritonclient has no option for it, so set
    # it on every socket its connection pool opens.
    pool = getattr(getattr(client, "_client_stub", None), "_connection_pool", None)
    if pool is not None:
        pool.after_connect = lambda sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _unreachable(exc: InferenceServerException) -> bool:
    text = str(exc).lower()
    status = str(exc.status() or "").lower()
    return ("connect" in text or "timed out" in text or "timeout" in text and "request timeout" not in text
            or "unavailable" in status or "deadline" in status or "failed to connect" in text)


def _short(message: str) -> str:
    # Triton's load errors carry Python tracebacks; the first line says what is wrong.
    return message.strip().splitlines()[0][:300] if message.strip() else "no detail"


def _outcome(error: InferenceError) -> str:
    if isinstance(error, InferenceUnavailableError):
        return "unavailable"
    if isinstance(error, ModelNotFoundError):
        return "model-not-found"
    return "error"
