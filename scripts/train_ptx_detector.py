#!/usr/bin/env python3
"""Train the ``ptx_detector`` radiograph model on synthetic chest radiographs and export it to ONNX (not CI).

Usage (CPU, ~15 minutes on two idle cores; the defaults reproduce version 1)::

    python3 -m venv .venv-train && .venv-train/bin/pip install torch onnx onnxscript pydicom pydantic pyyaml scipy
    PYTHONPATH=router/src .venv-train/bin/python scripts/train_ptx_detector.py \
        --out model_repository/ptx_detector/1/model.onnx

Data: synthetic frontal chest radiographs (:mod:`pacsflow_router.models.radiograph_phantom`, seeds from ``--seed``,
far from the seeds the tests use), half with a pneumothorax (apical or lateral, 9-70 mm), hard negatives (skin
folds, scapula borders, device lines, ECG leads) on both classes and more often on negatives, every storage
variant the generator has (DX/CR, MONOCHROME1/2, 8-16 bits, with and without VOI window). Each image is
preprocessed exactly as the router does it: :func:`pacsflow_router.analysis.preprocess.radiograph_rescale` and the
numpy reference with the model's own ``preprocess.json`` (DALI is tested equal to it).

Model: the same ~30 k-parameter fully convolutional heatmap net as ``ich_detector`` (a 32x32 heatmap at stride 8;
image logit = the heatmap's maximum, location = its soft-argmax), trained with a per-cell BCE on the pleural-air
cells, a per-image BCE and an L1 loss on the location of positives.

ONNX I/O contract (shared by every model of the repository, so the router's postprocess and the Triton rendering
need nothing model-specific; opset 17, dynamic batch): input ``image`` float32 [-1, 1, 256, 256]; outputs ``logit``
float32 [-1, 1] (pre-sigmoid, pneumothorax in this image) and ``location_logit`` float32 [-1, 2] (pre-sigmoid
(row, column) of the pleural air's centre as fractions of the image extent). ``metadata_props`` carries
``algorithm_version`` (the model's own version string, written to the SR).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "router" / "src"))

from pacsflow_router.analysis.preprocess import (  # noqa: E402
    PreprocessSpec,
    load_spec,
    preprocess_numpy,
    radiograph_rescale,
)
from pacsflow_router.models import radiograph_phantom as rp  # noqa: E402

GRID = 32  # heatmap cells per side (stride 8 at 256x256)
# Training matrices: mostly small (fast to draw), some as large as real detectors so that the model sees the
# aliasing of an 8x downsample without antialiasing.
MATRICES = [(384, 384), (448, 384), (512, 512), (512, 416), (640, 512), (768, 640), (1024, 864), (1024, 1024)]
VERSION = "1.0.0"


class PtxDetector(nn.Module):
    """Heatmap net: conv stem (stride 8) + dilated context + 1x1 head; image logit = max, location = soft-argmax."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(1, 12, 2), block(12, 24, 2), block(24, width, 2),
            block(width, width, dilation=2), block(width, width, dilation=4), block(width, width),
        )
        self.head = nn.Conv2d(width, 1, 1)
        self.register_buffer("centres", (torch.arange(GRID, dtype=torch.float32) + 0.5) / GRID)

    def heatmap(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))[:, 0]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(self.heatmap(image))

    def outputs(self, heat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = heat.flatten(1)
        logit = flat.max(dim=1, keepdim=True).values
        weights = torch.softmax(flat * 2.0, dim=1).view(-1, GRID, GRID)
        row = (weights.sum(dim=2) * self.centres).sum(dim=1)
        col = (weights.sum(dim=1) * self.centres).sum(dim=1)
        loc = torch.stack([row, col], dim=1).clamp(1e-4, 1 - 1e-4)
        return logit, torch.log(loc) - torch.log1p(-loc)


def sample(seed: int, positive: bool, spec: PreprocessSpec, matrix: tuple[int, int] | None,
           mimics: tuple[str, ...] | None) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, dict[str, Any]]:
    """One preprocessed radiograph with its targets: image [1,256,256], label, location, cells [GRID,GRID]."""
    rows, cols = matrix if matrix is not None else (None, None)
    r = rp.generate_radiograph(seed, pneumothorax=positive, rows=rows, cols=cols, mimics=mimics)
    ds, truth = r.dataset, r.truth
    pixels = ds.pixel_array
    assert spec.radiograph is not None
    x = preprocess_numpy([pixels], [radiograph_rescale(pixels, ds, spec.radiograph)], spec)[0]
    cells = np.zeros((GRID, GRID), dtype=np.float32)
    loc = np.array([0.5, 0.5], dtype=np.float32)
    if truth.pneumothorax is not None:
        air = r.pleural_air
        # A cell is positive when any pleural air falls in it (block max over the drawing grid).
        rr, cc = np.nonzero(air)
        cells[(rr * GRID // air.shape[0]), (cc * GRID // air.shape[1])] = 1.0
        pr, pc = truth.pneumothorax.pixel_centre
        loc = np.array([(pr + 0.5) / truth.rows, (pc + 0.5) / truth.cols], dtype=np.float32)
    return x.astype(np.float16), float(truth.has_pneumothorax), loc, cells, truth.to_dict()


def _job(args: tuple[int, bool, dict[str, Any], tuple[int, int] | None, tuple[str, ...] | None]) -> Any:
    seed, positive, spec_json, matrix, mimics = args
    return sample(seed, positive, PreprocessSpec.model_validate(spec_json), matrix, mimics)


def make_dataset(n: int, seed: int, spec: PreprocessSpec, workers: int) -> tuple[np.ndarray, ...]:
    """``n`` radiographs, half positive; negatives carry a hard negative more often than positives do."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n):
        positive = i % 2 == 0
        matrix = MATRICES[int(rng.integers(len(MATRICES)))]
        mimics = None
        if not positive and rng.random() < 0.5:
            mimics = tuple(m for m in rp.MIMICS if rng.random() < 0.5) or (str(rng.choice(rp.MIMICS)),)
        jobs.append((seed + i, positive, spec.model_dump(), matrix, mimics))
    t0 = time.monotonic()
    out = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for k, item in enumerate(pool.map(_job, jobs, chunksize=8)):
            out.append(item)
            if (k + 1) % 200 == 0:
                print(f"  {k + 1}/{n} radiographs, {time.monotonic() - t0:.0f} s", flush=True)
    xs, ys, ls, cs = (np.stack([o[j] for o in out]) for j in range(4))
    return xs, ys.astype(np.float32), ls, cs


def train(model: PtxDetector, data: tuple[np.ndarray, ...], epochs: int, batch: int, lr: float, seed: int) -> None:
    x, y, loc, cells = (torch.from_numpy(a) for a in data)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        total, t0 = 0.0, time.monotonic()
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            xb, yb, lb, cb = x[idx].float(), y[idx], loc[idx].clone(), cells[idx].clone()
            # Left-right flips: a pneumothorax may be on either side; the heart's side must not matter.
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb[flip] = xb[flip].flip(-1)
            cb[flip] = cb[flip].flip(-1)
            lb[flip, 1] = 1 - lb[flip, 1]
            # Contrast jitter in normalised units: vendors' processing differs beyond the generator's range.
            gain = 1.0 + 0.15 * (torch.rand(len(idx), 1, 1, 1, generator=g) - 0.5)
            bias = 0.08 * (torch.rand(len(idx), 1, 1, 1, generator=g) - 0.5)
            xb = (xb * gain + bias).clamp(0.0, 1.0)
            heat = model.heatmap(xb)
            logit, loc_logit = model.outputs(heat)
            cell_loss = F.binary_cross_entropy_with_logits(heat, cb, pos_weight=torch.tensor(10.0))
            image_loss = F.binary_cross_entropy_with_logits(logit[:, 0], yb)
            pos = yb == 1
            loc_loss = (torch.sigmoid(loc_logit[pos]) - lb[pos]).abs().mean() if pos.any() else heat.sum() * 0
            loss = cell_loss + image_loss + 3.0 * loc_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.monotonic() - t0:.0f} s)", flush=True)


def evaluate(model: PtxDetector, spec: PreprocessSpec, seeds: range, workers: int) -> dict[str, Any]:
    """Image-level sensitivity/specificity (probability >= 0.5) on held-out radiographs (generator's defaults)."""
    model.eval()
    jobs = [(s, i % 2 == 0, spec.model_dump(), None, None) for i, s in enumerate(seeds)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        items = list(pool.map(_job, jobs, chunksize=4))
    x = torch.from_numpy(np.stack([it[0] for it in items])).float()
    with torch.no_grad():
        logit, _ = model(x)
    prob = torch.sigmoid(logit[:, 0]).numpy()
    labels = np.array([it[1] for it in items]) == 1
    called = prob >= 0.5
    return {
        "sensitivity": float(called[labels].mean()), "specificity": float((~called[~labels]).mean()),
        "n_positive": int(labels.sum()), "n_negative": int((~labels).sum()),
        "lowest_positive": float(prob[labels].min()), "highest_negative": float(prob[~labels].max()),
    }


def export(model: PtxDetector, out: Path, metrics: dict[str, Any]) -> None:
    import onnx

    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (torch.zeros(2, 1, 256, 256),), str(out), opset_version=17, input_names=["image"],
        output_names=["logit", "location_logit"],
        dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}, "location_logit": {0: "batch"}},
        dynamo=False,
    )
    proto = onnx.load(str(out))
    for key, value in {
        "algorithm_version": VERSION,
        "training_data": "synthetic chest radiographs (pacsflow_router.models.radiograph_phantom)",
        "validation": json.dumps(metrics),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "ptx_detector: pneumothorax on frontal chest radiographs. Demonstration model, not a device."
    onnx.save(proto, str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "model_repository/ptx_detector/1/model.onnx")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--images", type=int, default=1600)
    parser.add_argument("--epochs", type=int, default=22)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=2_000_000)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, nargs="+",
                        help="save/load the generated training set here (.npz); several files are concatenated")
    parser.add_argument("--init", type=Path, help="start from these weights (a --save-weights file)")
    parser.add_argument("--save-weights", type=Path, help="save the trained torch weights here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    spec = load_spec(args.repository, "ptx_detector")
    t0 = time.monotonic()
    if args.cache and all(c.is_file() for c in args.cache):
        parts = []
        for cache in args.cache:
            with np.load(cache) as z:
                parts.append(tuple(z[k] for k in ("x", "y", "loc", "cells")))
        data = tuple(np.concatenate([p[j] for p in parts]) for j in range(4))
    else:
        print(f"generating {args.images} training radiographs", flush=True)
        data = make_dataset(args.images, args.seed, spec, args.threads)
        if args.cache:
            np.savez(args.cache[0], x=data[0], y=data[1], loc=data[2], cells=data[3])
    print(f"{len(data[0])} images ({int(data[1].sum())} positive), {time.monotonic() - t0:.0f} s", flush=True)
    model = PtxDetector()
    print(f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    if args.init:
        model.load_state_dict(torch.load(args.init))
    train(model, data, args.epochs, args.batch, args.lr, args.seed)
    if args.save_weights:
        torch.save(model.state_dict(), args.save_weights)
    metrics = evaluate(model, spec, range(args.seed + 500_000, args.seed + 500_000 + args.eval_images), args.threads)
    print(json.dumps(metrics), flush=True)
    export(model, args.out, metrics)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.monotonic() - t0:.0f} s total", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
