"""The router image built by ``make images`` (buildah, local bookworm base) runs under containerd + runc.

``ctr run --read-only`` with the image's own user (USER 10001:10001) and entrypoint starts the router from a mounted routing
config, it answers dcmtk's C-ECHO on its port, runs as uid 10001 and cannot write its root filesystem; the only
writable place is its spool volume, as in the operator's pod spec. The images are built by
``scripts/images.sh archive`` (a prerequisite of ``make test``; cached layers make it a no-op when nothing
changed).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.peers.containerd import Containerd
from tests.peers.containerd import image_archives as build_archives
from tests.peers.dcmtk import echoscu
from tests.peers.net import eventually, free_port, wait_port

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
UID = 10001


@pytest.fixture(scope="module")
def image_archives() -> dict[str, Path]:
    """``scripts/images.sh archive``: builds what changed, returns {router|operator|triton-cpu: archive}."""
    return {path.name.rsplit("-", 1)[0]: path for path in build_archives()}


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    daemon = Containerd(tmp_path_factory.mktemp("containerd")).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _image_ref(archive: Path) -> str:
    # <cache>/images/router-0.1.0.tar -> localhost/pacsflow/router:0.1.0 (scripts/images.sh names)
    name, version = archive.name.removesuffix(".tar").rsplit("-", 1)
    return f"localhost/pacsflow/{name}:{version}"


def test_router_image_runs_read_only_as_non_root_and_answers_c_echo(
        image_archives: dict[str, Path], containerd: Containerd, tmp_path: Path) -> None:
    archive = image_archives["router"]
    containerd.import_image(archive)
    image = _image_ref(archive)
    labels = containerd.ctr("images", "list", f"name=={image}")
    assert image in labels

    port, metrics_port = free_port(), free_port()
    config_dir, spool = tmp_path / "config", tmp_path / "data"
    config_dir.mkdir()
    spool.mkdir()
    os.chown(spool, UID, UID)
    (config_dir / "router.yaml").write_text(yaml.safe_dump({
        "aeTitle": "PACSFLOW", "port": port, "allowedCallingAETitles": ["STORESCU"],
        "spoolDir": "/var/lib/pacsflow/spool", "destinations": [],
        "inference": {"backend": "embedded", "modelRepository": "/opt/pacsflow/model_repository"},
        "audit": {"url": "sqlite:////var/lib/pacsflow/audit.db"},
        "metrics": {"port": metrics_port}, "useCases": [],
    }))
    name = "router-image-test"
    log = tmp_path / "router.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(containerd.ctr_argv(
            "run", "--rm", "--read-only", "--net-host", "--env", "TCP_NODELAY=1",
            "--mount", f"type=bind,src={config_dir},dst=/etc/pacsflow,options=rbind:ro",
            "--mount", f"type=bind,src={spool},dst=/var/lib/pacsflow,options=rbind:rw",
            image, name, "pacsflow-router", "--config", "/etc/pacsflow/router.yaml",
        ), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 180, proc)
        echo = echoscu(port)
        assert echo.returncode == 0, echo.stdout + echo.stderr

        pid = int(containerd.ctr("tasks", "list").split(name, 1)[1].split()[0])
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(UID)] * 4, uid_line
        # The root filesystem is read-only even for a writer inside the container; the volume is not.
        denied = subprocess.run(containerd.ctr_argv("tasks", "exec", "--exec-id", "w1", name,
                                                    "/bin/sh", "-c", "touch /opt/pacsflow/x"),
                                capture_output=True, text=True, check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stdout + denied.stderr
        eventually(lambda: (spool / "audit.db").exists(), "the router writing its audit DB on the volume", 30)
        assert (spool / "audit.db").stat().st_uid == UID
    finally:
        containerd.remove_container(name)
        proc.wait(30)
        print(log.read_text(errors="replace")[-3000:])


def test_triton_image_serves_the_rendered_repository_read_only_as_non_root(
        image_archives: dict[str, Path], containerd: Containerd, tmp_path: Path) -> None:
    archive = image_archives["triton-cpu"]
    containerd.import_image(archive)
    models = tmp_path / "models"
    # What the Triton pod's init container does with the router image (reconcile/triton.py render_args).
    subprocess.run([str(REPO / ".venv" / "bin" / "pacsflow"), "model-repository", "render", "--target", "cpu-python",
                    "--source", str(REPO / "model_repository"), "--out", str(models)], check=True)
    http, grpc, metrics = free_port(), free_port(), free_port()
    name = "triton-image-test"
    log = tmp_path / "triton.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(containerd.ctr_argv(
            "run", "--rm", "--read-only", "--net-host",
            "--mount", f"type=bind,src={models},dst=/models,options=rbind:ro",
            "--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev:size=262144k",
            "--mount", "type=tmpfs,src=shm,dst=/dev/shm,options=nosuid:nodev:size=262144k",
            _image_ref(archive), name, "tritonserver", "--model-repository=/models", "--strict-readiness=true",
            f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
        ), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(http, 300, proc)

        def ready_models() -> list[dict]:
            import urllib.request
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5) as resp:
                    if resp.status != 200:
                        return []
                request = urllib.request.Request(f"http://127.0.0.1:{http}/v2/repository/index", data=b"{}")
                with urllib.request.urlopen(request, timeout=5) as resp:
                    index = json.loads(resp.read())
            except OSError:
                return []
            return [m for m in index if m.get("state") == "READY"]

        rendered = {p.name for p in models.iterdir() if (p / "config.pbtxt").exists()}
        ready = eventually(lambda: {m["name"] for m in ready_models()} >= rendered, "Triton ready with every "
                           "rendered model READY", 300, context=lambda: log.read_text(errors="replace")[-3000:])
        assert ready and rendered
    finally:
        containerd.remove_container(name)
        proc.wait(30)
        print(log.read_text(errors="replace")[-3000:])
