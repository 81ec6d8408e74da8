#!/usr/bin/env python3
"""Train the ``ich_detector`` slice model on fresh phantoms and export it to ONNX (not part of CI).

Usage (CPU, ~10-15 minutes on one core)::

    python3 -m venv .venv-train && .venv-train/bin/pip install torch onnx onnxscript pydicom pydantic pyyaml
    PYTHONPATH=router/src .venv-train/bin/python scripts/train_ich_detector.py \
        --out model_repository/ich_detector/1/model.onnx

Data: phantom studies (:mod:`pacsflow_router.models.phantom`, seeds from ``--seed``, far from the seeds the tests
use) preprocessed by the numpy reference of :mod:`pacsflow_router.analysis.preprocess` with the model's own
``preprocess.json`` -- the same steps DALI runs in the router (tested equal). A slice is positive when its
plane cuts a lesion; slices that only graze a lesion's pole (in-plane radius < 40 % of the lesion's) are
left out of the loss because no reader could call them.

Model: a ~30 k-parameter fully convolutional net producing a 32x32 lesion heatmap (stride 8). The slice
logit is the heatmap's maximum; the location is the soft-argmax of the heatmap. Trained with a per-cell
BCE (cells inside the lesion), a per-slice BCE and an L1 loss on the location of positive slices.

ONNX I/O contract (the Triton path and :mod:`pacsflow_router.analysis.inference` rely on it; opset 17, dynamic
batch): input ``image`` float32 [-1, 1, 256, 256]; outputs ``logit`` float32 [-1, 1] (pre-sigmoid, lesion
in this slice) and ``location_logit`` float32 [-1, 2] (pre-sigmoid (row, column) of the lesion centre as
fractions of the image extent, 0 = top/left edge, 1 = bottom/right edge).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "router" / "src"))

from pacsflow_router.analysis.preprocess import load_spec, preprocess_numpy  # noqa: E402
from pacsflow_router.models import phantom  # noqa: E402

GRID = 32  # heatmap cells per side (stride 8 at 256x256)
# Matrix sizes the training studies come in, so the model sees the resize of every common CT matrix.
MATRICES = [(512, 512)] * 6 + [(256, 256), (384, 384), (512, 448), (768, 768)]


class IchDetector(nn.Module):
    """Heatmap net: conv stem (stride 8) + dilated context + 1x1 head; slice logit = max, location = soft-argmax."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride=1, dilation=1):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(1, 12, 2), block(12, 24, 2), block(24, width, 2),
            block(width, width, dilation=2), block(width, width, dilation=4), block(width, width),
        )
        self.head = nn.Conv2d(width, 1, 1)
        centres = (torch.arange(GRID, dtype=torch.float32) + 0.5) / GRID
        self.register_buffer("centres", centres)

    def heatmap(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))[:, 0]  # (N, GRID, GRID) logits

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


def _slice_targets(truth: phantom.GroundTruth, z_planes: np.ndarray, x0: float, y0: float, spacing: float):
    """Per slice: label (1/0/-1 = ignore), location fraction (row, col) and GRID x GRID cell targets."""
    rows, cols = truth.rows, truth.cols
    n = len(z_planes)
    labels = np.zeros(n, dtype=np.float32)
    locs = np.full((n, 2), 0.5, dtype=np.float32)
    cells = np.zeros((n, GRID, GRID), dtype=np.float32)
    # Cell centres in patient mm (the image extent is cols x rows pixels).
    cy = y0 - spacing / 2 + (np.arange(GRID) + 0.5) / GRID * rows * spacing
    cx = x0 - spacing / 2 + (np.arange(GRID) + 0.5) / GRID * cols * spacing
    gx, gy = np.meshgrid(cx, cy)
    half_cell = max(rows, cols) * spacing / GRID / 2
    for k, z in enumerate(z_planes):
        best = 0.0
        for les in truth.lesions:
            sx, sy, sz = les.semi_axes_mm
            lx, ly, lz = les.centre_mm
            frac = 1 - ((z - lz) / sz) ** 2
            if frac <= 0:
                continue
            scale = math.sqrt(frac)
            if scale < 0.4:
                labels[k] = -1 if labels[k] == 0 else labels[k]
                continue
            labels[k] = 1
            inside = ((gx - lx) / (sx * scale + half_cell)) ** 2 + ((gy - ly) / (sy * scale + half_cell)) ** 2 <= 1
            cells[k][inside] = 1
            if scale * sx > best:
                best = scale * sx
                r, c = les.pixel_centre
                locs[k] = ((r + 0.5) / rows, (c + 0.5) / cols)
    return labels, locs, cells


