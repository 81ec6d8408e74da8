#!/usr/bin/env python3
"""Export several trained ``ich_detector`` nets as one ONNX graph: the mean of their slice logits (not part of CI).

The graph keeps the repository's ONNX contract (input ``image`` [N, C, 256, 256]; outputs ``logit`` [N, 1] and
``location_logit`` [N, 2], pre-sigmoid), so the router and Triton run it like any single net. Per slice:

- ``logit`` = mean over the nets of each net's slice logit (its heatmap's maximum) + ``--logit-offset`` (the
  operating point, as ``train_ich_detector.py --logit-offset`` does for one net);
- ``location_logit`` = the soft-argmax of the nets' mean heatmap (the same soft-argmax each net uses).

A single ``--weights`` file exports that net alone. The seventh try's candidate (rounds f and g, not shipped:
docs/model-card-ich_detector.md; ``--repository``: a copy whose ``ich_detector/3/preprocess.json`` has
``"neighbours": 1`` and whose ``ich_detector/3/model.json`` declares ``"output": {"sliceWeights": [0.1, 0.8, 0.1]}``)::

    PYTHONPATH=router/src .venv-train/bin/python scripts/export_ich_ensemble.py --version 3 \\
        --repository /tmp/repo --weights /tmp/ich/f.pt /tmp/ich/g.pt --logit-offset -1.125 \\
        --algorithm-version "ich_detector 3.0.0 (synthetic phantoms, 2026-12-01)" --out /tmp/repo/ich_detector/3/model.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_ich_detector as T  # noqa: E402 - the sibling training script (its net and export)

from pacsflow_router.analysis.preprocess import load_spec  # noqa: E402
from pacsflow_router.config import ModelRef  # noqa: E402


class MeanOfNets(nn.Module):
    """Nets of one architecture averaged per slice: mean slice logit (+ offset), soft-argmax of the mean heatmap."""

    def __init__(self, nets: list[T.IchDetector], offset: float):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.register_buffer("offset", torch.tensor(float(offset)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heats = [net.heatmap(image) for net in self.nets]
        logit = torch.stack([h.flatten(1).max(dim=1).values for h in heats], dim=1).mean(dim=1, keepdim=True)
        _, location = self.nets[0].outputs(torch.stack(heats, dim=0).mean(dim=0))
        return logit + self.offset, location


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", type=int, required=True, help="model version (its preprocess.json)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--weights", type=Path, nargs="+", required=True, help="state dicts (.pt) of the nets")
    parser.add_argument("--heatmap-stride", type=int, default=4)
    parser.add_argument("--logit-offset", type=float, default=0.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--algorithm-version", required=True, help="ONNX metadata algorithm_version")
    args = parser.parse_args(argv)
    spec = load_spec(args.repository, ModelRef(name="ich_detector", version=args.version))
    nets = []
    for path in args.weights:
        net = T.IchDetector(spec.channels, heatmap_stride=args.heatmap_stride)
        net.load_state_dict(torch.load(path))
        nets.append(net.eval())
    model = MeanOfNets(nets, args.logit_offset).eval()
    T.export(model, spec.channels, args.out, args.algorithm_version)  # type: ignore[arg-type]
    # The graph must answer as torch does.
    import onnxruntime

    x = torch.rand(3, spec.channels, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in model(x)]
    session = onnxruntime.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    print(f"{args.out}: {args.out.stat().st_size} bytes, {sum(p.numel() for p in model.parameters())} parameters, "
          f"onnxruntime vs torch max difference {diff:.2e}")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
