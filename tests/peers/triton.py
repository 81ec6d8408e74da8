"""A real tritonserver (from the nvidia-pytriton wheel in .venv-triton) for tests, and the models it serves.

Start one with :class:`TritonPeer` on free loopback ports over a repository rendered into ``tmp_path``. The ONNX
models built here have the ``ich_detector`` I/O contract (``image`` [-1,1,256,256] -> ``logit`` [-1,1],
``location_logit`` [-1,2]) and are small and deterministic, so that versions differ in a known way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton.sh"
SOURCE_CONFIG = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "image" data_type: TYPE_FP32 dims: [ 1, 256, 256 ] }} ]
output [
  {{ name: "logit" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "location_logit" data_type: TYPE_FP32 dims: [ 2 ] }}
]
"""


def make_test_onnx(path: Path, seed: int) -> Path:
    """Write a small ONNX model with the ich_detector I/O; ``seed`` picks its weights (so versions differ).

    image -> 32x32 average pool -> flatten (64 features) -> two linear heads (logit, location_logit).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 2, (64, 1)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.array([rng.normal()], np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 2, (64, 2)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(0, 1, 2).astype(np.float32), "b2")
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "w1", "b1"], ["logit"]),
        helper.make_node("Gemm", ["features", "w2", "b2"], ["location_logit"]),
    ]
    graph = helper.make_graph(
        nodes, "ich_detector_test",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 256, 256])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("location_logit", TensorProto.FLOAT, ["N", 2])],
        initializer=[w1, b1, w2, b2],
    )
    # opset 17 / IR 8: loadable by the ONNX Runtime in both venvs (router's and Triton's).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_source_repository(root: Path, versions: dict[int, int], name: str = "ich_detector") -> Path:
    """A source repository (committed layout) with test ONNX models; ``versions`` maps version -> weight seed."""
    model = root / name
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(SOURCE_CONFIG.format(name=name))
    for version, seed in versions.items():
        make_test_onnx(model / str(version) / "model.onnx", seed)
    return root


def study_batch(n: int = 8, seed: int = 0) -> np.ndarray:
    """A float32 batch shaped like a preprocessed study, (n, 1, 256, 256), values in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 256, 256)).astype(np.float32)


class TritonPeer:
    """One tritonserver process on free loopback ports; ``explicit`` model control unless told otherwise.

    Use as a context manager; :meth:`stop` and :meth:`start` restart it on the same ports (for outage tests).
    """

    def __init__(self, repository: Path, workdir: Path, mode: str = "explicit", extra: tuple[str, ...] = ()):
        self.repository = Path(repository)
        self.workdir = Path(workdir)
        self.mode = mode
        self.extra = extra
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "tritonserver.log"
        self._shm_before: set[str] = set()

    @property
    def url(self) -> str:
        """HTTP endpoint, ``host:port`` (what ``inference.url`` takes)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """gRPC endpoint, ``host:port``."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Triton's own Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 120.0, wait_models: tuple[str, ...] = ()) -> TritonPeer:
        """Start tritonserver and wait until it is live (and ``wait_models`` are ready)."""
        env = dict(os.environ, TRITON_HTTP_PORT=str(self.http_port), TRITON_GRPC_PORT=str(self.grpc_port),
                   TRITON_METRICS_PORT=str(self.metrics_port), TRITON_MODEL_CONTROL_MODE=self.mode,
                   TRITON_SERVER_DIR=str(self.workdir / "server"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._shm_before = _stub_regions()
        log = self.log_path.open("ab")
        # Triton waits exit-timeout seconds for clients' keep-alive connections before it unloads the models; tests
        # keep clients open, so keep that short (the python stubs must still get to exit and free their memory).
        self.proc = subprocess.Popen(
            [str(SCRIPT), str(self.repository), "--exit-timeout-secs=5", *self.extra], env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        paths = ["/v2/health/live", *(f"/v2/models/{m}/ready" for m in wait_models)]
        while paths:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tritonserver not ready ({paths[0]}) after {timeout}s:\n{self.log()[-4000:]}")
            if self._get(paths[0]) == 200:
                paths.pop(0)
            else:
                time.sleep(0.2)
        return self

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.url}{path}", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def stop(self) -> None:
        """Stop tritonserver (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            # The python-backend stubs are in the same session; take them down with the server.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # A stub that failed to initialise (the malformed-model tests) leaves its region behind: remove the ones
        # this server created that no process maps any more.
        mapped = _mapped_files()
        for name in _stub_regions() - self._shm_before:
            if f"/dev/shm/{name}" not in mapped:
                Path("/dev/shm", name).unlink(missing_ok=True)

    def log(self) -> str:
        """Everything tritonserver printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> TritonPeer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stub_regions() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("triton_python_backend_shm_region_*")} if shm.is_dir() else set()


def _mapped_files() -> set[str]:
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split(maxsplit=5)[-1].strip() for line in maps.read_text().splitlines()
                          if "/dev/shm/" in line)
        except OSError:
            continue  # the process ended or is not ours to read
    return mapped


