"""Sustained mixed load: a large hospital's peak hour, times four, replayed against real routers for ten minutes.

``python -m bench.loadtest`` (``make loadtest``) or ``python -m bench.loadtest --short`` (a one-minute smoke with
small studies at the same rate, what ``python -m bench`` runs). Options: ``--minutes``, ``--peak-per-hour`` (MONAI Deploy's published
peak-hour mix is about 250 studies an hour), ``--multiplier`` (4), ``--associations`` (8), ``--triton`` (3 routers on
one Triton instead of one router with embedded ONNX Runtime; ``--routers`` sets how many).

Real peers: dcmtk ``storescu`` sends the images (8 concurrent associations from 3 AE titles: CT_ED_1, DX_ED_1,
MR_1), the router's MLLP listener gets an HL7 order (tests/peers/hl7msgs.py) before each study, npm ``dcmjs-dimse``
sends the study's MPPS (N-CREATE + N-SET COMPLETED, tests/peers/modality.py) after it, and the router (the real
``pacsflow-router`` process, tests/peers/router.py) writes its SRs to a real Orthanc.

The mix (fractions of studies): head CT 150-296 slices (the phantom's head is 150 mm and ich_detector takes slices of
0.5 mm and up, so 296 is the largest head the model accepts), chest CT 200 slices (the same phantom relabelled
CHEST: ingested, matched by no use case), single chest radiographs (radiograph_phantom, the ptx_detector use case)
and MR series (two series of pydicom's real ``MR_small.dcm``). Studies arrive as a Poisson process at
``peak-per-hour x multiplier`` studies an hour; each goes on the next free association.

Templates are generated once into ``${PACSFLOW_CACHE:-~/.cache/pacsflow}/loadtest`` with placeholder UIDs, accession
and patient ID of fixed length; each replayed study is a byte-level copy with those replaced by a new value of the
same length (no re-encoding: the sender's own CPU stays small next to the router's).

Reported (and written to ``.bench/loadtest[-triton].json``):

* offered vs sent studies/hour and instances/s, and how late the sender fell behind its schedule (p95): on two
  shared cores the router may not keep up, and the rate it sustains is the answer;
* slope of the router's queue depth (``pacsflow_queue_depth_studies`` + ``pacsflow_studies_in_progress``, sampled
  every 2 s) and of its RSS over the load phase (least squares, per minute);
* lost and duplicated results counted at the PACS: Orthanc's C-STORE ledger, one SR per head CT and radiograph
  expected, after a drain;
* last image -> SR at the PACS (p50/p95), from storescu's return to the SR's first line in the ledger (polled every
  0.25 s).

Returns non-zero when a result is lost or duplicated, or an order, image or MPPS is refused; never on a rate.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import queue
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
import pydicom.data  # noqa: E402

from pacsflow_router.models import phantom, radiograph_phantom  # noqa: E402
from tests.peers import modality  # noqa: E402
from tests.peers.dcmtk import storescu  # noqa: E402
from tests.peers.hl7msgs import OrderMessage  # noqa: E402
from tests.peers.orthanc import Orthanc  # noqa: E402
from tests.peers.router import RouterProcess, free_port, router_config  # noqa: E402

ROOT = "1.2.826.0.1.3680043.8.498"
TOKEN = "777777777777"  # 12 digits in every template UID, replaced by "1" + 11 digits of the study's number
ACC_TOKEN, PID_TOKEN = "LT777777777777", "LP777777777777"
TEMPLATE_VERSION = "v1"
AE = {"head-ct": "CT_ED_1", "chest-ct": "CT_ED_1", "radiograph": "DX_ED_1", "mr": "MR_1"}
MIX = {"head-ct": 0.25, "chest-ct": 0.15, "radiograph": 0.45, "mr": 0.15}
EXPECTS_SR = {"head-ct", "radiograph"}
STABLE_SECONDS = 5.0
USE_CASES = [
    {"name": "ich", "model": {"name": "ich_detector", "version": 2}, "mode": "assistive",
     "match": {"modalities": ["CT"]}, "outputs": {"structuredReport": {"destination": "pacs"}}},
    {"name": "ptx", "model": {"name": "ptx_detector", "version": 1}, "mode": "assistive",
     "match": {"modalities": ["DX", "CR"]}, "outputs": {"structuredReport": {"destination": "pacs"}}},
]


# ------------------------------------------------------------------------------------------------- templates
@dataclass
class Template:
    """One template study on disk (placeholder identifiers) and what its MPPS lists."""

    kind: str
    modality: str
    paths: list[Path]
    instances: list[tuple[str, str, str]]  # (series UID, SOP class UID, SOP instance UID), placeholders in


def _placeholders(ds: pydicom.Dataset, series: int, index: int) -> None:
    ds.StudyInstanceUID = f"{ROOT}.{TOKEN}.1"
    ds.SeriesInstanceUID = f"{ROOT}.{TOKEN}.2.{series}"
    ds.SOPInstanceUID = f"{ROOT}.{TOKEN}.3.{series}.{index}"
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = f"{ROOT}.{TOKEN}.4"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber, ds.PatientID = ACC_TOKEN, PID_TOKEN


def _write(kind: str, folder: Path, datasets: list[pydicom.Dataset]) -> Template:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest = []
    for i, ds in enumerate(datasets):
        ds.save_as(tmp / f"{i:04d}.dcm", enforce_file_format=True)
        manifest.append([str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID)])
    (tmp / "manifest.json").write_text(json.dumps({"kind": kind, "modality": str(datasets[0].Modality),
                                                   "instances": manifest}))
    os.replace(tmp, folder)
    return _load(folder)


def _load(folder: Path) -> Template:
    meta = json.loads((folder / "manifest.json").read_text())
    return Template(meta["kind"], meta["modality"], sorted(folder.glob("*.dcm")),
                    [tuple(i) for i in meta["instances"]])  # type: ignore[misc]


def _ct(seed: int, slices: int, chest: bool) -> list[pydicom.Dataset]:
    datasets, _ = phantom.generate_study(seed, lesion=bool(seed % 2), slices=slices)
    for i, ds in enumerate(datasets):
        if chest:
            ds.BodyPartExamined, ds.StudyDescription, ds.SeriesDescription = "CHEST", "CT Chest", "Chest w/o"
        _placeholders(ds, 1, i)
    return datasets


def _radiograph(seed: int) -> list[pydicom.Dataset]:
    ds = radiograph_phantom.generate_radiograph(seed, pneumothorax=bool(seed % 2)).dataset
    _placeholders(ds, 1, 0)
    return [ds]


def _mr(images: int) -> list[pydicom.Dataset]:
    source = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    out = []
    for series in (1, 2):
        for i in range(images):
            ds = copy.deepcopy(source)  # Dataset.copy() is shallow: the copies would share their elements
            ds.SeriesNumber, ds.InstanceNumber = series, i + 1
            _placeholders(ds, series, i)
            out.append(ds)
    return out


def templates(cache: Path, short: bool) -> dict[str, list[Template]]:
    """The template studies of the mix (generated once, then read from ``cache``)."""
    head = (20, 28) if short else (150, 220, 296)
    specs: dict[str, list[tuple[str, object]]] = {
        "head-ct": [(f"head-{n}", lambda n=n: _ct(900 + n, n, chest=False)) for n in head],
        "chest-ct": [(f"chest-{n}", lambda n=n: _ct(950 + n, n, chest=True)) for n in ((24,) if short else (200,))],
        "radiograph": [(f"dx-{s}", lambda s=s: _radiograph(s)) for s in (4101, 4102, 4103, 4104)],
        "mr": [(f"mr2-{n}", lambda n=n: _mr(n)) for n in ((6,) if short else (24,))],
    }
    root = cache / "loadtest" / TEMPLATE_VERSION
    out: dict[str, list[Template]] = {}
    for kind, items in specs.items():
        for name, make in items:
            folder = root / name
            if not (folder / "manifest.json").exists():
                print(f"  generating template {name} (once, into {root})", flush=True)
                _write(kind, folder, make())  # type: ignore[operator]
            out.setdefault(kind, []).append(_load(folder))
    return out


# ------------------------------------------------------------------------------------------------- one study
@dataclass
class Sent:
    """What happened to one replayed study."""

    number: int
    kind: str
    study_uid: str
    instances: int
    due: float
    started: float = 0.0
    last_image: float = 0.0
    acknowledged: int = 0
    order_ack: str = ""
    mpps_ok: bool = False
    router: int = 0
    errors: list[str] = field(default_factory=list)


def _identity(number: int) -> tuple[str, str, str]:
    digits = f"1{number:011d}"
    return digits, f"LT{number:012d}", f"LP{number:012d}"


def _replay(template: Template, number: int, folder: Path) -> tuple[list[Path], str, list[tuple[str, str, str]]]:
    digits, accession, patient = _identity(number)
    swaps = [(f".{TOKEN}.".encode(), f".{digits}.".encode()), (ACC_TOKEN.encode(), accession.encode()),
             (PID_TOKEN.encode(), patient.encode())]
    paths = []
    for src in template.paths:
        data = src.read_bytes()
        for old, new in swaps:
            data = data.replace(old, new)
        dest = folder / src.name
        dest.write_bytes(data)
        paths.append(dest)
    instances = [tuple(u.replace(f".{TOKEN}.", f".{digits}.") for u in inst) for inst in template.instances]
    return paths, f"{ROOT}.{digits}.1", instances  # type: ignore[return-value]


def _mllp(port: int, message: bytes, timeout: float = 30.0) -> str:
    """Send one HL7 message over MLLP and return MSA-1 of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"\x0b" + message + b"\x1c\r")
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    for segment in answer.strip(b"\x0b\x1c\r").decode("utf-8", "replace").split("\r"):
        if segment.startswith("MSA|"):
            return segment.split("|")[1]
    return "no MSA"