def make_dataset(n_studies: int, seed: int, spec, negatives_per_study: int, log_every: int = 20):
    """Preprocessed slices with targets: every positive slice plus a few random negative ones per study."""
    rng = np.random.default_rng(seed)
    xs, ys, ls, cs = [], [], [], []
    t0 = time.monotonic()
    for i in range(n_studies):
        rows, cols = MATRICES[int(rng.integers(len(MATRICES)))]
        slices = int(rng.choice([24, 32, 40, 64]))
        lesion = i % 2 == 0
        datasets, truth = phantom.generate_study(seed + i, lesion=lesion, slices=slices, rows=rows, cols=cols)
        z = np.array([float(d.ImagePositionPatient[2]) for d in datasets])
        x0, y0 = float(datasets[0].ImagePositionPatient[0]), float(datasets[0].ImagePositionPatient[1])
        spacing = float(datasets[0].PixelSpacing[0])
        labels, locs, cells = _slice_targets(truth, z, x0, y0, spacing)
        pos = np.flatnonzero(labels == 1)
        neg = np.flatnonzero(labels == 0)
        pick = np.concatenate([pos, rng.choice(neg, size=min(len(neg), negatives_per_study), replace=False)])
        images = [datasets[k].pixel_array for k in pick]
        rescale = [(float(datasets[k].RescaleSlope), float(datasets[k].RescaleIntercept)) for k in pick]
        xs.append(preprocess_numpy(images, rescale, spec).astype(np.float16))
        ys.append(labels[pick])
        ls.append(locs[pick])
        cs.append(cells[pick])
        if (i + 1) % log_every == 0:
            print(f"  {i + 1}/{n_studies} studies, {sum(len(y) for y in ys)} slices, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
    return (np.concatenate(xs), np.concatenate(ys), np.concatenate(ls), np.concatenate(cs))


def train(model: nn.Module, data, epochs: int, batch: int, lr: float, seed: int) -> None:
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
            xb, yb, lb, cb = x[idx].float(), y[idx], loc[idx].clone(), cells[idx]
            # Left-right flips: anatomy is symmetric enough, lesions are not side-specific.
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb[flip] = xb[flip].flip(-1)
            cb = cb.clone()
            cb[flip] = cb[flip].flip(-1)
            lb[flip, 1] = 1 - lb[flip, 1]
            heat = model.heatmap(xb)
            logit, loc_logit = model.outputs(heat)
            cell_loss = F.binary_cross_entropy_with_logits(heat, cb, pos_weight=torch.tensor(30.0))
            keep = yb >= 0
            slice_loss = F.binary_cross_entropy_with_logits(logit[keep, 0], yb[keep])
            pos = yb == 1
            loc_loss = (torch.sigmoid(loc_logit[pos]) - lb[pos]).abs().mean() if pos.any() else heat.sum() * 0
            loss = cell_loss + slice_loss + 5.0 * loc_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.monotonic() - t0:.0f} s)", flush=True)


def evaluate(model: nn.Module, spec, seeds: range) -> dict:
    """Study-level sensitivity/specificity (max slice probability >= 0.5) on held-out phantoms."""
    model.eval()
    tp = fn = tn = fp = 0
    errors_mm = []
    with torch.no_grad():
        for i, seed in enumerate(seeds):
            lesion = i % 2 == 0
            datasets, truth = phantom.generate_study(seed, lesion=lesion, slices=32)
            images = [d.pixel_array for d in datasets]
            rescale = [(float(d.RescaleSlope), float(d.RescaleIntercept)) for d in datasets]
            x = torch.from_numpy(preprocess_numpy(images, rescale, spec))
            logit, loc_logit = model(x)
            prob = torch.sigmoid(logit[:, 0]).numpy()
            k = int(prob.argmax())
            called = bool(prob[k] >= 0.5)
            if truth.has_lesion:
                tp += int(called)
                fn += int(not called)
                if called:
                    r, c = torch.sigmoid(loc_logit[k]).numpy()
                    spacing = truth.pixel_spacing_mm[0]
                    d = min(math.hypot((r * truth.rows - 0.5 - les.pixel_centre[0]) * spacing,
                                       (c * truth.cols - 0.5 - les.pixel_centre[1]) * spacing)
                            for les in truth.lesions)
                    errors_mm.append(float(d))
            else:
                tn += int(not called)
                fp += int(called)
    return {
        "sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1),
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "median_location_error_mm": float(np.median(errors_mm)) if errors_mm else None,
        "max_location_error_mm": float(np.max(errors_mm)) if errors_mm else None,
    }


def export(model: nn.Module, out: Path) -> None:
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 1, 256, 256)
    torch.onnx.export(
        model, (example,), str(out), opset_version=17, input_names=["image"],
        output_names=["logit", "location_logit"],
        dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}, "location_logit": {0: "batch"}},
        dynamo=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "model_repository/ich_detector/1/model.onnx")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--studies", type=int, default=240)
    parser.add_argument("--negatives-per-study", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=1_000_000)
    parser.add_argument("--eval-studies", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    spec = load_spec(args.repository, "ich_detector")
    t0 = time.monotonic()
    print(f"generating {args.studies} training studies", flush=True)
    data = make_dataset(args.studies, args.seed, spec, args.negatives_per_study)
    print(f"{len(data[0])} slices ({int((data[1] == 1).sum())} positive), {time.monotonic() - t0:.0f} s", flush=True)
    model = IchDetector()
    print(f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    train(model, data, args.epochs, args.batch, args.lr, args.seed)
    metrics = evaluate(model, spec, range(args.seed + 500_000, args.seed + 500_000 + args.eval_studies))
    print(json.dumps(metrics), flush=True)
    export(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.monotonic() - t0:.0f} s total", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
