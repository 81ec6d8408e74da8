"""GPU against CPU on the same study: DALI preprocessing, ONNX Runtime and Triton (run by ``bench/gpu.sh``).

``python -m bench.gpu [--slices 64] [--repeat 10] [--cpu-dry-run]``:

1. DALI: one phantom head CT (``--slices`` x 512x512) preprocessed for ich_detector v2 with ``device="cpu"`` and
   ``device="gpu"``; the two batches must agree (max abs difference printed), then ms per study and CPU/GPU.
2. ONNX Runtime in the router's process (EmbeddedOnnxBackend): CPUExecutionProvider against CUDAExecutionProvider,
   when the installed onnxruntime offers it (``onnxruntime-gpu``).
3. Triton: the bundled CPU tritonserver (target ``cpu-python``, tests/peers/triton.py) against a tritonserver
   that has the native onnxruntime backend (target ``gpu``: NGC image, ``$TRITONSERVER_HOME``, default
   ``/opt/tritonserver``), same batch, HTTP. TensorRT is reported when the server has a ``tensorrt`` backend
   (the gpu target renders ONNX on onnxruntime; TensorRT plans are not rendered).

Each part says plainly when what it needs is missing and goes on. ``--cpu-dry-run`` runs every path with the GPU
replaced by the CPU (the plumbing on a machine without a GPU; the ratios then mean nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pacsflow_router import domain
from pacsflow_router.analysis import preprocess
from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.analysis.tritonbackend import TritonBackend
from pacsflow_router.config import ModelRef
from pacsflow_router.models import phantom, repository
from tests.peers.net import free_port, stop_process
from tests.peers.triton import TritonPeer

REPO = Path(__file__).resolve().parents[1] / "model_repository"
MODEL = ModelRef(name="ich_detector", version=2)


def _ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: pipeline build, session, CUDA context, connection
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _line(label: str, cpu_ms: float, gpu_ms: float) -> None:
    print(f"   {label:28} CPU {cpu_ms:9.1f} ms   GPU {gpu_ms:9.1f} ms   CPU/GPU {cpu_ms / gpu_ms:6.2f}x")


def dali(series: domain.Series, repeat: int, gpu: str) -> np.ndarray:
    """Part 1; returns the CPU batch (the input of parts 2 and 3)."""
    spec = preprocess.load_spec(REPO, MODEL)
    cpu = preprocess.preprocess_series(series, spec, "dali", device="cpu")
    other = preprocess.preprocess_series(series, spec, "dali", device=gpu)  # type: ignore[arg-type]
    diff = float(np.abs(cpu - other).max())
    cpu_ms = _ms(lambda: preprocess.preprocess_series(series, spec, "dali", device="cpu"), repeat)
    gpu_ms = _ms(lambda: preprocess.preprocess_series(series, spec, "dali", device=gpu), repeat)  # type: ignore[arg-type]
    print(f"1. DALI preprocessing, {len(series.slices)} slices 512x512 -> {cpu.shape} (max |CPU-GPU| {diff:.2e})")
    _line("DALI", cpu_ms, gpu_ms)
    return cpu


def onnx_runtime(batch: np.ndarray, repeat: int, dry_run: bool) -> None:
    """Part 2: the embedded backend on each execution provider."""
    import onnxruntime as ort

    gpu_provider = "CPUExecutionProvider" if dry_run else "CUDAExecutionProvider"
    print("2. ONNX Runtime in the router's process (EmbeddedOnnxBackend)")
    if gpu_provider not in ort.get_available_providers():
        print(f"   skipped: onnxruntime {ort.__version__} offers {ort.get_available_providers()}, no CUDA "
              "(install onnxruntime-gpu to compare)")
        return
    cpu = EmbeddedOnnxBackend(REPO, intra_op_threads=os.cpu_count() or 1)
    gpu = EmbeddedOnnxBackend(REPO, providers=list(dict.fromkeys([gpu_provider, "CPUExecutionProvider"])))
    _line("ONNX Runtime", _ms(lambda: cpu.infer(MODEL, batch), repeat), _ms(lambda: gpu.infer(MODEL, batch), repeat))


def _render(target: str, out: Path) -> Path:
    source = out / "src"
    shutil.copytree(REPO / "ich_detector", source / "ich_detector", ignore=shutil.ignore_patterns("1"))
    repository.render_repository(source, out / "models", target, {"*": [MODEL.version]})
    return out / "models"


def _ready(port: int, model: str, proc: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{model} not ready on tritonserver after {timeout:.0f} s")


def triton(batch: np.ndarray, repeat: int, work: Path, dry_run: bool) -> None:
    """Part 3: the same batch through Triton on the CPU target and on the GPU target."""
    name = f"{MODEL.name}_v{MODEL.version}"
    print("3. Triton over HTTP, one study per request")
    home = Path(os.environ.get("TRITONSERVER_HOME", "/opt/tritonserver"))
    server = home / "bin" / "tritonserver"
    if not dry_run and not (server.exists() and (home / "backends" / "onnxruntime").is_dir()):
        print(f"   skipped: no tritonserver with the onnxruntime backend under {home} (NGC image "
              "nvcr.io/nvidia/tritonserver:<version>-py3, or set TRITONSERVER_HOME)")
        return
    if not dry_run:
        print(f"   TensorRT backend: {'present' if (home / 'backends' / 'tensorrt').is_dir() else 'absent'} "
              "(not rendered: the gpu target runs the ONNX file on onnxruntime)")
    with TritonPeer(_render("cpu-python", work / "cpu"), work / "cpu").start(wait_models=(name,)) as peer:
        backend = TritonBackend(peer.url)
        cpu_ms = _ms(lambda: backend.infer(MODEL, batch), repeat)
        backend.close()
    if dry_run:
        gpu_ms = cpu_ms
    else:
        http = free_port()
        log = (work / "tritonserver-gpu.log").open("wb")
        proc = subprocess.Popen([str(server), f"--model-repository={_render('gpu', work / 'gpu')}",
                                 f"--backend-directory={home / 'backends'}", "--http-address=127.0.0.1",
                                 f"--http-port={http}", f"--grpc-port={free_port()}",
                                 f"--metrics-port={free_port()}", "--disable-auto-complete-config"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _ready(http, name, proc)
            backend = TritonBackend(f"127.0.0.1:{http}")
            gpu_ms = _ms(lambda: backend.infer(MODEL, batch), repeat)
            backend.close()
        finally:
            stop_process(proc, 30)
            log.close()
    _line("Triton (CPU vs GPU target)", cpu_ms, gpu_ms)


def main(argv: list[str] | None = None) -> int:
    """Run the three comparisons and print the ratios; 0 unless a comparison that could run failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run every path with the CPU in place of the GPU (plumbing check; ratios meaningless)")
    args = parser.parse_args(argv)
    gpu = "cpu" if args.cpu_dry_run else "gpu"
    if not args.cpu_dry_run and not preprocess.gpu_available():
        print("DALI sees no CUDA device (driver, or a DALI wheel without CUDA): nothing to compare")
        return 1
    datasets, _ = phantom.generate_study(7, lesion=True, slices=args.slices)
    series = domain.Series("bench", "CT", "HEAD", "Head non-con",
                           [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])
    batch = dali(series, args.repeat, gpu)
    onnx_runtime(batch, args.repeat, args.cpu_dry_run)
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-gpu-") as tmp:
        triton(batch, args.repeat, Path(tmp), args.cpu_dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
