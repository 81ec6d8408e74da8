"""A real Orthanc (Debian ``/usr/sbin/Orthanc``) as the PACS for tests, benchmarks and the demo.

Independent of pacsflow_router (stdlib only) so the demo can import it too::

    with Orthanc(tmp_path / "orthanc", modalities={"router": ("PACSFLOW", "127.0.0.1", 11112)},
                 lua_scripts=[forward_script(tmp_path / "forward.lua", "router")]) as pacs:
        pacs.dicom_port, pacs.http_url          # free loopback ports, chosen at construction
        pacs.instances(modality="SR")            # Orthanc instance ids
        pacs.instance_file(instance_id)          # the stored DICOM file, bytes

``stop()`` / ``start()`` keep the storage, so a test can take the PACS down and bring it back. Orthanc runs with
``TCP_NODELAY=1`` in its environment (its DICOM layer is dcmtk, which reads that variable) and is stopped by PID.

Counting deliveries: Orthanc answers Success to a C-STORE of a SOP Instance UID it already holds and keeps one copy,
so the stored instances cannot show a duplicate send. Every Orthanc started here therefore keeps a ledger
(:data:`LEDGER_LUA`, a ``ReceivedInstanceFilter`` that Orthanc calls for every instance it receives, duplicates
included, before it answers): :meth:`Orthanc.received` lists one :class:`Received` per request, across restarts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ORTHANC_BIN = "/usr/sbin/Orthanc"
PLUGINS_DIR = Path("/usr/share/orthanc/plugins")

#: Lua for Orthanc: forward every stored image to a DICOM modality, except what came from Lua or is an SR (so
#: the router's own results are not sent back to it). ``{modality}`` is the key in ``DicomModalities``.
FORWARD_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
  -- Forwarding SRs back would loop the router's own results; RequestOrigin 'Lua' is our own resend.
  if origin['RequestOrigin'] ~= 'Lua' and tags['Modality'] ~= 'SR' then
    SendToModality(instanceId, '{modality}')
  end
end
"""


#: Lua for Orthanc: append one tab-separated line per received instance (C-STORE, REST upload ...) to a ledger file,
#: then accept it. Orthanc calls ``ReceivedInstanceFilter`` before it looks for the instance in its index, so a
#: re-sent SOP Instance UID gets a line of its own although Orthanc keeps one copy. Only one script may define this
#: callback: a later ``lua_scripts`` entry defining it would replace the ledger.
LEDGER_LUA = """\
function ReceivedInstanceFilter(dicom, origin, info)
  local ledger = io.open({path}, 'a')
  ledger:write(table.concat({origin['RequestOrigin'] or '', origin['RemoteAet'] or '', dicom['Modality'] or '',
    dicom['SOPClassUID'] or '', dicom['SOPInstanceUID'] or '', dicom['StudyInstanceUID'] or ''}, '\\t') .. '\\n')
  ledger:close()
  return true
end
"""

_LEDGER_FIELDS = ("origin", "remote_aet", "modality", "sop_class_uid", "sop_instance_uid", "study_uid")


@dataclass(frozen=True)
class Received:
    """One instance Orthanc received (a line of the ledger): who sent it over what, and which instance it was.

    ``origin`` is Orthanc's RequestOrigin (``DicomProtocol`` for a C-STORE, ``RestApi``, ``Lua`` ...);
    ``remote_aet`` is the calling AE title of a C-STORE.
    """

    origin: str
    remote_aet: str
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forward_script(path: Path, modality: str) -> Path:
    """Write :data:`FORWARD_LUA` for ``modality`` to ``path`` and return the path (for ``lua_scripts``)."""
    path.write_text(FORWARD_LUA.replace("{modality}", modality))
    return path


def available() -> bool:
    """True when the Orthanc binary is installed."""
    return Path(ORTHANC_BIN).exists() or shutil.which("Orthanc") is not None


