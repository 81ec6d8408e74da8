"""What deciding "may this model analyse this study?" costs, against preprocessing the same study, same run.

One phantom head study (``--slices`` 512x512 slices, plus a 3-image localizer series so that there is a choice to
make) goes through, in this process and on the same decoded series:

- the acceptance criteria (:func:`pacsflow_router.analysis.acceptance.select_series`: headers only);
- the input-domain check (:func:`pacsflow_router.analysis.domaincheck.check_domain`: HU bands and the enclosed
  region on up to 5 central slices);
- preprocessing with DALI (the router's default) and with the numpy reference.

Medians of ``--repeat`` runs after one warm-up; printed as milliseconds and as ratios to preprocessing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pacsflow_router import domain
from pacsflow_router.analysis import preprocess
from pacsflow_router.analysis.acceptance import select_series
from pacsflow_router.analysis.domaincheck import check_domain
from pacsflow_router.analysis.manifest import load_manifest
from pacsflow_router.config import Match, ModelRef
from pacsflow_router.models import phantom

REPO = Path(__file__).resolve().parents[1] / "model_repository"


def _timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: DALI builds its pipeline, numpy/scipy load their kernels
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Print per-study milliseconds of acceptance, domain check and preprocessing, and their ratios."""
    parser = argparse.ArgumentParser(prog="bench.acceptance")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args([] if argv is None else argv)
    model = ModelRef(name="ich_detector", version=1)
    manifest = load_manifest(REPO, model)
    spec = preprocess.load_spec(REPO, model)
    datasets, _ = phantom.generate_study(7, lesion=True, slices=args.slices)
    head = domain.Series("bench", "CT", "HEAD", "Head non-con",
                         [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])
    scouts = [copy.deepcopy(d) for d in datasets[:3]]
    for d in scouts:
        d.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer = domain.Series("scout", "CT", "HEAD", "Topogram",
                              [domain.Slice(header=d, pixels=d.pixel_array) for d in scouts])
    ref = domain.StudyRef(study_uid="bench", key="bench", paths=(), last_received=0.0)
    study = domain.Study(ref=ref, first_header=datasets[0], series=[localizer, head])
    assert select_series(manifest, Match(), study).series is head, "the bench study must pass the criteria"
    assert check_domain(head, manifest.domain).in_domain, "the bench study must be in the model's domain"

    device = "gpu" if preprocess.gpu_available() else "cpu"
    t_accept = _timed(lambda: select_series(manifest, Match(), study), args.repeat)
    t_domain = _timed(lambda: check_domain(head, manifest.domain), args.repeat)
    t_dali = _timed(lambda: preprocess.preprocess_series(head, spec, "dali", device=device), args.repeat)
    t_numpy = _timed(lambda: preprocess.preprocess_series(head, spec, "numpy"), args.repeat)
    n = len(head.slices)
    print(f"one study: {n} slices 512x512 + a 3-image localizer series, median of {args.repeat}:")
    print(f"  acceptance criteria (2 series)   {t_accept * 1000:8.2f} ms")
    print(f"  domain check (central slices)    {t_domain * 1000:8.2f} ms")
    print(f"  preprocess DALI {device}             {t_dali * 1000:8.2f} ms")
    print(f"  preprocess numpy                 {t_numpy * 1000:8.2f} ms")
    print(f"  ratio acceptance / DALI preprocess: {t_accept / t_dali:.3f}")
    print(f"  ratio domain check / DALI preprocess: {t_domain / t_dali:.3f}")
    print(f"  ratio (acceptance + domain) / DALI preprocess: {(t_accept + t_domain) / t_dali:.3f}")
    print(f"  ratio (acceptance + domain) / numpy preprocess: {(t_accept + t_domain) / t_numpy:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
