"""Time to result after completion, against the model's own preprocess + inference time, 32- and 300-slice studies.

Real peers: dcmtk ``storescu`` sends phantom head CTs (512x512) to the real ``pacsflow-router`` process, which runs
the committed ich_detector (DALI CPU + embedded ONNX Runtime) and delivers the SR to a real Orthanc (checked through
its REST API). One study at a time, so nothing queues.

Per study, all on the router's own clock:

* completion: the last instance's arrival (the outbox row's ``last_received``) + ``stableSeconds``: the moment the
  study is complete by the design's own rule; the window itself is the design, not processing;
* result: the SR's outbox row has ``delivered_at`` (taken right after Orthanc's C-STORE response);
* after completion = result - completion; the model's own time = the audit record's ``preprocess`` + ``inference``
  for the same study; ratio = after completion / model (goal <= :data:`GOAL`, issue 11 section 2).

The split (median seconds): the audit's stages (``load`` ... ``report``: the SR build; ``domain``, the input-domain
check, runs beside ``preprocess`` and is not on the path), ``other`` (completion to the SR's outbox row less the
stages on the path: the pipeline taking the study, the order lookup, the SR's durable enqueue) and
``export`` (the SR's outbox row to its delivery). The first study of the run
is the warm-up (the router's first inference builds its pipelines and sessions) and is reported on its own.

Prints tables; returns non-zero only when something is broken (no SR), never on a timing.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.worklist import Broken, _wait  # noqa: E402
from pacsflow_router.domain import study_key  # noqa: E402
from pacsflow_router.models import phantom  # noqa: E402
from pacsflow_router.results.audit import AuditLog  # noqa: E402
from tests.peers.dcmtk import storescu  # noqa: E402
from tests.peers.orthanc import Orthanc  # noqa: E402
from tests.peers.router import RouterProcess, free_port, router_config, use_case  # noqa: E402

STABLE_SECONDS = 2.0
# (slices, studies): the first size also gives the warm-up study.
SIZES = ((32, 4), (300, 2))
GOAL = 1.3
TIMEOUT = 180.0
STAGES = ("load", "acceptance", "domain", "preprocess", "inference", "report")
#: Stages that run beside another one (the domain check beside preprocessing): not subtracted from ``other``.
BESIDE = ("domain",)


@dataclass
class Row:
    """One study's timings (seconds)."""

    slices: int
    after: float
    model: float
    parts: dict[str, float]


def _measure(router: RouterProcess, pacs: Orthanc, audit: AuditLog, paths: list[Path], study_uid: str,
             slices: int) -> Row:
    storescu(router.port, paths)
    key = study_key(study_uid)
    outbox = sqlite3.connect(f"file:{Path(router.config['spoolDir']) / 'outbox' / 'outbox.db'}?mode=ro", uri=True)
    try:
        last_received, enqueued, delivered = _wait(lambda: outbox.execute(
            "SELECT last_received, enqueued_at, delivered_at FROM outbox WHERE channel = 'dicom' AND study_key = ?"
            " AND state = 'delivered'", (key,)).fetchone(), f"study {key}: SR delivered", TIMEOUT)
    finally:
        outbox.close()
    if not pacs.instances(modality="SR", study_uid=study_uid):
        raise Broken(f"study {key}: the outbox says delivered but Orthanc has no SR")
    record = _wait(lambda: audit.records(study_key=key), f"study {key}: audit record", TIMEOUT)[0]
    timings = {s: float(record["timings"].get(s, 0.0)) for s in STAGES}
    completion = last_received + STABLE_SECONDS
    # "other": completion to the SR's outbox row, less the stages on the path: the pipeline taking the study, the
    # order lookup, the SR's durable enqueue.
    on_path = sum(v for s, v in timings.items() if s not in BESIDE)
    parts = {"other": enqueued - completion - on_path, **timings, "export": delivered - enqueued}
    return Row(slices=slices, after=delivered - completion, model=timings["preprocess"] + timings["inference"],
               parts=parts)


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-study-") as tmp:
        work = Path(tmp)
        studies = []
        seed = 500
        for slices, count in SIZES:
            for _ in range(count + (1 if not studies else 0)):
                paths, truth = phantom.write_study(work / f"s{seed}", seed, lesion=bool(seed % 2), slices=slices)
                studies.append((paths, truth.study_instance_uid, slices))
                seed += 1
        pacs = Orthanc(work / "orthanc", config={"DicomScpTimeout": 30}).start()
        router = RouterProcess(work / "router", router_config(
            workdir=work / "router", port=free_port(), metrics_port=free_port(), pacs_port=pacs.dicom_port,
            stable_seconds=STABLE_SECONDS, use_cases=[use_case("ich", "assistive")]))
        try:
            router.start()
            audit = AuditLog(router.config["audit"]["url"])
            try:
                return [_measure(router, pacs, audit, paths, uid, slices) for paths, uid, slices in studies]
            except Broken:
                print(router.log()[-3000:], file=sys.stderr)
                raise
            finally:
                audit.close()
        finally:
            router.stop()
            pacs.stop(kill=True)


def report(rows: list[Row]) -> None:
    warmup, *rows = rows
    cols = ["other", *STAGES, "export"]
    print(f"complete study -> SR delivered to Orthanc, after the completion window (stableSeconds={STABLE_SECONDS:g}),"
          f" against the model's own preprocess + inference, one study at a time; median seconds (outside = after -"
          f" model: work beside the model that slows it on a busy host lowers the ratio, not this)")
    print(f"  {'slices':>6}{'studies':>8}{'after':>9}{'model':>9}{'outside':>9}{'ratio':>8}  verdict (goal <= {GOAL}x)")
    for slices, _count in SIZES:
        group = [r for r in rows if r.slices == slices]
        ratio = statistics.median(r.after / r.model for r in group)
        print(f"  {slices:>6}{len(group):>8}{statistics.median(r.after for r in group):>9.3f}"
              f"{statistics.median(r.model for r in group):>9.3f}"
              f"{statistics.median(r.after - r.model for r in group):>9.3f}{ratio:>7.2f}x  "
              f"{'PASS' if ratio <= GOAL else 'MISS'}")
    print("  where the time goes (median seconds; other = completion to the SR queued, less the stages on the path: "
          "pickup, order lookup, enqueue; domain runs beside preprocess; export = SR queued -> stored)")
    print(f"  {'slices':>6}" + "".join(f"{c:>11}" for c in cols))
    for slices, _count in SIZES:
        group = [r for r in rows if r.slices == slices]
        print(f"  {slices:>6}" + "".join(f"{statistics.median(r.parts[c] for r in group):>11.3f}" for c in cols))
    print(f"  warm-up ({warmup.slices} slices): after {warmup.after:.3f} s, model {warmup.model:.3f} s")
    for slices, _count in SIZES:
        print(f"  {slices} slices, after / model per study: "
              + " ".join(f"{r.after:.3f}/{r.model:.3f}" for r in rows if r.slices == slices))


def main() -> int:
    try:
        rows = run()
    except Broken as exc:
        print(f"broken: {exc}")
        return 1
    report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