class Orthanc:
    """One Orthanc process with its own storage, config and log under ``workdir``.

    Parameters
    ----------
    workdir : Path
        Storage, index, config and log go here.
    aet : str
        Orthanc's own AE title.
    modalities : dict
        ``DicomModalities``: name -> (AE title, host, port), e.g. the router for forwarding.
    lua_scripts : list of Path
        ``LuaScripts`` to load.
    plugins : list of str
        Plugin file names in ``/usr/share/orthanc/plugins`` (e.g. ``libOrthancDicomWeb.so``).
    dicom_port, http_port : int, optional
        Fixed ports; free loopback ports by default.
    config : dict, optional
        Extra Orthanc configuration keys, e.g. ``{"DicomScpTimeout": 2}`` (Orthanc waits up to that long for open
        associations when it stops, and closes associations idle for that long).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        lua_scripts: list[Path] | None = None,
        plugins: list[str] | None = None,
        dicom_port: int | None = None,
        http_port: int | None = None,
        config: dict | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = dicom_port or _free_port()
        self.http_port = http_port or _free_port()
        self.modalities = dict(modalities or {})
        self.lua_scripts = [Path(p) for p in lua_scripts or []]
        self.plugins = list(plugins or [])
        self.extra_config = dict(config or {})
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"
        self.ledger_path = self.workdir / "received.tsv"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """Base URL of the REST API (and the web UI at ``/app/explorer.html``)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    def _write_config(self) -> None:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": f"pacsflow-test-{self.aet}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: list(v) for name, v in self.modalities.items()},
            "LuaScripts": [str(self._write_ledger_script()), *(str(p) for p in self.lua_scripts)],
            "Plugins": [str(PLUGINS_DIR / p) for p in self.plugins],
            "StableAge": 1,
            "SaveJobs": False,
            "HttpVerbose": False,
            "ConcurrentJobs": 1,
            **self.extra_config,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def _write_ledger_script(self) -> Path:
        script = self.workdir / "ledger.lua"
        # json.dumps gives a double-quoted string with backslash escapes, which Lua reads the same way.
        script.write_text(LEDGER_LUA.replace("{path}", json.dumps(str(self.ledger_path))))
        return script

    def start(self, timeout: float = 60.0) -> Orthanc:
        """Start Orthanc and wait until ``/system`` answers. Storage from an earlier start is kept."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        env = {**os.environ, "TCP_NODELAY": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [ORTHANC_BIN, "--verbose", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer on {self.http_url} within {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 60.0, *, kill: bool = False) -> None:
        """Stop the Orthanc this object started by its PID.

        SIGTERM (a clean shutdown takes Orthanc ~3.5 s, longer while associations are open), SIGKILL if it has
        not exited after ``timeout``; ``kill=True`` sends SIGKILL at once (a crash, or a fast teardown of a
        throw-away instance).
        """
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- REST helpers ------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: object | None = None, timeout: float = 30.0) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.http_url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def get(self, path: str) -> object:
        """GET a REST path and decode the JSON answer."""
        return json.loads(self._request("GET", path))

    def post(self, path: str, body: object) -> object:
        """POST JSON to a REST path and decode the JSON answer."""
        return json.loads(self._request("POST", path, body))

    def studies(self) -> list[str]:
        """Orthanc ids of all studies."""
        return self.get("/studies")

    def instances(self, modality: str | None = None, study_uid: str | None = None) -> list[str]:
        """Orthanc ids of stored instances, optionally only those of a modality and/or a study."""
        if modality is None and study_uid is None:
            return self.get("/instances")
        query = {}
        if modality is not None:
            query["Modality"] = modality
        if study_uid is not None:
            query["StudyInstanceUID"] = study_uid
        return self.post("/tools/find", {"Level": "Instance", "Query": query})

    def instance_tags(self, instance_id: str) -> dict:
        """Simplified tags (keyword -> value) of one instance."""
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of one instance."""
        return self._request("GET", f"/instances/{instance_id}/file")

    def statistics(self) -> dict:
        """``/statistics``: counts of patients, studies, series, instances."""
        return self.get("/statistics")

    def received(self, *, modality: str | None = None, study_uid: str | None = None,
                 origin: str | None = "DicomProtocol") -> list[Received]:
        """Every instance received so far, one entry per request (duplicates included), in arrival order.

        Filters: ``modality`` and ``study_uid`` of the instance, ``origin`` of the request (C-STOREs by default;
        ``None`` for all). The ledger is written before Orthanc answers, so a request that got its response is in
        it; it survives :meth:`stop` / :meth:`start`.
        """
        if not self.ledger_path.exists():
            return []
        entries = [Received(*line.split("\t")) for line in self.ledger_path.read_text().splitlines()
                   if line.count("\t") == len(_LEDGER_FIELDS) - 1]
        return [e for e in entries
                if (modality is None or e.modality == modality) and (study_uid is None or e.study_uid == study_uid)
                and (origin is None or e.origin == origin)]

    def log_text(self) -> str:
        """Orthanc's log so far (for association counting and failure messages)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