def send_study(sent: Sent, template: Template, router: RouterProcess, hl7_port: int, work: Path) -> None:
    """Order, images, MPPS for one study on one association (this worker's)."""
    folder = Path(tempfile.mkdtemp(dir=work))
    try:
        paths, study_uid, instances = _replay(template, sent.number, folder)
        _, accession, patient = _identity(sent.number)
        order = OrderMessage(control_id=f"LT{sent.number:010d}", accession=accession, patient_id=patient,
                             study_uid=study_uid, placer_order_number=f"PL{sent.number}",
                             filler_order_number=f"FI{sent.number}", requested_procedure_id=f"RP{sent.number}",
                             modality=template.modality, station_ae_title=AE[template.kind], priority="R")
        sent.order_ack = _mllp(hl7_port, order.encoded("orm231"))
        if sent.order_ack != "AA":
            sent.errors.append(f"order answered {sent.order_ack}")
        result = storescu(router.port, paths, calling=AE[template.kind], timeout=900)
        sent.last_image = time.time()
        sent.acknowledged = len(result.acknowledged)
        if sent.acknowledged != len(paths):
            sent.errors.append(f"{len(paths) - sent.acknowledged} image(s) not acknowledged (storescu "
                               f"{result.returncode})")
        mpps_uid = f"{ROOT}.{_identity(sent.number)[0]}.5"
        answers = modality.send(router.port, [
            modality.n_create(mpps_uid, [study_uid], modality=template.modality),
            modality.n_set(mpps_uid, "COMPLETED", instances)], calling=AE[template.kind])
        sent.mpps_ok = [a.status for a in answers] == [0, 0]
        if not sent.mpps_ok:
            sent.errors.append(f"MPPS answered {[hex(a.status) for a in answers]}")
    except Exception as exc:  # noqa: BLE001 - counted and reported; one study's failure must not stop the run
        sent.errors.append(f"{type(exc).__name__}: {exc}"[:300])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- monitors
