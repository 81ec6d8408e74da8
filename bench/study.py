"""Last instance -> SR stored in Orthanc, split into completion wait / load / preprocessing / inference / SR / export.

Real peers: dcmtk storescu sends phantom head CTs (512x512, 32 slices) to the router process, which runs the
committed ich_detector (DALI CPU + embedded ONNX Runtime) and delivers the SR to a real Orthanc. The split comes
from the router's own audit trail (per-stage timings and the delivery event), the total from storescu's return to
the SR being visible through Orthanc's REST API. The completion window is part of the design (stableSeconds), so
it is reported as its own column rather than hidden in the total.
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pacsflow_router.domain import study_key  # noqa: E402
from pacsflow_router.models import phantom  # noqa: E402
from pacsflow_router.results.audit import AuditLog  # noqa: E402
from tests.peers.dcmtk import storescu  # noqa: E402
from tests.peers.orthanc import Orthanc  # noqa: E402
from tests.peers.router import RouterProcess, free_port, router_config, use_case  # noqa: E402

STABLE_SECONDS = 2.0
SLICES = 32
STUDIES = 4


def _ts(value: dt.datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-study-") as tmp:
        work = Path(tmp)
        pacs = Orthanc(work / "orthanc", config={"DicomScpTimeout": 2}).start()
        router = RouterProcess(work / "router", router_config(
            workdir=work / "router", port=free_port(), metrics_port=free_port(), pacs_port=pacs.dicom_port,
            stable_seconds=STABLE_SECONDS, use_cases=[use_case("ich", "assistive")]))
        rows = []
        try:
            router.start()
            audit = AuditLog(router.config["audit"]["url"])
            for i in range(STUDIES):
                paths, truth = phantom.write_study(work / f"s{i}", 500 + i, lesion=bool(i % 2), slices=SLICES)
                storescu(router.port, paths)
                last = time.time()
                while not pacs.instances(modality="SR", study_uid=truth.study_instance_uid):
                    time.sleep(0.05)
                total = time.time() - last
                key = study_key(truth.study_instance_uid)
                while True:
                    recs = audit.records(study_key=key)
                    if recs and any(e["outcome"] == "delivered" for e in recs[0]["deliveries"]):
                        break
                    time.sleep(0.05)
                rec = recs[0]
                t = rec["timings"]
                stages = sum(t.values())
                recorded = _ts(rec["recorded_at"])
                delivered = next(_ts(e["recorded_at"]) for e in rec["deliveries"] if e["outcome"] == "delivered")
                rows.append({
                    "total": total, "completion wait": recorded - stages - last, "load": t.get("load", 0.0),
                    "preprocess": t.get("preprocess", 0.0), "inference": t.get("inference", 0.0),
                    "SR": t.get("report", 0.0), "export": delivered - recorded,
                })
            audit.close()
        finally:
            router.stop()
            pacs.stop(kill=True)
    cols = ["total", "completion wait", "load", "preprocess", "inference", "SR", "export"]
    print(f"last instance -> SR stored in Orthanc, {STUDIES} studies x {SLICES} slices 512x512, "
          f"stableSeconds={STABLE_SECONDS} (median seconds)")
    print("  " + "  ".join(f"{c:>15}" for c in cols))
    print("  " + "  ".join(f"{statistics.median(r[c] for r in rows):>15.3f}" for c in cols))
    work_s = statistics.median(r["total"] - r["completion wait"] for r in rows)
    print(f"  processing after the completion window (total - wait): {work_s:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
