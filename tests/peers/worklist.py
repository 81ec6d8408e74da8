"""Modality Worklist peers from dcmtk (Debian package ``dcmtk``): ``wlmscpfs`` as the RIS, ``findscu -W`` as a client.

* :class:`RisWorklist` / :func:`ris_worklist`: writes ``.wl`` files with ``dump2dcm`` from text dumps of
  :class:`RisItem` and serves them with ``wlmscpfs`` on a free loopback port (files can be changed or removed while
  it runs: it reads the directory on every query).
* :func:`findscu_worklist`: queries a worklist SCP with ``findscu -W -k ...`` and returns the parsed response
  identifiers (``-X`` writes each one to a file, read back with pydicom) and the final status.

Every process gets ``TCP_NODELAY=1`` in its environment (Debian's dcmtk leaves Nagle on otherwise).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from tests.peers.dcmtk import HOST, dcmtk_env
from tests.peers.net import free_port, stop_process, wait_port


@dataclass
class RisItem:
    """One Scheduled Procedure Step as the RIS lists it (a ``.wl`` file); values are written as given (UTF-8)."""

    accession: str
    patient_id: str
    patient_name: str = "Doe^Jane"
    birth_date: str = "19700101"
    sex: str = "F"
    study_uid: str = "1.2.826.0.1.3680043.8.498.1"
    requested_procedure_id: str = "RP1"
    procedure_code: str = "CTHEAD"
    procedure_scheme: str = "99RIS"
    procedure_meaning: str = "CT head without contrast"
    description: str = "CT head without contrast"
    priority: str = "ROUTINE"
    location: str = "ED"
    reason: str = "Fall, headache"
    placer_order: str = "PLC1"
    filler_order: str = "FIL1"
    station_ae: str = "CT01"
    modality: str = "CT"
    start_date: str = "20261130"
    start_time: str = "093000"
    sps_id: str = "SPS1"
    sps_description: str = "CT head"
    sps_status: str = "SCHEDULED"

    def dump(self) -> str:
        """The item as a ``dump2dcm`` text dump (UTF-8, Specific Character Set ISO_IR 192)."""
        return "\n".join([
            "(0008,0005) CS [ISO_IR 192]",
            f"(0008,0050) SH [{self.accession}]",
            "(0008,0090) PN []",
            f"(0010,0010) PN [{self.patient_name}]",
            f"(0010,0020) LO [{self.patient_id}]",
            f"(0010,0030) DA [{self.birth_date}]",
            f"(0010,0040) CS [{self.sex}]",
            f"(0020,000d) UI [{self.study_uid}]",
            f"(0032,1060) LO [{self.description}]",
            "(0032,1064) SQ (Sequence with undefined length)",
            "(fffe,e000) na (Item with undefined length)",
            f"(0008,0100) SH [{self.procedure_code}]",
            f"(0008,0102) SH [{self.procedure_scheme}]",
            f"(0008,0104) LO [{self.procedure_meaning}]",
            "(fffe,e00d) na (ItemDelimitationItem)",
            "(fffe,e0dd) na (SequenceDelimitationItem)",
            f"(0038,0300) LO [{self.location}]",
            "(0040,0100) SQ (Sequence with undefined length)",
            "(fffe,e000) na (Item with undefined length)",
            f"(0008,0060) CS [{self.modality}]",
            f"(0040,0001) AE [{self.station_ae}]",
            f"(0040,0002) DA [{self.start_date}]",
            f"(0040,0003) TM [{self.start_time}]",
            "(0040,0006) PN []",
            f"(0040,0007) LO [{self.sps_description}]",
            f"(0040,0009) SH [{self.sps_id}]",
            f"(0040,0020) CS [{self.sps_status}]",
            "(fffe,e00d) na (ItemDelimitationItem)",
            "(fffe,e0dd) na (SequenceDelimitationItem)",
            f"(0040,1001) SH [{self.requested_procedure_id}]",
            f"(0040,1002) LO [{self.reason}]",
            f"(0040,1003) SH [{self.priority}]",
            f"(0040,2016) LO [{self.placer_order}]",
            f"(0040,2017) LO [{self.filler_order}]",
            "",
        ])


RIS_ITEM_FIELDS = tuple(f.name for f in fields(RisItem))


def ris_item_file(directory: Path, item: RisItem, name: str = "item") -> Path:
    """``item`` as a worklist file ``<directory>/<name>.wl.tmp``, written by dcmtk ``dump2dcm`` from its text dump."""
    dump = directory / f"{name}.dump"
    dump.write_text(item.dump(), encoding="utf-8")
    path = directory / f"{name}.wl.tmp"
    subprocess.run(["dump2dcm", "-q", str(dump), str(path)], check=True, capture_output=True, timeout=30)
    return path


class RisWorklist:
    """A running ``wlmscpfs`` serving ``.wl`` files from ``root/<ae_title>/`` on ``127.0.0.1:port``."""

    def __init__(self, root: Path, ae_title: str = "RISMWL") -> None:
        self.ae_title = ae_title
        self.directory = root / ae_title
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "lockfile").touch()  # wlmscpfs refuses (0xA700) without it
        self.root = root
        self.port = free_port()
        self.log = root / "wlmscpfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, name: str, item: RisItem) -> Path:
        """Write (or replace) ``<name>.wl`` from ``item`` with ``dump2dcm``."""
        target = self.directory / f"{name}.wl"
        ris_item_file(self.root, item, name).replace(target)  # atomically: wlmscpfs never reads a half-written file
        return target

    def remove(self, name: str) -> None:
        """Take ``<name>.wl`` off the worklist."""
        (self.directory / f"{name}.wl").unlink()

    def start(self) -> None:
        """Start ``wlmscpfs`` (single process, the files' character set kept) and wait for its port."""
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["wlmscpfs", "-s", "-v", "-dhl", "-csk", "-dfp", str(self.root), str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())
        wait_port(self.port, 30, self.proc)

    def stop(self) -> None:
        """Stop ``wlmscpfs`` (by PID) and wait for it."""
        stop_process(self.proc)
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of wlmscpfs's log (for failure messages)."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


@contextlib.contextmanager
def ris_worklist(root: Path, ae_title: str = "RISMWL") -> Iterator[RisWorklist]:
    """A started :class:`RisWorklist` in ``root``, stopped on exit."""
    ris = RisWorklist(root, ae_title)
    ris.start()
    try:
        yield ris
    finally:
        ris.stop()


_DIMSE_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4}):?\s*(.*)$", re.MULTILINE)


