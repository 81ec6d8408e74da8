"""A real Kubernetes control plane on loopback: etcd + kube-apiserver + kube-controller-manager.

Launched the way controller-runtime's envtest does it (self-signed CA and serving certificate, an
admin client certificate in ``system:masters``, a service-account signing key pair, RBAC), plus
kube-controller-manager so that the garbage collector, namespace deletion and the service-account
controllers behave as in a real cluster. The binaries are built once from the Go module proxy by
``scripts/cluster.sh bins`` (see docs/cluster.md) into a cache outside the repository.

Two ways in:

* tests: ``with control_plane(tmp_dir) as cp: ...`` (the session fixture ``kube_cluster`` in
  tests/integration/conftest.py); the processes die with the test session.
* developers: ``python -m tests.peers.cluster up .cluster`` / ``down .cluster`` (what
  ``make cluster-up`` / ``make cluster-down`` run); the processes outlive the command and are
  stopped by the PIDs recorded in ``.cluster/pids/``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
# cluster/go.mod is the one place the Kubernetes version is written down (scripts/cluster.sh reads it too).
K8S_VERSION = re.search(
    r"^require k8s\.io/kubernetes (v\S+)$", (REPO / "cluster" / "go.mod").read_text(), re.MULTILINE
).group(1)
CLUSTER_SCRIPT = REPO / "scripts" / "cluster.sh"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# The first address of the service range is the in-cluster `kubernetes` Service; real clusters put
# it in the serving certificate, so clients that follow in-cluster config would verify it too.
KUBERNETES_SERVICE_IP = "10.0.0.1"
BINARIES = ("kube-apiserver", "kube-controller-manager")
# Start order; stopping goes in reverse so nothing loses its backend while still running.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or stopped; the message points at the log."""


def cache_dir() -> Path:
    """Directory outside the repository that holds the built binaries for ``K8S_VERSION``.

    Returns
    -------
    Path
        ``${PACSFLOW_CACHE:-~/.cache/pacsflow}/k8s-<version>``.
    """
    root = os.environ.get("PACSFLOW_CACHE") or str(Path.home() / ".cache" / "pacsflow")
    return Path(root) / f"k8s-{K8S_VERSION}"


def bin_dir() -> Path:
    """Where ``kube-apiserver``, ``kube-controller-manager`` and ``helm`` live."""
    return cache_dir() / "bin"


def helm_path() -> Path:
    """The ``helm`` v3 binary, built by ``scripts/cluster.sh helm`` (``make helm``) on first use.

    Returns
    -------
    Path
        Path to an executable ``helm``.

    Raises
    ------
    ControlPlaneError
        If the build fails.
    """
    helm = bin_dir() / "helm"
    if not os.access(helm, os.X_OK):
        if subprocess.run([str(CLUSTER_SCRIPT), "helm"], check=False).returncode != 0:
            raise ControlPlaneError(f"building helm failed ({CLUSTER_SCRIPT} helm)")
    return helm


def ensure_binaries() -> Path:
    """Return the binary directory, building the control plane with ``scripts/cluster.sh bins`` if needed.

    The first build compiles Kubernetes from source (about 20 minutes on two cores, see
    docs/cluster.md); later calls find the cached binaries and return at once.

    Returns
    -------
    Path
        Directory containing ``kube-apiserver`` and ``kube-controller-manager``.

    Raises
    ------
    ControlPlaneError
        If the build fails.
    """
    directory = bin_dir()
    if not all(os.access(directory / name, os.X_OK) for name in BINARIES):
        result = subprocess.run([str(CLUSTER_SCRIPT), "bins"], check=False)
        if result.returncode != 0:
            raise ControlPlaneError(f"building the control plane failed ({CLUSTER_SCRIPT} bins)")
    return directory


