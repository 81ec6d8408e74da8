"""A Kubernetes node on this machine, joined to the loopback control plane of ``tests.peers.cluster``.

containerd (Debian's 1.6, CRI plugin, ``runc``) with a CNI bridge (Debian's containernetworking-plugins:
bridge + host-local + portmap + loopback), kubelet, kube-scheduler and kube-proxy (iptables mode) at the API
server's version, built from the Go module proxy by ``scripts/cluster.sh node-bins``. The images made by
``scripts/images.sh archive`` are imported into containerd's ``k8s.io`` namespace; no registry is needed. When the
archives include CoreDNS, the node gets cluster DNS (``tests.peers.coredns``: Service ``kube-dns`` in
``kube-system``, the kubelet's ``clusterDNS``), so pods find Services by ``<svc>.<ns>.svc.cluster.local``.

Everything the node makes is recorded so that :func:`teardown` (``make cluster-down``) removes it: processes
by the PIDs in ``pids/``, pods' mounts and network namespaces, the bridge, the iptables chains kube-proxy and
the CNI plugins created, the sysctls it changed, containerd's root and state. See docs/pods.md.

The kubelet, scheduler and kube-proxy use the control plane's admin client certificate: a throwaway
single-node cluster, not a model of node authorization (production nodes use TLS bootstrapping and the Node
authorizer).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import cluster, coredns
from .cluster import CLUSTER_SCRIPT, ControlPlane, ControlPlaneError, bin_dir, pid_alive, stop_pid
from .containerd import Containerd
from .net import free_port

NODE_NAME = "pacsflow-node"
BRIDGE = "pfbr0"
POD_CIDR = "10.88.0.0/24"
NODE_IP = "10.88.0.1"
"""The bridge's gateway address: the node's InternalIP, where NodePorts and (for pods) the host answer."""
CNI_BIN = Path("/usr/lib/cni")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
NODE_BINARIES = ("kube-scheduler", "kubelet", "kube-proxy")
NODE_COMPONENTS = ("containerd", "kube-scheduler", "kubelet", "kube-proxy")
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables")
# Chains the CNI plugins (bridge ipMasq, portmap) and kube-proxy (iptables mode) create.
CHAIN_PREFIXES = ("CNI-", "KUBE-")


class NodeError(ControlPlaneError):
    """The node could not be started or did not become Ready; the message carries the component's log tail."""


def ensure_node_binaries() -> Path:
    """Return the binary directory, building kubelet, kube-scheduler and kube-proxy if they are missing.

    Raises
    ------
    NodeError
        If ``scripts/cluster.sh node-bins`` fails.
    """
    directory = bin_dir()
    if not all(os.access(directory / name, os.X_OK) for name in NODE_BINARIES):
        if subprocess.run([str(CLUSTER_SCRIPT), "node-bins"], check=False).returncode != 0:
            raise NodeError(f"building the node's binaries failed ({CLUSTER_SCRIPT} node-bins)")
    return directory


