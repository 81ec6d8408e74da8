"""Results out: SR build time, and SR export through the durable outbox vs dcmtk ``storescu``, same Orthanc.

``python -m bench.report [--count N]``:

1. ``build_sr`` on a phantom study (32 slices): milliseconds per SR (median of 20).
2. N (default 100) distinct SRs to one Orthanc: (a) the router's path - ``Outbox.enqueue`` (file fsync + SQLite
   FULL commit per SR) then ``deliver_due`` over one :class:`~pacsflow_router.results.scu.StoreClient` association;
   (b) dcmtk ``storescu`` sending the same files over one association (no durability). SRs/s and the ratio.
   Each run uses a fresh Orthanc so both store the same number of new instances.

Every dcmtk/Orthanc process gets ``TCP_NODELAY=1``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pacsflow_router.config import Destination
from pacsflow_router.results.export import Outbox
from pacsflow_router.results.reports import build_sr
from tests.peers.dcmtk import dcmtk_env, storescu_command
from tests.peers.orthanc import Orthanc
from tests.unit.pacsflow_router.test_reports import SPEC, USE_CASE, phantom_study_and_result


def _make_srs(count: int):
    out = []
    for seed in range(count):
        study, result = phantom_study_and_result(1000 + seed, lesion=seed % 2 == 0, probability=0.9 if seed % 2 == 0
                                                 else 0.05)
        out.append(build_sr(study, result, USE_CASE, software_version="bench", spec=SPEC))
    return out


def bench_build(repeats: int = 20) -> float:
    study, result = phantom_study_and_result(7, lesion=True, probability=0.9)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        build_sr(study, result, USE_CASE, software_version="bench", spec=SPEC)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_outbox(work: Path, srs) -> tuple[float, float, int]:
    from pacsflow_router.results.scu import StoreClient

    clients = []
    with Orthanc(work / "orthanc-outbox") as pacs:
        def sender(name: str) -> StoreClient:
            clients.append(StoreClient(Destination(name=name, ae_title=pacs.aet, host="127.0.0.1",
                                                   port=pacs.dicom_port), "PACSFLOW"))
            return clients[-1]

        outbox = Outbox(work / "outbox", sender)
        t0 = time.perf_counter()
        for ds in srs:
            outbox.enqueue("pacs", ds)
        t1 = time.perf_counter()
        outbox.deliver_due()
        t2 = time.perf_counter()
        stored = len(pacs.instances(modality="SR"))
        outbox.close()
    assert stored == len(srs), f"Orthanc stored {stored} of {len(srs)}"
    return t1 - t0, t2 - t1, clients[0].associations_opened


def bench_storescu(work: Path, srs) -> float:
    files = []
    for i, ds in enumerate(srs):
        files.append(work / "files" / f"sr{i}.dcm")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(files[-1], enforce_file_format=True)
    with Orthanc(work / "orthanc-storescu") as pacs:
        t0 = time.perf_counter()
        subprocess.run(storescu_command(pacs.dicom_port, files, called=pacs.aet), env=dcmtk_env(), check=True,
                       capture_output=True, timeout=600)
        elapsed = time.perf_counter() - t0
        stored = len(pacs.instances(modality="SR"))
    assert stored == len(srs), f"Orthanc stored {stored} of {len(srs)}"
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args(argv if argv is not None else [])
    build = bench_build()
    print(f"build_sr: {build * 1000:.1f} ms per SR (median of 20)")
    srs = _make_srs(args.count)
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-report-") as tmp:
        work = Path(tmp)
        enqueue, deliver, associations = bench_outbox(work, srs)
        dcmtk = bench_storescu(work, srs)
    n = len(srs)
    print(f"outbox enqueue (fsync file + SQLite FULL): {n / enqueue:8.1f} SR/s ({enqueue / n * 1000:.2f} ms each)")
    print(f"outbox deliver over {associations} association(s): {n / deliver:8.1f} SR/s")
    print(f"dcmtk storescu, one association:       {n / dcmtk:8.1f} SR/s")
    print(f"ratio outbox deliver / storescu: {dcmtk / deliver:.2f}; "
          f"enqueue+deliver / storescu: {dcmtk / (enqueue + deliver):.2f}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