# --------------------------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files the control plane runs with (all in one directory)."""

    directory: Path

    def __getattr__(self, name: str) -> Path:
        # pki.ca_crt -> <dir>/ca.crt, pki.admin_key -> <dir>/admin.key: one naming rule, no table.
        stem, _, ext = name.rpartition("_")
        if not stem or ext not in {"crt", "key", "pub"}:
            raise AttributeError(name)
        return self.directory / f"{stem.replace('_', '-')}.{ext}"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usages: tuple[x509.ObjectIdentifier, ...] = (),
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a little: the processes may read the certificate within the same second.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def generate_pki(directory: Path, address: str = "127.0.0.1") -> Pki:
    """Write a throwaway CA, serving and client certificates and a service-account key pair.

    ECDSA P-256 throughout: generated in milliseconds, accepted by every component.

    Parameters
    ----------
    directory : Path
        Created if missing; receives ``ca.crt/key``, ``apiserver.crt/key``, ``admin.crt/key``
        (``O=system:masters``), ``kube-controller-manager.crt/key``, ``kube-apiserver-kubelet-client.crt/key``,
        ``kubelet.crt/key`` (a node's serving certificate) and ``sa.key/pub``.

    Returns
    -------
    Pki
        Accessors for those files (``pki.ca_crt``, ``pki.admin_key``, ...).
    """
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    pem = serialization.Encoding.PEM

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pacsflow-test-ca")
    ca_cert = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    _write_key(pki.ca_key, ca_key)
    pki.ca_crt.write_bytes(ca_cert.public_bytes(pem))

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        *{x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", address)},
        x509.IPAddress(ipaddress.ip_address(KUBERNETES_SERVICE_IP)),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    serving = _issue(
        _name("kube-apiserver"), serving_key, ca_name, ca_key,
        usages=(ExtendedKeyUsageOID.SERVER_AUTH,), sans=sans,
    )
    _write_key(pki.apiserver_key, serving_key)
    pki.apiserver_crt.write_bytes(serving.public_bytes(pem))

    # kube-controller-manager runs every controller under its own credential
    # (--use-service-account-credentials=false), so it needs cluster-admin like envtest's admin.
    for stem, subject in (
        ("admin", _name("pacsflow-admin", "system:masters")),
        ("kube-controller-manager", _name("system:kube-controller-manager", "system:masters")),
        # kube-apiserver's own client certificate towards the kubelets (logs, exec, port-forward).
        ("kube-apiserver-kubelet-client", _name("kube-apiserver-kubelet-client", "system:masters")),
    ):
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = _issue(subject, client_key, ca_name, ca_key, usages=(ExtendedKeyUsageOID.CLIENT_AUTH,))
        _write_key(directory / f"{stem}.key", client_key)
        (directory / f"{stem}.crt").write_bytes(client.public_bytes(pem))

    # A node's kubelet serves on the control plane's address (tests.peers.node): its serving certificate comes from
    # the same CA, and kube-apiserver verifies it (--kubelet-certificate-authority).
    kubelet_key = ec.generate_private_key(ec.SECP256R1())
    kubelet = _issue(_name("kubelet"), kubelet_key, ca_name, ca_key, usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
                     sans=[x509.IPAddress(ipaddress.ip_address(ip)) for ip in sorted({"127.0.0.1", address})])
    _write_key(pki.kubelet_key, kubelet_key)
    pki.kubelet_crt.write_bytes(kubelet.public_bytes(pem))

    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


def write_kubeconfig(path: Path, server_url: str, pki: Pki, user: str = "admin") -> Path:
    """Write a self-contained kubeconfig (certificates embedded) for one of the client certificates.

    Parameters
    ----------
    path : Path
        Destination file (mode 0600: it holds a cluster-admin key).
    server_url : str
        ``https://127.0.0.1:<port>``.
    pki : Pki
        Certificates from :func:`generate_pki`.
    user : str
        Certificate stem: ``admin`` or ``kube-controller-manager``.

    Returns
    -------
    Path
        ``path``.
    """

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    name = "pacsflow-test"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server_url, "certificate-authority-data": b64(pki.ca_crt)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki.directory / f"{user}.crt"),
                    "client-key-data": b64(pki.directory / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test session dies (even SIGKILL), the kernel sends
    # SIGTERM, so no etcd or apiserver is left running on the shared machine.
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pid_alive(pid: int, binary: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose executable is named ``binary``.

    The name is checked too, so a recycled PID never gets a signal meant for our process.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state != "Z" and os.path.basename(cmdline.decode(errors="replace")) == binary


def stop_pid(pid: int, binary: str, timeout: float = 20.0) -> None:
    """SIGTERM the process ``pid`` if it still runs ``binary``; SIGKILL it after ``timeout`` seconds."""
    if not pid_alive(pid, binary):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid, binary):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager.

    Attributes
    ----------
    workdir : Path
        Holds ``kubeconfig``, ``pki/``, ``etcd-data/``, ``logs/<component>.log``, ``pids/<component>.pid``.
    kubeconfig : Path
        Admin kubeconfig (``system:masters``), certificates embedded.
    server_url : str
        ``https://127.0.0.1:<port>`` of kube-apiserver.
    etcd_url : str
        ``http://127.0.0.1:<port>`` of etcd.
    pids : dict[str, int]
        Component name -> PID.
    """

    workdir: Path
    kubeconfig: Path
    server_url: str
    etcd_url: str
    pids: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def pki(self) -> Pki:
        """The certificates and keys this control plane runs with."""
        return Pki(self.workdir / "pki")

    def log_path(self, component: str) -> Path:
        """Log file of ``etcd``, ``kube-apiserver`` or ``kube-controller-manager``."""
        return self.workdir / "logs" / f"{component}.log"

    def env(self) -> dict[str, str]:
        """A copy of ``os.environ`` with ``KUBECONFIG`` pointing at this control plane."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def api_client(self):
        """A new ``kubernetes.client.ApiClient`` for the admin user (close it when done)."""
        import kubernetes  # test-side import: the operator's own code talks to the API via kube.py

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def stop(self) -> None:
        """Stop every component by PID, controller-manager first, etcd last."""
        for component in reversed(COMPONENTS):
            pid = self.pids.get(component)
            if pid is None:
                continue
            stop_pid(pid, component)
            proc = self._procs.pop(component, None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            (self.workdir / "pids" / f"{component}.pid").unlink(missing_ok=True)
            del self.pids[component]

    # -- launching -------------------------------------------------------------------------------

    def _spawn(self, component: str, argv: list[str], *, detached: bool) -> subprocess.Popen:
        log = self.log_path(component).open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Detached (make cluster-up): own session, survives the shell. Attached (tests):
                # dies with the test process.
                start_new_session=detached,
                preexec_fn=None if detached else _die_with_parent,
            )
        finally:
            log.close()
        self._procs[component] = proc
        self.pids[component] = proc.pid
        (self.workdir / "pids" / f"{component}.pid").write_text(f"{proc.pid}\n")
        return proc

    def _wait(self, component: str, probe, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            proc = self._procs[component]
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{component} exited with status {proc.returncode}; last lines of "
                    f"{self.log_path(component)}:\n{_log_tail(self.log_path(component))}"
                )
            ok, last = probe()
            if ok:
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{component} not ready after {timeout:.0f}s ({last}); last lines of "
            f"{self.log_path(component)}:\n{_log_tail(self.log_path(component))}"
        )

    def _https_get(self, path: str) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        context.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        try:
            with urllib.request.urlopen(self.server_url + path, context=context, timeout=5) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")[-500:]
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc)

    def _etcd_healthy(self) -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as resp:
                body = resp.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            return False, str(exc)
        return json.loads(body).get("health") == "true", body

    def _apiserver_ready(self) -> tuple[bool, str]:
        status, body = self._https_get("/readyz")
        return status == 200, f"/readyz {status}: {body[-300:]}"

    def _controllers_running(self) -> tuple[bool, str]:
        # The service-account controller creating `default` in `default` proves that
        # kube-controller-manager is connected and its informers have synced.
        status, _ = self._https_get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200, f"default ServiceAccount: HTTP {status}"


