"""The Triton path vs the embedded one, per study of 64 slices, against a real tritonserver started here.

``python -m bench.triton [--repeat N] [--slices N]``:

1. One study at a time: embedded ONNX Runtime (the router's EmbeddedOnnxBackend, as many threads as Triton's ORT
   gets) vs Triton over HTTP and gRPC, each with binary tensors and with system shared memory; ms per study (median)
   and the ratio to embedded.
2. 4 concurrent studies, dynamic batching on vs off (the same ensemble rendered twice, once with ``dynamic_batching``
   cleared): studies/s, at 64 slices per study (= max_batch_size, so nothing can be merged) and at 8.
3. Where the time goes, from Triton's statistics API: per request, client round trip vs Triton's request time, split
   into queue and compute of each step.

Model: the committed ``model_repository/ich_detector`` (every number is for the CPU-only python-backend target; the
GPU target needs NGC Triton on a GPU node).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.analysis.tritonbackend import TritonBackend
from pacsflow_router.config import ModelRef
from pacsflow_router.models import repository
from tests.peers.triton import TritonPeer, study_batch

REPO = Path(__file__).resolve().parents[1] / "model_repository"
MODEL = ModelRef(name="ich_detector", version=1)
UNBATCHED = ModelRef(name="nobatch", version=1)


def _interleaved_ms(runs: dict, repeat: int) -> dict[str, float]:
    """Median ms per variant, the variants taking turns so that load from other processes hits them alike."""
    for fn in runs.values():
        fn()  # warm-up: sessions, connections, shared-memory registration
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeat):
        for label, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(t) * 1000 for label, t in times.items()}


def _repository(tmp: Path) -> Path:
    """ich_detector v1 rendered, plus a copy called ``nobatch`` whose models have no dynamic batcher."""
    source = tmp / "src"
    shutil.copytree(REPO / "ich_detector", source / "ich_detector", ignore=shutil.ignore_patterns("[2-9]*"))
    shutil.copytree(source / "ich_detector", source / "nobatch")
    cfg = source / "nobatch" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "ich_detector"', 'name: "nobatch"'))
    out = tmp / "models"
    plan = repository.render_repository(source, out, "cpu-python", {"*": [1]})
    for name in plan.models:
        if name.startswith("nobatch") and name != "nobatch_v1":
            path = out / name / "config.pbtxt"
            config = repository.parse_config(path.read_text())
            config.ClearField("dynamic_batching")
            path.write_text(str(config))
    return out


def _concurrent(backend_factory, model: ModelRef, slices: int, studies: int, per_thread: int) -> float:
    """Studies per second with ``studies`` threads each sending ``per_thread`` studies."""
    batch = study_batch(slices)
    barrier = threading.Barrier(studies + 1)

    def worker() -> None:
        backend = backend_factory()
        backend.infer(model, batch)  # connect and warm up before the clock starts
        barrier.wait()
        try:
            for _ in range(per_thread):
                backend.infer(model, batch)
        finally:
            backend.close()

    threads = [threading.Thread(target=worker) for _ in range(studies)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return studies * per_thread / (time.perf_counter() - started)


def _split(backend: TritonBackend, model: ModelRef, batch: np.ndarray, repeat: int) -> dict[str, float]:
    """Average ms per request: client round trip, Triton's request time, and each step's queue/compute."""
    backend.infer(model, batch)
    before = backend.statistics(model)
    started = time.perf_counter()
    for _ in range(repeat):
        backend.infer(model, batch)
    client = (time.perf_counter() - started) / repeat * 1000
    after = backend.statistics(model)
    out = {"client round trip": client}

    def delta(key: str, *path: str) -> float:
        a, b = before.get(key), after[key]
        get = lambda d: float(_dig(d, path) or 0)  # noqa: E731
        return (get(b) - (get(a) if a else 0)) / 1e6 / repeat

    for key in sorted(after):
        name = key.split(":")[0]
        stats = "inference_stats"
        if name == repository.ensemble_name(model.name, model.version):
            out["triton request (ensemble)"] = delta(key, stats, "success", "ns")
        elif name.startswith(model.name):
            out[f"  {name} queue"] = delta(key, stats, "queue", "ns")
            out[f"  {name} compute"] = sum(delta(key, stats, part, "ns")
                                           for part in ("compute_input", "compute_infer", "compute_output"))
    return out


def _dig(data: dict, path: tuple[str, ...]):
    for part in path:
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data or 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the numbers; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.triton", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--slices", type=int, default=64)
    args = parser.parse_args(argv)
    batch = study_batch(args.slices)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-triton-") as tmp:
        models = _repository(Path(tmp))
        with TritonPeer(models, Path(tmp)).start(wait_models=("ich_detector_v1", "nobatch_v1")) as peer:
            embedded = EmbeddedOnnxBackend(REPO, intra_op_threads=cores)
            runs = {"embedded ONNX Runtime": lambda: embedded.infer(MODEL, batch)}
            backends = {}
            for protocol, url in (("http", peer.url), ("grpc", peer.grpc_url)):
                for shm in (False, True):
                    backend = backends[(protocol, url, shm)] = TritonBackend(url, protocol, 60, shm)
                    label = f"triton {protocol} {'shared memory' if shm else 'binary tensors'}"
                    runs[label] = lambda b=backend: b.infer(MODEL, batch)
            ms = _interleaved_ms(runs, args.repeat)
            base = ms["embedded ONNX Runtime"]
            print(f"1. one study of {args.slices} slices (median of {args.repeat}, variants interleaved, {cores} CPU "
                  "cores, no GPU)")
            for label, value in ms.items():
                print(f"   {label:34} {value:8.1f} ms   {value / base:.2f}x")
            # Parts 2 and 3 use the fastest Triton variant (labels after "embedded" follow ``backends``' order).
            _, (protocol, url, shm) = min(zip(list(ms.values())[1:], backends, strict=True))
            for backend in backends.values():
                backend.close()

            print(f"2. 4 concurrent studies, triton {protocol}{' + shm' if shm else ''}: studies/s")
            for slices in (args.slices, 8):
                rates = {}
                for label, model in (("dynamic batching on", MODEL), ("dynamic batching off", UNBATCHED)):
                    rates[label] = _concurrent(lambda: TritonBackend(url, protocol, 60, shm), model, slices, 4,
                                               max(args.repeat // 2, 3))
                on, off = rates["dynamic batching on"], rates["dynamic batching off"]
                print(f"   {slices:3d} slices/study: on {on:6.1f}/s   off {off:6.1f}/s   on/off {on / off:.2f}x")

            print(f"3. where the time goes, triton {protocol}{' + shm' if shm else ''}, ms per {args.slices}-slice "
                  "request (Triton statistics API)")
            backend = TritonBackend(url, protocol, 60, shm)
            for label, ms in _split(backend, MODEL, batch, args.repeat).items():
                print(f"   {label:44} {ms:8.2f}")
            backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
