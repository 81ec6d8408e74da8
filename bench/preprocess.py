"""DALI (CPU here, GPU where present) vs the numpy reference: preprocessing one 64-slice 512x512 study.

Both run in this process on the same decoded series, for every committed ich_detector version (1: one brain
window channel; 2: brain, subdural and bone windows, three channels); the numbers are medians of ``--repeat``
runs after one warm-up (DALI builds its pipeline on first use). Also prints the embedded model's inference time
on the resulting batch, so the two halves of "preprocess + infer" can be compared.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import numpy as np

from pacsflow_router import domain
from pacsflow_router.analysis import preprocess
from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.config import ModelRef
from pacsflow_router.models import phantom

REPO = Path(__file__).resolve().parents[1] / "model_repository"


def _timed(fn, repeat: int) -> tuple[float, np.ndarray]:
    result = fn()  # warm-up: pipeline build, session load, caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    """Print per-study seconds of DALI CPU and numpy preprocessing and their ratio."""
    parser = argparse.ArgumentParser(prog="bench.preprocess")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args([] if argv is None else argv)
    datasets, _ = phantom.generate_study(7, lesion=True, slices=args.slices)
    series = domain.Series("bench", "CT", "HEAD", "Head non-con",
                           [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])
    device = "gpu" if preprocess.gpu_available() else "cpu"
    backend = EmbeddedOnnxBackend(REPO)
    n = len(series.slices)
    versions = sorted(int(p.name) for p in (REPO / "ich_detector").iterdir() if p.name.isdigit())
    for version in versions:
        model = ModelRef(name="ich_detector", version=version)
        spec = preprocess.load_spec(REPO, model)
        t_dali, a = _timed(functools.partial(preprocess.preprocess_series, series, spec, "dali", device=device),
                           args.repeat)
        t_numpy, b = _timed(functools.partial(preprocess.preprocess_series, series, spec, "numpy"), args.repeat)
        diff = float(np.abs(a - b).max())
        t_infer, _ = _timed(functools.partial(backend.infer, model, a), args.repeat)
        windows = ", ".join(w.name or f"{w.center:g}/{w.width:g}" for w in spec.channel_windows)
        print(f"ich_detector v{version}: one study ({n} slices 512x512 -> {n}x{spec.channels}x256x256; "
              f"windows {windows}), median of {args.repeat}:")
        print(f"  DALI {device:3}      {t_dali * 1000:8.1f} ms  ({n / t_dali:7.0f} slices/s)")
        print(f"  numpy         {t_numpy * 1000:8.1f} ms  ({n / t_numpy:7.0f} slices/s)")
        print(f"  ratio DALI/numpy time: {t_dali / t_numpy:.2f}  (max abs difference {diff:.2e})")
        print(f"  embedded ONNX inference of the batch: {t_infer * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