def _cri_toml(cni_conf: Path, sandbox_image: str, runc_root: Path) -> str:
    return f"""[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  enable_selinux = false
  # This machine's root lacks CAP_SYS_RESOURCE (CapEff 000001fffeffffff: bit 24 clear), so runc cannot set
  # the sandbox's oom_score_adj of -998 ("nsexec: failed to update /proc/self/oom_score_adj: Permission
  # denied" -> "can't get final child's PID from pipe: EOF"); clamp it to containerd's own, as rootless does.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def cni_conflist(ipam_dir: Path) -> dict:
    """The pod network: one Linux bridge with the node as gateway, masquerade out, hostPorts via portmap."""
    return {
        "cniVersion": "0.4.0",
        "name": "pacsflow",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir), "ranges": [[{"subnet": POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(*, port: int, healthz_port: int, runtime_socket: Path, ca_file: Path, pod_logs: Path,
                   cluster_dns: str | None = None) -> dict:
    """KubeletConfiguration for a single test node on cgroup v1 with the cgroupfs driver.

    ``cluster_dns`` is the ``kube-dns`` Service's ClusterIP that ``ClusterFirst`` pods get as their nameserver
    (None: no cluster DNS, pods get the host's resolver).
    """
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(ca_file)}},
        "authorization": {"mode": "AlwaysAllow"},
        # Serving certificate from the cluster CA (tests.peers.cluster.generate_pki writes it beside ca.crt), which
        # kube-apiserver verifies when it proxies kubectl logs/exec/port-forward to this kubelet.
        "tlsCertFile": str(ca_file.with_name("kubelet.crt")),
        "tlsPrivateKeyFile": str(ca_file.with_name("kubelet.key")),
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        # The CI machine has no swap today, but a developer's laptop may.
        "failSwapOn": False,
        "memorySwap": {},
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        # The images exist only here (no registry): never garbage-collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "maxPods": 30,
        "protectKernelDefaults": False,
        "staticPodPath": "",
        # Containers' logs in the node's directory, not the host's /var/log/pods (read by Node.pod_logs).
        "podLogsDir": str(pod_logs),
    }
    if cluster_dns is not None:
        config["clusterDNS"] = [cluster_dns]
    return config


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def _iptables_cleanup() -> None:
    """Delete the chains (and the jumps into them) that kube-proxy and the CNI plugins made."""
    for table in ("filter", "nat", "mangle"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True,
                               check=False).stdout.splitlines()
        for rule in rules:
            jumps_to_ours = any(f" -j {p}" in rule for p in CHAIN_PREFIXES)
            if rule.startswith("-A ") and jumps_to_ours and not rule.startswith(tuple(f"-A {p}" for p in
                                                                                     CHAIN_PREFIXES)):
                subprocess.run(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]], capture_output=True,
                               check=False)
        chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(CHAIN_PREFIXES)]
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True, check=False)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True, check=False)


@dataclass
class Node:
    """The running node: its work directory (``<cluster>/node``), PIDs and the containerd it talks to."""

    cp: ControlPlane
    workdir: Path
    containerd: Containerd
    pids: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def log_path(self, component: str) -> Path:
        return self.cp.workdir / "logs" / f"{component}.log"

    def spawn(self, component: str, argv: list[str], *, detached: bool) -> subprocess.Popen:
        with self.log_path(component).open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.workdir, start_new_session=True)
        self._procs[component] = proc
        self.pids[component] = proc.pid
        (self.cp.workdir / "pids" / f"{component}.pid").write_text(f"{proc.pid}\n")
        return proc

    def check_running(self) -> None:
        for component, proc in self._procs.items():
            if proc.poll() is not None:
                tail = "\n".join(self.log_path(component).read_text(errors="replace").splitlines()[-30:])
                raise NodeError(f"{component} exited with status {proc.returncode}; last lines of "
                                f"{self.log_path(component)}:\n{tail}")

    def kubectl(self, *args: str, timeout: float = 120) -> str:
        """Run kubectl with the admin kubeconfig and return stdout (raises on failure)."""
        result = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout,
                                env=self.cp.env(), check=False)
        if result.returncode != 0:
            raise NodeError(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()[-1500:]}")
        return result.stdout

    def ready(self) -> tuple[bool, str]:
        try:
            node = json.loads(self.kubectl("get", "node", NODE_NAME, "-o", "json"))
        except NodeError as exc:
            return False, str(exc)
        conditions = {c["type"]: c for c in node["status"].get("conditions", [])}
        ready = conditions.get("Ready", {})
        return ready.get("status") == "True", f"Ready={ready.get('status')}: {ready.get('message', '')}"

    def wait_dns(self, timeout: float = 120) -> None:
        """Wait until CoreDNS (deployed by :func:`start_node` when the archives include it) is Ready.

        Raises
        ------
        NodeError
            Not Ready within ``timeout`` seconds (the message has kubectl's answer).
        """
        self.kubectl("rollout", "status", f"deployment/{coredns.NAME}", "-n", coredns.NAMESPACE,
                     f"--timeout={timeout:.0f}s", timeout=timeout + 20)

    def pod_logs(self, namespace: str, pod_prefix: str) -> str:
        """Every log line the kubelet wrote for the containers of pods named ``pod_prefix*`` (all restarts).

        Read from the node's ``podLogsDir`` (``kubectl logs`` works too, but shows one container instance at a time).
        """
        root = self.workdir / "pod-logs"
        files = sorted(root.glob(f"{namespace}_{pod_prefix}*/*/*.log")) if root.is_dir() else []
        return "".join(f.read_text(errors="replace") for f in files)

    def container_pid(self, container_id: str) -> int:
        """The host PID of a running container's main process (from runc's state under the node's runc root).

        ``container_id`` is a pod's ``status.containerStatuses[].containerID`` (``containerd://<id>``) or ``<id>``.
        """
        state = self.containerd.run_dir / "runc" / "k8s.io" / container_id.split("://", 1)[-1] / "state.json"
        return int(json.loads(state.read_text())["init_process_pid"])

    def stop(self) -> None:
        """Everything :func:`teardown` does, for a node started in this process."""
        teardown(self.cp.workdir)


def prepare_host(cluster_dir: Path) -> None:
    """Record the host's state, set the sysctls and make the bridge with the node's address (idempotent).

    Run before the control plane when pods must reach kube-apiserver: it then listens on ``NODE_IP``
    (``tests.peers.cluster.start(address=NODE_IP)``), which exists only once the bridge does.
    """
    workdir = cluster_dir / "node"
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "before.json").is_file():
        return
    # What existed before the node, so teardown removes only what the node added.
    (workdir / "before.json").write_text(json.dumps({
        "netns": _netns(), "cgroups": [str(p) for p in _kubepods_cgroups()],
        "run_containerd": Path("/run/containerd").exists(),
        "var_log_containers": CONTAINER_LOG_LINKS.exists(),
    }))
    # Sysctls: remember what they were so teardown puts them back.
    original = {name: _sysctl_path(name).read_text().strip() for name in SYSCTLS if _sysctl_path(name).exists()}
    (workdir / "sysctl.json").write_text(json.dumps(original))
    for name in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
        if _sysctl_path(name).exists():
            _sysctl_path(name).write_text("1")
    # The bridge exists before the first pod so the node has its address (kubelet --node-ip).
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, check=False).returncode != 0:
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)


def start_node(cp: ControlPlane, *, archives: list[Path], detached: bool = False,
               timeout: float = 180.0) -> Node:
    """Join a node to ``cp``: containerd + CNI bridge, images imported, kube-scheduler, kubelet, kube-proxy.

    Parameters
    ----------
    cp
        A running control plane (its work directory gets ``node/``, the logs and the PID files).
    archives
        Image archives from ``scripts/images.sh archive``; the one named ``pause-*.tar`` is the sandbox image.
    detached
        ``True`` for ``make cluster-up`` (the processes outlive the caller).
    timeout
        Seconds for the node to report Ready.

    Returns
    -------
    Node
        Registered and Ready.

    Raises
    ------
    NodeError
        A component exited or the node did not become Ready; the message quotes the log.
    """
    binaries = ensure_node_binaries()
    for tool in ("iptables", "ip", "conntrack"):
        if shutil.which(tool) is None:
            raise NodeError(f"{tool} is missing: run scripts/install-node-deps.sh (make cluster-up does it)")
    workdir = cp.workdir / "node"
    # The kubelet binds unix sockets under its root dir (pod-resources/<10 digits>); a socket path is at most 107
    # bytes, and past that the kubelet exits with "bind: invalid argument".
    longest_socket = str(workdir / "kubelet" / "pod-resources" / ("0" * 10))
    if len(longest_socket.encode()) > 107:
        raise NodeError(f"the node's directory {workdir} is too deep for the kubelet's unix sockets "
                        f"({len(longest_socket.encode())} > 107 bytes): use a shorter CLUSTER_DIR")
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "pids"):
        (cp.workdir / sub).mkdir(parents=True, exist_ok=True)
    pause = next(a for a in archives if a.name.startswith("pause-"))
    dns_image = coredns.image_of(archives) if any(a.name.startswith("coredns-") for a in archives) else None
    sandbox_image = "localhost/pacsflow/pause:" + pause.name.removeprefix("pause-").removesuffix(".tar")

    prepare_host(cp.workdir)

    cni_conf = workdir / "cni" / "net.d"
    cni_conf.mkdir(parents=True, exist_ok=True)
    (cni_conf / "10-pacsflow.conflist").write_text(json.dumps(cni_conflist(workdir / "cni" / "ipam"), indent=2))

    containerd = Containerd(workdir / "containerd", cri="")
    containerd.cri = _cri_toml(cni_conf, sandbox_image, containerd.run_dir / "runc")
    node = Node(cp=cp, workdir=workdir, containerd=containerd)
    (workdir / "containerd.run").write_text(str(containerd.run_dir))
    try:
        containerd.start()
        assert containerd.proc is not None
        node._procs["containerd"] = containerd.proc
        node.pids["containerd"] = containerd.proc.pid
        (cp.workdir / "pids" / "containerd.pid").write_text(f"{containerd.proc.pid}\n")
        for archive in archives:
            containerd.import_image(archive, namespace="k8s.io")

        kubeconfig = str(cp.kubeconfig)
        node.spawn("kube-scheduler", [
            str(binaries / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", "--secure-port=0", "--v=1",
        ], detached=detached)

        config = workdir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(
            port=free_port(), healthz_port=free_port(), runtime_socket=containerd.socket, ca_file=cp.pki.ca_crt,
            pod_logs=workdir / "pod-logs", cluster_dns=coredns.DNS_SERVICE_IP if dns_image else None)))
        node.spawn("kubelet", [
            str(binaries / "kubelet"), f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={workdir / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
            "--v=1",
        ], detached=detached)

        node.spawn("kube-proxy", [
            str(binaries / "kube-proxy"), f"--kubeconfig={kubeconfig}", f"--hostname-override={NODE_NAME}",
            "--proxy-mode=iptables", f"--cluster-cidr={POD_CIDR}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}", f"--healthz-bind-address=127.0.0.1:{free_port()}",
            # Leave the host's conntrack table size alone (a shared CI machine).
            "--conntrack-max-per-core=0", "--v=1",
        ], detached=detached)

        deadline = time.monotonic() + timeout
        last = "not registered yet"
        while time.monotonic() < deadline:
            node.check_running()
            ok, last = node.ready()
            if ok:
                if dns_image is not None:
                    # Applied, not waited for: a caller that needs names calls Node.wait_dns().
                    dns = workdir / "coredns.yaml"
                    dns.write_text(yaml.safe_dump_all(coredns.manifests(dns_image), sort_keys=False))
                    node.kubectl("apply", "-f", str(dns))
                return node
            time.sleep(1)
        raise NodeError(f"node {NODE_NAME} not Ready after {timeout:.0f}s ({last}); see "
                        f"{node.log_path('kubelet')}")
    except BaseException:
        teardown(cp.workdir)
        raise


def _netns() -> list[str]:
    directory = Path("/var/run/netns")
    return sorted(p.name for p in directory.glob("cni-*")) if directory.is_dir() else []


def _kubepods_cgroups() -> list[Path]:
    """kubelet's cgroup v1 hierarchy (cgroupfs driver): /sys/fs/cgroup/<controller>/kubepods."""
    return sorted(Path("/sys/fs/cgroup").glob("*/kubepods"))


def _walk(top: Path, pattern: str) -> list[Path]:
    """``top.rglob(pattern)``, tolerating directories removed during the walk (the kubelet, or the kernel once a
    killed container's cgroup empties, removes them while teardown runs); retried until a walk completes."""
    for _ in range(20):
        try:
            return list(top.rglob(pattern))
        except FileNotFoundError:
            continue
    return []


def _container_pids(run_dir: Path) -> list[int]:
    """PIDs of the containerd shims of this node (their sockets/bundles live under our state dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(run_dir).encode() in b" ".join(
                cmdline):
            pids.append(int(proc.name))
    return pids


def teardown(cluster_dir: Path) -> list[str]:
    """Remove everything a node started in ``cluster_dir`` made; returns what it did (for the log).

    Order: kubelet (no restarts), kube-proxy and the scheduler, every container (the shims, by PID; runc's
    children die with their pid namespace), containerd; then the pods' mounts, network namespaces, the
    bridge, the iptables chains, the sysctls and the directories.
    """
    done: list[str] = []
    pids_dir = cluster_dir / "pids"
    workdir = cluster_dir / "node"
    for component in ("kubelet", "kube-proxy", "kube-scheduler"):
        pid_file = pids_dir / f"{component}.pid"
        if pid_file.is_file():
            stop_pid(int(pid_file.read_text()), component, timeout=30.0)
            pid_file.unlink()
            done.append(f"stopped {component}")
    run_dir = Path((workdir / "containerd.run").read_text()) if (workdir / "containerd.run").is_file() else None
    # This node's containers (pods' and sandboxes'), by runc's state under our containerd: another node on the
    # host (a CI run) has its own containers in the same kubepods cgroups, and they are not ours to kill.
    runc_states = run_dir / "runc" / "k8s.io" if run_dir is not None else None
    ours = {p.name for p in runc_states.iterdir()} if runc_states is not None and runc_states.is_dir() else set()
    if run_dir is not None:
        for pid in _container_pids(run_dir):
            # The shim's own children (the containers' init processes) are in their own pid namespaces:
            # SIGKILL to the shim's process group ends them with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            done.append(f"killed shim {pid}")
    # The containers' own processes: runc starts each in its own session, so killing a shim does not reach
    # them; the pids controller lists them in each container's cgroup (kubepods/<qos>/pod<uid>/<container id>).
    before_file = workdir / "before.json"
    if before_file.is_file():
        known = set(json.loads(before_file.read_text())["cgroups"])
        for top in _kubepods_cgroups():
            if str(top) in known or top.parent.name != "pids":
                continue
            for procs in _walk(top, "cgroup.procs"):
                if procs.parent.name not in ours:
                    continue
                try:
                    pids = procs.read_text().split()
                except OSError:  # the cgroup went away meanwhile
                    continue
                for listed in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(listed), signal.SIGKILL)
                        done.append(f"killed container process {listed}")
    pid_file = pids_dir / "containerd.pid"
    if pid_file.is_file():
        stop_pid(int(pid_file.read_text()), "containerd", timeout=30.0)
        pid_file.unlink()
        done.append("stopped containerd")
    before = json.loads((workdir / "before.json").read_text()) if (workdir / "before.json").is_file() else None
    if before is not None:
        # Network namespaces the CRI made for pod sandboxes (/var/run/netns/cni-*), pinned by bind mounts.
        for name in sorted(set(_netns()) - set(before["netns"])):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
            done.append(f"removed netns {name}")
        # kubelet's QoS/pod cgroups, deepest first; a killed container's cgroup empties a moment after its
        # processes are reaped, so retry for a few seconds.
        deadline = time.monotonic() + 15
        while (left := [t for t in _kubepods_cgroups() if str(t) not in before["cgroups"]]) and \
                time.monotonic() < deadline:
            for top in left:
                for directory in sorted((p for p in _walk(top, "*") if p.is_dir()), key=lambda p: len(p.parts),
                                        reverse=True):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()
            time.sleep(0.2)
        done.append("removed kubepods cgroups" if not left else f"kubepods cgroups still busy: {left}")
        # containerd 1.6 puts shim sockets and ctr's FIFOs under /run/containerd whatever its state dir is.
        if not before["run_containerd"]:
            shutil.rmtree("/run/containerd", ignore_errors=True)
        # The kubelet links every container log into /var/log/containers whatever its podLogsDir.
        if CONTAINER_LOG_LINKS.is_dir():
            for link in CONTAINER_LOG_LINKS.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(str(workdir / "pod-logs")):
                    link.unlink()
            if not before.get("var_log_containers", True) and not any(CONTAINER_LOG_LINKS.iterdir()):
                CONTAINER_LOG_LINKS.rmdir()
    for base in [workdir, *([run_dir] if run_dir else [])]:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(base) + "/")]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        if mounts:
            done.append(f"unmounted {len(mounts)} under {base}")
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, check=False).returncode == 0:
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        done.append(f"deleted bridge {BRIDGE}")
    if workdir.exists():
        _iptables_cleanup()
        done.append("removed iptables chains CNI-*/KUBE-*")
    sysctl = workdir / "sysctl.json"
    if sysctl.is_file():
        for name, value in json.loads(sysctl.read_text()).items():
            with contextlib.suppress(OSError):
                _sysctl_path(name).write_text(value)
        done.append("restored sysctls")
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
    if workdir.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(workdir)], capture_output=True, check=False)
        done.append(f"removed {workdir}")
    return done


#: One node per host: its bridge, address and iptables chains are host-wide, so a second node would take them over.
NODE_LOCK = Path("/run/lock/pacsflow-node.lock")


@contextlib.contextmanager
def host_node_lock(timeout: float = 1800.0) -> Iterator[None]:
    """Hold the host's node lock (``flock`` on :data:`NODE_LOCK`) for one ``with`` block, waiting for another
    checkout's node (a second test run, a benchmark) to finish first; :class:`NodeError` after ``timeout`` seconds.
    """
    NODE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with NODE_LOCK.open("a") as handle:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeError(f"another node held {NODE_LOCK} for {timeout:.0f} s") from None
                if not said:
                    print(f"waiting for another node on this host ({NODE_LOCK})", flush=True)
                    said = True
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def node_cluster(workdir: Path, archives: list[Path]) -> Iterator[Node]:
    """A control plane on the node's address plus a Ready node, for one ``with`` block (tests).

    The host's node lock is held throughout (:func:`host_node_lock`). The host is prepared first (bridge,
    sysctls) so kube-apiserver can listen on ``NODE_IP``; on exit the node is torn down before the control plane
    stops, and the host is restored even if the control plane never started.
    """
    with host_node_lock():
        yield from _node_cluster(workdir, archives)


def _node_cluster(workdir: Path, archives: list[Path]) -> Iterator[Node]:
    prepare_host(workdir)
    try:
        with cluster.control_plane(workdir, address=NODE_IP) as cp:
            try:
                yield start_node(cp, archives=archives)
            finally:
                print("\n".join(teardown(workdir)))
    finally:
        teardown(workdir)


# ------------------------------------------------------------------------------------------- CLI


def _control_plane_of(cluster_dir: Path) -> ControlPlane:
    """The control plane ``make cluster-up`` started in ``cluster_dir`` (read back from its kubeconfig)."""
    kubeconfig = cluster_dir / "kubeconfig"
    if not kubeconfig.is_file():
        raise NodeError(f"no control plane in {cluster_dir}: run `scripts/cluster.sh up` first")
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    return ControlPlane(workdir=cluster_dir, kubeconfig=kubeconfig, server_url=server, etcd_url="")


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.peers.node up DIR ARCHIVE...`` / ``down DIR`` (what make cluster-up/-down run).

    ``up`` prepares the host (bridge, sysctls), starts the control plane on the node's address
    (``tests.peers.cluster.up``) and joins the node.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.peers.node", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("archives", nargs="*", type=Path, help="image archives (scripts/images.sh archive)")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if args.action == "down":
        for line in teardown(workdir):
            print(line)
        return 0
    if (workdir / "pids" / "kubelet.pid").is_file() and pid_alive(
            int((workdir / "pids" / "kubelet.pid").read_text()), "kubelet"):
        print(f"node {NODE_NAME} already running")
        return 0
    teardown(workdir)  # leftovers of a node that died
    start = time.monotonic()
    try:
        prepare_host(workdir)
        # kube-apiserver on the bridge's address, so pods (the operator) reach it through the kubernetes Service.
        if cluster.up(workdir, address=NODE_IP) != 0:
            return 1
        node = start_node(_control_plane_of(workdir), archives=args.archives, detached=True)
        if any(a.name.startswith("coredns-") for a in args.archives):
            node.wait_dns()
    except NodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"node {NODE_NAME} Ready in {time.monotonic() - start:.1f}s (images imported into containerd's "
          f"k8s.io namespace); logs: {workdir / 'logs'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