#: Wraps a rendered python-backend model so that the test decides when it executes (see :func:`hold_executions`).
_HELD_MODEL_PY = """\
\"\"\"Test wrapper (tests.peers.triton.hold_executions): records each execution, then waits for the release file.\"\"\"

import importlib.util
import os
import time

import triton_python_backend_utils as pb_utils

GATE = {gate!r}
_spec = importlib.util.spec_from_file_location(
    "rendered_model", os.path.join(os.path.dirname(os.path.abspath(__file__)), "rendered_model.py"))
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


class TritonPythonModel(_module.TritonPythonModel):
    def execute(self, requests):
        # One line per execution: the tag (first input value) of each request in the batch, in the batch's order.
        tags = [str(int(pb_utils.get_input_tensor_by_name(r, {input!r}).as_numpy().flat[0])) for r in requests]
        with open(os.path.join(GATE, "executions"), "a") as ledger:
            ledger.write(" ".join(tags) + "\\n")
        while not os.path.exists(os.path.join(GATE, "release")):
            time.sleep(0.01)
        return super().execute(requests)
"""


class HeldModel:
    """A rendered python-backend model whose executions the test holds and releases (:func:`hold_executions`).

    Every execution first appends the tags of its requests (the integer value of each request's first input
    element) to a ledger, then waits until :meth:`release` (the file ``release`` in ``gate``) exists. With one
    model instance, the first request executes and waits while the following ones queue in Triton's scheduler, so
    a test controls exactly what is queued when, independent of how fast the machine is.
    """

    def __init__(self, gate: Path) -> None:
        self.gate = gate

    def hold(self) -> None:
        """From now on, executions wait (the one running now, if any, has already been let go)."""
        (self.gate / "release").unlink(missing_ok=True)

    def release(self) -> None:
        """Let every waiting and future execution run."""
        (self.gate / "release").touch()

    def executions(self) -> list[list[int]]:
        """The tags of the requests of each execution so far, in execution order."""
        ledger = self.gate / "executions"
        if not ledger.exists():
            return []
        return [[int(t) for t in line.split()] for line in ledger.read_text().splitlines()]

    def clear(self) -> None:
        """Forget the executions recorded so far."""
        (self.gate / "executions").unlink(missing_ok=True)


def hold_executions(model_dir: Path, version: int, gate: Path, input_name: str = "image") -> HeldModel:
    """Wrap the rendered python-backend model in ``model_dir`` (before Triton loads it) so the test holds it.

    The model's rendered ``config.pbtxt`` (dynamic batching, priority levels, queue policy) is left as rendered:
    that is what a test of Triton's scheduling checks. Only ``<version>/model.py`` is wrapped.
    """
    gate.mkdir(parents=True, exist_ok=True)
    version_dir = model_dir / str(version)
    (version_dir / "model.py").rename(version_dir / "rendered_model.py")
    (version_dir / "model.py").write_text(_HELD_MODEL_PY.format(gate=str(gate), input=input_name))
    held = HeldModel(gate)
    held.release()  # Triton runs no warm-up here, but a held model must not block loading in case it ever does
    return held


def pending_requests(peer: TritonPeer, model: str, version: int) -> int:
    """Triton's own count of requests queued for ``model`` and not yet executing (its Prometheus metric)."""
    text = urllib.request.urlopen(peer.metrics_url, timeout=10).read().decode()
    wanted = f'nv_inference_pending_request_count{{model="{model}",version="{version}"}}'
    for line in text.splitlines():
        if line.startswith(wanted):
            return int(float(line.split()[-1]))
    raise AssertionError(f"Triton reports no {wanted}; metrics:\n{text[:2000]}")


def serve(source: Path, workdir: Path, mode: str = "explicit", versions: dict | None = None) -> TritonPeer:
    """Render ``source`` for the cpu-python target into ``workdir/models`` and start Triton on it (all loaded).

    The lead's end-to-end tests use this with the committed ``model_repository``: ``peer.url`` is what the routing
    config's ``inference.url`` takes (``backend: triton``). Stop it with ``peer.stop()`` or use it as a context.
    """
    from pacsflow_router.models import repository

    plan = repository.render_repository(source, workdir / "models", "cpu-python", versions)
    ensembles = tuple(m for m in plan.models if not m.endswith(("_onnx", "_postprocess")))
    return TritonPeer(workdir / "models", workdir, mode).start(wait_models=ensembles)


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory) -> Iterator[TritonPeer]:
    """A running Triton serving the committed ``model_repository`` (import this fixture into a test module)."""
    peer = serve(ROOT / "model_repository", tmp_path_factory.mktemp("triton"))
    try:
        yield peer
    finally:
        peer.stop()