@dataclass
class WorklistAnswer:
    """What ``findscu -W`` got: its return code and output, the response identifiers, every response's status.

    ``statuses`` are the DIMSE statuses of the C-FIND responses in order (pending ones, then the final one), and
    ``final`` is dcmtk's text for the last one, e.g. ``"Success: Matching is complete"``.
    """

    returncode: int
    output: str
    items: list[Dataset]
    statuses: list[int]
    final: str

    @property
    def status(self) -> int | None:
        """The final C-FIND status (None when no response arrived)."""
        return self.statuses[-1] if self.statuses else None

    @property
    def success(self) -> bool:
        """Whether the query ended with status 0x0000."""
        return self.status == 0x0000


def findscu_worklist(port: int, keys: Sequence[str], *, called: str = "PACSFLOW", calling: str = "FINDSCU",
                     host: str = HOST, timeout: float = 60) -> WorklistAnswer:
    """Query a Modality Worklist SCP with ``findscu -W`` and parse every response identifier.

    Parameters
    ----------
    port, host, called, calling
        The worklist SCP and the AE titles of the association.
    keys
        ``-k`` arguments, e.g. ``["ScheduledProcedureStepSequence[0].Modality=CT", "PatientName",
        "RequestedProcedurePriority"]``. Non-ASCII values need ``"SpecificCharacterSet=ISO_IR 192"`` too.

    Returns
    -------
    WorklistAnswer
        Identifiers in the order they arrived, decoded by pydicom with their Specific Character Set.
    """
    out_dir = Path(tempfile.mkdtemp(prefix="findscu-"))
    try:
        command = ["findscu", "-W", "-d", "-to", "10", "-ta", "10", "-td", "30", "-aec", called, "-aet", calling,
                   "-X", "-od", str(out_dir)]
        for key in keys:
            command += ["-k", key]
        proc = subprocess.run([*command, host, str(port)], capture_output=True, timeout=timeout, env=dcmtk_env(),
                              check=False)
        output = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
        items = [pydicom.dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm"))]
        statuses = _DIMSE_STATUS.findall(output)
        return WorklistAnswer(proc.returncode, output, items, [int(code, 16) for code, _ in statuses],
                              statuses[-1][1].strip() if statuses else "")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