class Ledger(threading.Thread):
    """Follows Orthanc's C-STORE ledger: SR requests per study and when each study's first SR arrived."""

    def __init__(self, pacs: Orthanc) -> None:
        super().__init__(daemon=True)
        self.path = pacs.ledger_path
        self.count: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self.other = 0  # non-SR C-STOREs (the router forwards nothing else; counted to show it)
        self.stopping = threading.Event()

    def run(self) -> None:
        offset, partial = 0, b""
        while not self.stopping.is_set():
            now = time.time()
            if self.path.exists():
                with self.path.open("rb") as f:
                    f.seek(offset)
                    data = partial + f.read()
                    offset = f.tell()
                *lines, partial = data.split(b"\n")
                for raw in lines:
                    fields = raw.decode(errors="replace").split("\t")
                    if len(fields) != 6 or fields[0] != "DicomProtocol":
                        continue
                    if fields[2] == "SR":
                        self.count[fields[5]] += 1
                        self.first.setdefault(fields[5], now)
                    else:
                        self.other += 1
            self.stopping.wait(0.25)


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, RssShmem) in bytes: the resident set, and its part in shared memory (Triton's input regions)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "RssShmem:")):
            found[line.split(":")[0]] = int(line.split()[1]) * 1024
    return found.get("VmRSS", 0), found.get("RssShmem", 0)


class Sampler(threading.Thread):
    """Every 2 s: the routers' queue depth (waiting + in progress), outbox and RSS (summed over routers)."""

    def __init__(self, routers: list[RouterProcess]) -> None:
        super().__init__(daemon=True)
        self.routers = routers
        self.samples: list[dict[str, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            row = {"t": time.time(), "queue": 0.0, "outbox": 0.0, "rss": 0.0, "shmem": 0.0}
            try:
                for r in self.routers:
                    text = urllib.request.urlopen(r.metrics_url, timeout=5).read().decode()
                    row["queue"] += (_metric(text, "pacsflow_queue_depth_studies")
                                     + _metric(text, "pacsflow_studies_in_progress"))
                    row["outbox"] += _metric(text, "pacsflow_outbox_pending")
                    rss, shmem = _rss(r.proc.pid) if r.proc else (0, 0)
                    row["rss"] += rss
                    row["shmem"] += shmem
                self.samples.append(row)
            except OSError:
                pass  # a scrape that timed out under load: the next one counts
            self.stopping.wait(2.0)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per second)."""
    if len(points) < 3:
        return float("nan")
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else float("nan")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict:
    cache = Path(os.environ.get("PACSFLOW_CACHE", Path.home() / ".cache" / "pacsflow"))
    library = templates(cache, args.short)
    rate_per_s = args.peak_per_hour * args.multiplier / 3600.0
    duration = args.minutes * 60.0
    rng = random.Random(args.seed)
    schedule: list[tuple[float, str, Template]] = []
    t = rng.expovariate(rate_per_s)
    while t < duration:
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        schedule.append((t, kind, rng.choice(library[kind])))
        t += rng.expovariate(rate_per_s)
    print(f"offered: {len(schedule)} studies in {duration / 60:.1f} min ({rate_per_s * 3600:.0f}/h = "
          f"{args.peak_per_hour}/h x {args.multiplier}), {args.associations} associations, "
          f"{args.routers} router(s), inference {'Triton' if args.triton else 'embedded'}", flush=True)

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacsflow-loadtest-")))
        spool_tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacsflow-loadtest-send-",
                                                                          dir="/dev/shm")))
        pacs = Orthanc(work / "orthanc", config={"DicomScpTimeout": 30}).start()
        stack.callback(pacs.stop, kill=True)
        inference = None
        if args.triton:
            from tests.peers.triton import serve

            triton = serve(REPO / "model_repository", work / "triton",
                           versions={"ich_detector": [2], "ptx_detector": [1]})
            stack.callback(triton.stop)
            inference = {"backend": "triton", "url": triton.url, "modelRepository": str(REPO / "model_repository"),
                         "timeoutSeconds": 120}
        routers, hl7_ports = [], []
        for i in range(args.routers):
            hl7_port = free_port()
            router = RouterProcess(work / f"router{i}", router_config(
                workdir=work / f"router{i}", port=free_port(), metrics_port=free_port(), pacs_port=pacs.dicom_port,
                use_cases=USE_CASES, stable_seconds=STABLE_SECONDS, inference=inference,
                calling=tuple(sorted(set(AE.values()))), hl7Listener={"port": hl7_port}, mpps={"enabled": True}))
            stack.callback(router.stop)
            router.start()
            routers.append(router)
            hl7_ports.append(hl7_port)
        ledger, sampler = Ledger(pacs), Sampler(routers)
        ledger.start()
        sampler.start()
        stack.callback(ledger.stopping.set)
        stack.callback(sampler.stopping.set)

        jobs: queue.Queue[tuple[Sent, Template] | None] = queue.Queue()
        sent: list[Sent] = []

        def worker() -> None:
            while (job := jobs.get()) is not None:
                item, template = job
                item.started = time.time()
                send_study(item, template, routers[item.router], hl7_ports[item.router], spool_tmp)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.associations)]
        for th in threads:
            th.start()
        start = time.time()
        for n, (due, kind, template) in enumerate(schedule):
            delay = start + due - time.time()
            if delay > 0:
                time.sleep(delay)
            number = args.seed * 1_000_000 + n
            item = Sent(number, kind, f"{ROOT}.{_identity(number)[0]}.1", len(template.paths), start + due,
                        router=n % args.routers)
            sent.append(item)
            jobs.put((item, template))
        offered_until = time.time()
        for _ in threads:
            jobs.put(None)
        for th in threads:
            th.join()
        sending_done = time.time()
        load_samples = [(s["t"] - start, s["queue"], s["rss"], s["shmem"]) for s in sampler.samples
                        if s["t"] <= sending_done]

        expected = {s.study_uid for s in sent if s.kind in EXPECTS_SR and s.acknowledged == s.instances}
        deadline = time.time() + args.drain_minutes * 60
        while time.time() < deadline and not (expected <= set(ledger.count) and sampler.samples
                                             and sampler.samples[-1]["queue"] == 0
                                             and sampler.samples[-1]["outbox"] == 0):
            time.sleep(1)
        drained = time.time()
        time.sleep(3)  # a duplicate would come right after the first: give it the chance to show
        ledger.stopping.set()
        sampler.stopping.set()
        ledger.join()

        latencies = [ledger.first[s.study_uid] - s.last_image for s in sent if s.study_uid in ledger.first]
        warm = duration * 0.2  # model sessions load and caches fill on the first studies of each kind
        queue_pts = [(t, q) for t, q, _, _ in load_samples if t >= warm]
        rss_pts = [(t, r) for t, _, r, _ in load_samples if t >= warm]
        # Triton's shared-memory input regions are resident too; they grow to the largest study seen, then stay.
        shmem_pts = [(t, m) for t, _, _, m in load_samples if t >= warm]
        private_pts = [(t, r - m) for t, _, r, m in load_samples if t >= warm]
        by_kind = Counter(s.kind for s in sent)
        instances = sum(s.acknowledged for s in sent)
        result = {
            "mode": "triton" if args.triton else "embedded", "routers": args.routers, "short": args.short,
            "minutes": args.minutes, "offered_studies_per_hour": rate_per_s * 3600, "studies_offered": len(sent),
            "mix": dict(by_kind), "instances_sent": instances,
            "sending_wall_s": sending_done - start, "offered_wall_s": offered_until - start,
            "sent_studies_per_hour": len(sent) / (sending_done - start) * 3600,
            "instances_per_s": instances / (sending_done - start),
            "sender_start_lag_p95_s": _pct([s.started - s.due for s in sent], 0.95),
            "sender_start_lag_max_s": max((s.started - s.due for s in sent), default=0.0),
            "queue_depth_slope_per_min": _slope(queue_pts) * 60,
            "queue_depth_max": max((q for _, q in queue_pts), default=0.0),
            "queue_depth_end_of_load": load_samples[-1][1] if load_samples else float("nan"),
            "rss_slope_mb_per_min": _slope(rss_pts) * 60 / 2**20,
            "rss_start_mb": rss_pts[0][1] / 2**20 if rss_pts else float("nan"),
            "rss_end_mb": rss_pts[-1][1] / 2**20 if rss_pts else float("nan"),
            "rss_shmem_slope_mb_per_min": _slope(shmem_pts) * 60 / 2**20,
            "rss_shmem_end_mb": shmem_pts[-1][1] / 2**20 if shmem_pts else float("nan"),
            "rss_without_shmem_slope_mb_per_min": _slope(private_pts) * 60 / 2**20,
            "drain_s": drained - sending_done,
            "results_expected": len(expected),
            "results_lost": len(expected - set(ledger.count)),
            "results_duplicated": sum(1 for uid in expected if ledger.count[uid] > 1),
            "results_unexpected": sum(1 for uid in ledger.count if uid not in expected),
            "non_sr_cstores_at_pacs": ledger.other,
            "last_image_to_sr_p50_s": _pct(latencies, 0.5),
            "last_image_to_sr_p95_s": _pct(latencies, 0.95),
            "last_image_to_sr_p95_by_kind_s": {
                kind: round(_pct([ledger.first[s.study_uid] - s.last_image for s in sent
                                  if s.kind == kind and s.study_uid in ledger.first], 0.95), 3)
                for kind in sorted(EXPECTS_SR)},
            "studies_with_errors": sum(1 for s in sent if s.errors),
            "first_errors": [f"{s.kind} #{s.number % 1_000_000}: {'; '.join(s.errors)}" for s in sent if s.errors][:5],
        }
        if args.keep_samples:
            result["samples"] = sampler.samples
            result["studies"] = [asdict(s) for s in sent]
        return result


def main(argv: list[str] | None = None) -> int:
    """Run one load test, print the figures and write ``.bench/loadtest[-triton].json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="one-minute smoke with small studies")
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--peak-per-hour", type=float, default=250.0)
    parser.add_argument("--multiplier", type=float)
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--triton", action="store_true", help="routers share one Triton (default 3 routers)")
    parser.add_argument("--routers", type=int)
    parser.add_argument("--drain-minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep-samples", action="store_true", help="write every sample and study to the JSON")
    if argv is None and __name__ != "__main__":
        argv = ["--short"]  # python -m bench: the smoke; make loadtest runs the real one
    args = parser.parse_args(argv)
    args.minutes = args.minutes if args.minutes is not None else (1.0 if args.short else 10.0)
    args.multiplier = args.multiplier if args.multiplier is not None else 4.0
    args.routers = args.routers or (3 if args.triton else 1)
    if args.short:
        args.drain_minutes = min(args.drain_minutes, 3.0)
    result = run(args)
    for key, value in result.items():
        if key in ("samples", "studies"):
            continue
        print(f"  {key:34} {value:.4g}" if isinstance(value, float) else f"  {key:34} {value}")
    out = REPO / ".bench" / f"loadtest{'-triton' if args.triton else ''}{'-short' if args.short else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    broken = result["results_lost"] or result["results_duplicated"] or result["studies_with_errors"]
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
