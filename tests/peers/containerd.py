"""A private containerd (Debian's 1.6) for the image tests and the single-node cluster (docs/pods.md).

Everything it makes lives under one work directory (root, state, socket, config, log) so that stopping it
leaves nothing behind: tasks are killed and deleted, containers and snapshots removed, the daemon stopped by
its PID, then any mount still under the directory is unmounted and the directory removed.

``ctr`` is driven as a subprocess: it is the tool an administrator uses, and what the issue asks the tests
to show (``ctr run --read-only --user ...``, ``ctr -n k8s.io images import``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .net import stop_process

NAMESPACE = "pacsflow"
IMAGES_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "images.sh"


def image_archives() -> list[Path]:
    """``scripts/images.sh archive``: builds the images whose inputs changed (cached layers otherwise) and returns
    their docker-archives (``<name>-<version>.tar``); a failed build fails the calling test with its output."""
    result = subprocess.run([str(IMAGES_SCRIPT), "archive"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"scripts/images.sh archive failed:\n{result.stderr[-3000:]}")
    return [Path(line) for line in result.stdout.split()]


class ContainerdError(RuntimeError):
    """containerd or ctr failed; the message carries the command's output or the daemon's log tail."""


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ContainerdError(f"{tool} is missing: run scripts/install-node-deps.sh (make images does it)")
    return path


def config_toml(root: Path, state: Path, socket: Path, *, cri: str | None = None) -> str:
    """containerd's config (version 2): private root/state/socket; the CRI plugin only when ``cri`` is given.

    Parameters
    ----------
    root, state, socket
        containerd's persistent directory, runtime state directory and gRPC socket.
    cri
        Extra TOML for ``[plugins."io.containerd.grpc.v1.cri"]`` (the node's CNI and sandbox image), or None
        to disable the CRI plugin (the image tests use plain ``ctr``).

    Returns
    -------
    str
        The TOML text.
    """
    lines = [
        "version = 2",
        f'root = "{root}"',
        f'state = "{state}"',
        "[grpc]",
        f'  address = "{socket}"',
        "[ttrpc]",
        f'  address = "{socket}.ttrpc"',
        "[debug]",
        '  address = ""',
        "[metrics]",
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{root}/opt"',
    ]
    if cri is None:
        lines.insert(1, 'disabled_plugins = ["io.containerd.grpc.v1.cri"]')
    else:
        lines.append(cri)
    return "\n".join(lines) + "\n"


@dataclass
class Containerd:
    """One containerd daemon under ``workdir`` (started by :meth:`start`, stopped by PID in :meth:`stop`)."""

    workdir: Path
    cri: str | None = None
    proc: subprocess.Popen | None = None
    run_dir: Path = field(init=False)
    _made_run_containerd: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        # Unix socket paths are limited to 108 bytes and runc's shim sockets nest under the state dir: keep
        # the socket and state in a short directory of their own.
        self.run_dir = Path(tempfile.mkdtemp(prefix="pfctrd-", dir="/run"))
        # containerd 1.6 puts shim sockets and ctr's FIFOs under /run/containerd whatever its state dir is.
        self._made_run_containerd = not Path("/run/containerd").exists()

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def log_path(self) -> Path:
        return self.workdir / "containerd.log"

    def start(self, timeout: float = 60.0) -> Containerd:
        """Start the daemon and wait until ``ctr version`` answers.

        Raises
        ------
        ContainerdError
            If containerd or runc is missing, or the daemon does not answer within ``timeout`` seconds.
        """
        binary = _require("containerd")
        _require("ctr")
        _require("runc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(config_toml(self.root, self.run_dir / "state", self.socket, cri=self.cri))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([binary, "--config", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerdError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if subprocess.run(self.ctr_argv("version"), capture_output=True, check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise ContainerdError(f"containerd did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def ctr_argv(self, *args: str, namespace: str = NAMESPACE) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", namespace, *args]

    def ctr(self, *args: str, namespace: str = NAMESPACE, timeout: float = 600.0) -> str:
        """Run ``ctr`` against this daemon and return its stdout.

        Raises
        ------
        ContainerdError
            On a non-zero exit, with ctr's output.
        """
        result = subprocess.run(self.ctr_argv(*args, namespace=namespace), capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args[:2])} failed ({result.returncode}): "
                                  f"{result.stderr.strip()[-2000:]}")
        return result.stdout

    def import_image(self, archive: Path, *, namespace: str = NAMESPACE) -> None:
        """``ctr images import`` a docker-archive made by ``scripts/images.sh archive``."""
        self.ctr("images", "import", str(archive), namespace=namespace)

    def remove_container(self, name: str) -> None:
        """Kill and delete a task and its container (and snapshot); nothing if it does not exist."""
        subprocess.run(self.ctr_argv("tasks", "kill", "--signal", "SIGKILL", name), capture_output=True,
                       check=False)
        for _ in range(50):
            done = subprocess.run(self.ctr_argv("tasks", "delete", "--force", name), capture_output=True,
                                  text=True, check=False)
            if done.returncode == 0 or "not found" in done.stderr:
                break
            time.sleep(0.2)
        subprocess.run(self.ctr_argv("containers", "delete", name), capture_output=True, check=False)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the daemon by PID, unmount what is left under its directories and remove the run directory."""
        stop_process(self.proc, timeout=20)
        for base in (self.run_dir, self.workdir):
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                      if line.split()[1].startswith(str(base) + "/")]
            for mount in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._made_run_containerd:
            shutil.rmtree("/run/containerd", ignore_errors=True)
