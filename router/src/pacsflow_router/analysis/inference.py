"""Where models run: the backend interface, the embedded ONNX Runtime backend and the factory.

Every backend takes a preprocessed batch (float32 ``[N, C, rows, cols]``, as the model's ``preprocess.json``
says) and a pinned :class:`config.ModelRef`, and returns a :class:`domain.ModelOutput` already passed through
:func:`postprocess.postprocess`, so the pipeline never sees raw logits. The embedded backend reads the same
Triton-layout model repository Triton serves (``<repo>/<name>/<version>/model.onnx``); the Triton backend
lives in :mod:`pacsflow_router.analysis.tritonbackend` (the one module that imports tritonclient) and is imported
only when the config asks for it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..config import Inference, ModelRef
from ..domain import ModelOutput
from ..errors import InferenceError, ModelNotFoundError
from .postprocess import postprocess

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = ["InferenceBackend", "EmbeddedOnnxBackend", "make_backend", "ONNX_FILE"]

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"


def _ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception classes (they derive from Exception directly, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    found = tuple(c for c in (getattr(state, n, None) for n in names) if isinstance(c, type))
    return (RuntimeError, ValueError, *found)


@runtime_checkable
class InferenceBackend(Protocol):
    """Runs a pinned model version on a preprocessed batch."""

    def infer(self, model: ModelRef, batch: np.ndarray, *, priority: int = 0) -> ModelOutput:
        """Run ``model`` on ``batch`` and return per-slice probability and location.

        Parameters
        ----------
        model : config.ModelRef
            Model name and pinned version.
        batch : numpy.ndarray
            float32 ``[N, ...]`` in the model's input layout; N may exceed the model's max batch size.
        priority : int
            Scheduling priority (1 = most urgent; 0 = the backend's default). Backends without a queue ignore it.

        Raises
        ------
        ModelNotFoundError
            The name or version does not exist (permanent).
        InferenceUnavailableError
            The backend is down or the model not loaded yet (retry later).
        InferenceError
            The model failed on this input.
        """
        ...

    def ready(self, model: ModelRef) -> bool:
        """Whether ``model`` can serve requests now (never raises)."""
        ...

    def close(self) -> None:
        """Free what the backend holds (sessions, clients, shared-memory regions); it is not used afterwards."""
        ...


class EmbeddedOnnxBackend:
    """In-process ONNX Runtime over a Triton-layout model repository.

    Sessions are created on first use of each (name, version) and cached for the life of the backend.
    ``priority`` is accepted and ignored: in-process calls run immediately, in the caller's thread.

    Parameters
    ----------
    model_repository : str or Path
        Repository root, e.g. ``model_repository`` (relative paths resolve against the working directory now).
    intra_op_threads : int
        ONNX Runtime threads per session (the router shares its cores with ingest and DALI).
    max_batch : int
        Largest batch handed to one ``run`` call; larger batches run in chunks, bounding peak memory.
    providers : list of str, optional
        ONNX Runtime execution providers; default CPU.
    """

    def __init__(
        self,
        model_repository: str | Path,
        *,
        intra_op_threads: int = 1,
        max_batch: int = 64,
        providers: list[str] | None = None,
    ):
        self.model_repository = Path(model_repository).resolve()
        self.intra_op_threads = intra_op_threads
        self.max_batch = max_batch
        self.providers = providers or ["CPUExecutionProvider"]
        self._sessions: dict[tuple[str, int], InferenceSession] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Drop the cached sessions (their memory goes with them)."""
        with self._lock:
            self._sessions.clear()

    def model_path(self, model: ModelRef) -> Path:
        """``<repository>/<name>/<version>/model.onnx``."""
        return self.model_repository / model.name / str(model.version) / ONNX_FILE

    def _versions(self, name: str) -> list[int]:
        folder = self.model_repository / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / ONNX_FILE).is_file())

    def _session(self, model: ModelRef) -> InferenceSession:
        key = (model.name, model.version)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                return session
            path = self.model_path(model)
            if not path.is_file():
                versions = self._versions(model.name)
                if not (self.model_repository / model.name).is_dir():
                    hint = f"no model folder {model.name!r} in {self.model_repository}"
                else:
                    hint = f"available versions of {model.name!r}: {versions or 'none'}"
                raise ModelNotFoundError(
                    f"model {model.name!r} version {model.version} not found: expected {path} ({hint}); "
                    f"add the version to the model repository or pin an available one in the use case"
                )
            import onnxruntime as ort  # deferred: `pacsflow phantom` and the operator never need it

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.intra_op_threads
            options.inter_op_num_threads = 1
            try:
                session = ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
            except _ort_errors() as exc:
                raise InferenceError(
                    f"model {model.name!r} version {model.version} at {path} cannot be loaded by ONNX Runtime: {exc}"
                ) from None
            log.info("loaded model %s version %d from %s", model.name, model.version, path)
            self._sessions[key] = session
            return session

    def ready(self, model: ModelRef) -> bool:
        """True when the model file exists and ONNX Runtime loads it."""
        try:
            self._session(model)
        except InferenceError:
            return False
        return True

    def infer(self, model: ModelRef, batch: np.ndarray, *, priority: int = 0) -> ModelOutput:
        """Run the model on ``batch`` in chunks of ``max_batch`` (see :class:`InferenceBackend`)."""
        session = self._session(model)
        spec = session.get_inputs()[0]
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = spec.shape[1:]
        if batch.ndim != len(spec.shape) or any(
            isinstance(e, int) and e != a for e, a in zip(expected, batch.shape[1:], strict=True)
        ):
            raise InferenceError(
                f"model {model.name!r} version {model.version} takes {spec.name} of shape [N, "
                f"{', '.join(map(str, expected))}], got {list(batch.shape)}; check the preprocessing spec"
            )
        names = [o.name for o in session.get_outputs()]
        logits, locations = [], []
        for start in range(0, max(len(batch), 1), self.max_batch):
            chunk = batch[start:start + self.max_batch]
            if len(chunk) == 0:
                break
            try:
                outputs = dict(zip(names, session.run(None, {spec.name: chunk}), strict=True))
            except _ort_errors() as exc:
                raise InferenceError(f"model {model.name!r} version {model.version} failed: {exc}") from None
            logits.append(outputs["logit"])
            locations.append(outputs["location_logit"])
        if not logits:
            return ModelOutput(np.empty(0, np.float32), np.empty((0, 2), np.float32))
        probability, location = postprocess(np.concatenate(logits), np.concatenate(locations))
        return ModelOutput(probability=probability, location=location)


def make_backend(inference: Inference) -> InferenceBackend:
    """The backend the routing config's ``inference`` section asks for.

    Parameters
    ----------
    inference : config.Inference
        ``backend: embedded`` -> :class:`EmbeddedOnnxBackend` over ``modelRepository``;
        ``backend: triton`` -> :class:`pacsflow_router.analysis.tritonbackend.TritonBackend` at ``url``.
    """
    if inference.backend == "embedded":
        return EmbeddedOnnxBackend(inference.model_repository)
    if inference.backend == "triton":
        from .tritonbackend import (
            TritonBackend,  # deferred: tritonclient is heavy and only this path needs it
        )

        return TritonBackend.from_config(inference)
    raise InferenceError(f"unknown inference backend {inference.backend!r}; use 'embedded' or 'triton'")
