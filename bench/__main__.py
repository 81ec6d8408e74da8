"""``python -m bench`` (``make bench``): run every benchmark module's ``main()`` in turn."""

from __future__ import annotations

import importlib
import sys

# One line per benchmark module; each has ``main() -> int | None``.
MODULES = [
    "bench.ingest",
    "bench.tls",
    "bench.deid",
    "bench.preprocess",
    "bench.acceptance",
    "bench.report",
    "bench.study",
    "bench.triton",
    "bench.operator_bench",
    "bench.killswitch",
    "bench.pods",  # a node cluster (one per host): images, bring-up, helm install -> SR, demotion p95
    "bench.hl7",
    "bench.worklist",
    "bench.review_api",
    "bench.loadtest",  # --short here (about 2 minutes); make loadtest runs the 10-minute one
]


def main(argv: list[str] | None = None) -> int:
    only = set(sys.argv[1:] if argv is None else argv)
    failed = 0
    for name in MODULES:
        if only and name.rsplit(".", 1)[-1] not in only:
            continue
        print(f"\n=== {name} ===", flush=True)
        failed += bool(importlib.import_module(name).main())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