def start(workdir: Path, *, detached: bool = False, binaries: Path | None = None,
          timeout: float = 120.0, address: str = "127.0.0.1") -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager on free loopback ports.

    Parameters
    ----------
    workdir : Path
        Empty or missing directory for certificates, etcd data, logs, PID files and the kubeconfig.
    detached : bool
        ``True`` for ``make cluster-up``: the processes outlive this Python process. ``False`` for
        tests: they are killed if this process dies.
    binaries : Path, optional
        Directory with ``kube-apiserver`` and ``kube-controller-manager``; default builds or reuses
        the cached ones (:func:`ensure_binaries`). etcd is Debian's ``etcd`` from ``PATH``.
    timeout : float
        Seconds each component gets to become ready.
    address : str
        Where kube-apiserver listens and what it advertises. Loopback by default; a node's bridge address
        (``tests.peers.node.NODE_IP``) when pods must reach it through the ``kubernetes`` Service.

    Returns
    -------
    ControlPlane
        Ready: ``/readyz`` answers ok and the controllers run.

    Raises
    ------
    ControlPlaneError
        A component exited or did not become ready; the message carries its log tail.
    """
    binaries = binaries or ensure_binaries()
    workdir = workdir.resolve()
    for sub in ("logs", "pids"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    pki = generate_pki(workdir / "pki", address)
    etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port()
    cp = ControlPlane(
        workdir=workdir,
        kubeconfig=workdir / "kubeconfig",
        server_url=f"https://{address}:{api_port}",
        etcd_url=f"http://127.0.0.1:{etcd_port}",
    )
    write_kubeconfig(cp.kubeconfig, cp.server_url, pki)
    kcm_kubeconfig = write_kubeconfig(
        workdir / "kube-controller-manager.kubeconfig", cp.server_url, pki, user="kube-controller-manager"
    )
    peer_url = f"http://127.0.0.1:{etcd_peer_port}"
    try:
        cp._spawn("etcd", [
            "etcd",
            "--name=pacsflow",
            f"--data-dir={workdir / 'etcd-data'}",
            f"--listen-client-urls={cp.etcd_url}",
            f"--advertise-client-urls={cp.etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=pacsflow={peer_url}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
        ], detached=detached)
        cp._wait("etcd", cp._etcd_healthy, timeout)

        cp._spawn("kube-apiserver", [
            str(binaries / "kube-apiserver"),
            f"--advertise-address={address}",
            f"--bind-address={address}",
            f"--secure-port={api_port}",
            f"--etcd-servers={cp.etcd_url}",
            f"--cert-dir={workdir / 'pki'}",
            f"--tls-cert-file={pki.apiserver_crt}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_crt}",
            # To a node's kubelet (kubectl logs/exec): authenticate with a CA-signed client certificate, verify its
            # serving certificate, and dial its InternalIP (the node's hostname resolves nowhere).
            f"--kubelet-client-certificate={pki.kube_apiserver_kubelet_client_crt}",
            f"--kubelet-client-key={pki.kube_apiserver_kubelet_client_key}",
            f"--kubelet-certificate-authority={pki.ca_crt}",
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--allow-privileged=true",
            # The `kubernetes` Service cannot point at a loopback address (the Endpoints would be
            # invalid and the reconciler logs an error every 10 s); nothing here runs in a Pod.
            "--endpoint-reconciler-type=none" if address == "127.0.0.1" else "--endpoint-reconciler-type=lease",
            "--profiling=false",
            "--v=1",
        ], detached=detached)
        cp._wait("kube-apiserver", cp._apiserver_ready, timeout)

        cp._spawn("kube-controller-manager", [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            # No HTTPS endpoint: nothing scrapes it here and it would need one more free port.
            "--secure-port=0",
            "--controllers=*",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_crt}",
            f"--cluster-signing-cert-file={pki.ca_crt}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allocate-node-cidrs=false",
            "--profiling=false",
            "--v=1",
        ], detached=detached)
        cp._wait("kube-controller-manager", cp._controllers_running, timeout)
    except BaseException:
        cp.stop()
        raise
    return cp


@contextlib.contextmanager
def control_plane(workdir: Path, **kwargs) -> Iterator[ControlPlane]:
    """Run a control plane for the duration of a ``with`` block.

    Parameters
    ----------
    workdir : Path
        Scratch directory (a pytest ``tmp_path``); see :func:`start`.
    **kwargs
        Passed to :func:`start`.

    Yields
    ------
    ControlPlane
        Ready to use; stopped by PID when the block exits.
    """
    cp = start(workdir, **kwargs)
    try:
        yield cp
    finally:
        cp.stop()


# ------------------------------------------------------------------------------------------- CLI


def _read_pids(workdir: Path) -> dict[str, int]:
    pids = {}
    for component in COMPONENTS:
        pid_file = workdir / "pids" / f"{component}.pid"
        if pid_file.is_file():
            pids[component] = int(pid_file.read_text().strip())
    return pids


def up(workdir: Path, address: str = "127.0.0.1") -> int:
    """``make cluster-up``: start a detached control plane in ``workdir`` unless one runs there (see :func:`start`)."""
    running = {c: p for c, p in _read_pids(workdir).items() if pid_alive(p, c)}
    if len(running) == len(COMPONENTS):
        print(f"control plane already running; KUBECONFIG={workdir.resolve() / 'kubeconfig'}")
        return 0
    if running:
        down(workdir)
    # A fresh etcd each time: stale data would carry certificates and objects of an older run.
    for stale in ("etcd-data", "pki", "logs", "pids"):
        path = workdir / stale
        if path.exists():
            subprocess.run(["rm", "-rf", "--", str(path)], check=True)
    cp = start(workdir, detached=True, address=address)
    print(f"kube-apiserver {K8S_VERSION} ready at {cp.server_url}")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    print(f"logs: {workdir.resolve() / 'logs'}; stop with: make cluster-down")
    return 0


def down(workdir: Path) -> int:
    """``make cluster-down``: stop the control plane recorded in ``workdir/pids`` by PID."""
    pids = _read_pids(workdir)
    for component in reversed(COMPONENTS):
        if component in pids:
            stop_pid(pids[component], component)
            (workdir / "pids" / f"{component}.pid").unlink(missing_ok=True)
    print("control plane stopped" if pids else "no control plane recorded in " + str(workdir))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m tests.peers.cluster {up,down} [DIR]`` (default ``.cluster``)."""
    parser = argparse.ArgumentParser(prog="python -m tests.peers.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("workdir", nargs="?", default=str(REPO / ".cluster"), type=Path)
    args = parser.parse_args(argv)
    try:
        return up(args.workdir) if args.action == "up" else down(args.workdir)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
