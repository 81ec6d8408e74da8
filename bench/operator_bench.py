"""Operator at scale on a real API server: 200 AIUseCases across 5 DicomRouters.

``python -m bench.operator_bench [--use-cases 200 --routers 5 --edits 60]``:

1. Starts etcd + kube-apiserver + kube-controller-manager v1.34 (tests/peers/cluster.py; or uses
   ``--kubeconfig``), applies the generated CRDs, runs ``pacsflow-operator`` as its own process.
2. Creates the routers and waits until the operator has rendered them; then creates the use cases and times until
   every router's ConfigMap holds all its use cases and every use case's status says so for its generation (from
   the first use case's create, and after the last create returned), the operator's CPU seconds over that time
   and the requests the burst cost the API server (its own ``apiserver_request_total``, the bench's creates
   excluded). The peer: the same creates in a namespace no operator watches (``ratio_convergence_vs_peer_creates``
   is how much longer convergence takes than creating the objects alone).
3. Mode edits one at a time (silent <-> assistive): time from the PATCH returning to the router's
   ConfigMap carrying the new mode, seen through a watch (p50/p95). The peer run in the same process is
   a plain ConfigMap PATCH round trip on the same API server: the ratio says how much the operator adds.
4. Operator peak RSS (VmHWM) and API requests per mode edit / per reconciliation (the operator's own
   ``pacsflow_operator_api_requests_total`` and ``..._reconciliations_total`` counters).

The name is not ``operator.py``: that would shadow the standard library's ``operator`` module (ruff A005).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.conftest import free_port
from tests.peers.net import stop_process

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "pacsflow.io", "v1alpha1"
NS = "bench"
PEER_NS = "bench-peer"  # not watched by the operator
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _apply_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        names.append(doc["metadata"]["name"])
        client.ApiextensionsV1Api(api).patch_custom_resource_definition(
            doc["metadata"]["name"], doc, field_manager="pacsflow-bench", force=True,
            _content_type="application/apply-patch+yaml",
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(any(c.type == "Established" and c.status == "True"
                   for c in ext.read_custom_resource_definition(n).status.conditions or ()) for n in names):
            return
        time.sleep(0.2)
    raise RuntimeError("CRDs not Established after 60 s")


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("pacsflow_operator_api_requests_total", "pacsflow_operator_reconciliations_total")):
            name = line.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


# Requests to the resources the operator writes, as counted by kube-apiserver itself (this includes
# kopf's own status/annotation patches and Events, which the operator's counter does not see).
_OPERATOR_RESOURCES = {"aiusecases", "dicomrouters", "tritonclusters", "configmaps", "events", "deployments",
                       "services", "persistentvolumeclaims"}


def _apiserver_writes(api: client.ApiClient) -> float:
    response = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    total = 0.0
    for line in response.read().decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split(","))
        verb, resource = labels.get("verb", "").strip('"'), labels.get("resource", "").strip('"')
        if resource in _OPERATOR_RESOURCES and verb in ("POST", "PATCH", "PUT", "APPLY", "GET", "DELETE"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class _Watcher(threading.Thread):
    """A watch that starts again (from a fresh list) when its stream breaks, so a dropped connection under load
    costs a re-list instead of a bench that waits for events that never come. ``restarts`` counts them."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.restarts = 0
        self._watch = watch.Watch()
        self._stopping = False

    def run(self) -> None:
        while not self._stopping:
            self._watch = watch.Watch()
            try:
                for event in self._stream(self._watch):
                    if event["type"] == "ERROR":  # e.g. 410 Gone: the resourceVersion expired
                        raise ApiException(reason=str(event["object"].get("message")))
                    self.handle(event)
            except (HTTPError, ApiException, OSError):
                if self._stopping:
                    return
            if not self._stopping:
                self.restarts += 1
                time.sleep(0.1)

    def _stream(self, w: watch.Watch) -> Iterator[dict]:
        raise NotImplementedError

    def handle(self, event: dict) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping = True
        self._watch.stop()


class ConfigWatcher(_Watcher):
    """Watches the routers' ConfigMaps; records (time, router, {use case: mode}) for each change."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__()
        self.core = client.CoreV1Api(api)
        self.events: queue.Queue = queue.Queue()
        self.latest: dict[str, dict[str, str]] = {}

    def _stream(self, w: watch.Watch) -> Iterator[dict]:
        # Plain JSON events and libyaml's parser: model deserialisation and the pure-Python YAML parser cost the
        # bench seconds of CPU per run (200+ configs of up to 40 use cases), taken from the same process, and the
        # same two cores, that create the objects being timed.
        return w.stream(self.core.list_namespaced_config_map, NS, deserialize=False,
                        label_selector="app.kubernetes.io/component=routing-config")

    def handle(self, event: dict) -> None:
        t = time.perf_counter()
        cm = event["object"]
        doc = yaml.load((cm.get("data") or {}).get("routing.yaml") or "{}", Loader=_LOADER) or {}
        modes = {u["name"]: u.get("mode", "silent") for u in doc.get("useCases", [])}
        router = cm["metadata"]["labels"]["app.kubernetes.io/instance"]
        self.latest[router] = modes
        self.events.put((t, router, modes))


class StatusWatcher(_Watcher):
    """Watches the AIUseCases; ``rendered`` holds the names whose status says, for their current generation,
    that they are in their router's routing config (``observedGeneration`` = ``metadata.generation`` and
    ``ConfigRendered`` True)."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__()
        self.custom = client.CustomObjectsApi(api)
        self.rendered: set[str] = set()

    def _stream(self, w: watch.Watch) -> Iterator[dict]:
        return w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, NS, "aiusecases")

    def handle(self, event: dict) -> None:
        uc = event["object"]
        name, status = uc["metadata"]["name"], uc.get("status") or {}
        rendered = any(c.get("type") == "ConfigRendered" and c.get("status") == "True"
                       for c in status.get("conditions") or ())
        if event["type"] != "DELETED" and rendered and \
                status.get("observedGeneration") == uc["metadata"].get("generation"):
            self.rendered.add(name)
        else:
            self.rendered.discard(name)


def _create_use_cases(custom: client.CustomObjectsApi, namespace: str, n: int, routers: list[str]) -> dict[str, str]:
    """Create ``n`` AIUseCases spread over ``routers`` one after another; use case -> router."""
    owner = {}
    for i in range(n):
        name, router = f"uc-{i:03d}", routers[i % len(routers)]
        owner[name] = router
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "aiusecases", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "AIUseCase", "metadata": {"name": name},
            "spec": {"router": router, "model": {"name": f"model_{i % 7}", "version": 1 + i % 3},
                     "match": {"modalities": ["CT"]},
                     "outputs": {"structuredReport": {"destination": "pacs"}}},
        })
    return owner


def run(kubeconfig: str, n_use_cases: int, n_routers: int, n_edits: int, operator_log: str | None = None) -> dict:
    api = config.new_client_from_config(config_file=kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    _apply_crds(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    metrics_port = free_port()
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PACSFLOW_OPERATOR_METRICS_PORT": str(metrics_port),
           "PACSFLOW_OPERATOR_METRICS_HOST": "127.0.0.1",
           "PACSFLOW_OPERATOR_LOG_LEVEL": "INFO" if operator_log else "WARNING"}
    log_file = open(operator_log, "wb") if operator_log else subprocess.PIPE  # noqa: SIM115 - closed below
    op = subprocess.Popen([sys.executable, "-m", "pacsflow_operator", "--namespace", NS, "--liveness", ""],
                          env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    watcher, statuses = ConfigWatcher(api), StatusWatcher(api)
    watcher.start()
    statuses.start()

    def failed(what: str) -> RuntimeError:
        if op.poll() is None:
            op.kill()  # its stderr is read to the end below
            op.wait()
        return RuntimeError(what + ("" if operator_log else ":\n" + op.stderr.read().decode()[-3000:]))

    try:
        routers = [f"router-{i}" for i in range(n_routers)]
        for r in routers:
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "dicomrouters", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "DicomRouter", "metadata": {"name": r},
                "spec": {"aeTitle": r.upper().replace("-", "_"),
                         "destinations": [{"name": "pacs", "aeTitle": "PACS", "host": "pacs", "port": 104}]},
            })
        # The clock starts with the first AIUseCase, once the operator runs and has rendered every router: its
        # start-up (imports, first lists; 1.5-3 s of CPU) otherwise lands in the burst by chance, competing with
        # the creates or not depending on how long it takes.
        deadline = time.monotonic() + 120
        while not all(r in watcher.latest for r in routers):
            if op.poll() is not None or time.monotonic() > deadline:
                raise failed("operator did not render the routers")
            time.sleep(0.05)
        time.sleep(1)
        server_start, cpu_start = _apiserver_writes(api), _cpu_seconds(op.pid)
        t0 = time.perf_counter()
        owner = _create_use_cases(custom, NS, n_use_cases, routers)
        created = time.perf_counter() - t0
        t_last_create = time.perf_counter()
        per_router = {r: sum(1 for v in owner.values() if v == r) for r in routers}
        deadline = time.monotonic() + 600
        configs_at = None
        # Converged: every router's ConfigMap holds all its use cases AND every use case's status says it is
        # rendered (the ConfigMaps alone are full while up to a third of the statuses are still unwritten).
        while configs_at is None or len(statuses.rendered) < n_use_cases:
            if op.poll() is not None or time.monotonic() > deadline:
                raise failed("operator did not converge")
            if configs_at is None and all(len(watcher.latest.get(r, {})) >= per_router[r] for r in routers):
                configs_at = time.perf_counter()
            time.sleep(0.02)
        converged_at = time.perf_counter()
        converge, lag = converged_at - t0, converged_at - t_last_create
        converge_cpu = _cpu_seconds(op.pid) - cpu_start
        # Everything the bench and the operator sent to the operator's resources until convergence, minus the
        # bench's own creates: what the burst cost the API server.
        converge_requests = _apiserver_writes(api) - server_start - n_use_cases
        time.sleep(2)  # let status writes of the initial burst drain before counting requests
        before = _scrape(metrics_port)
        server_before = _apiserver_writes(api)

        latencies = []
        for k in range(n_edits):
            name = f"uc-{(k * 37) % n_use_cases:03d}"
            router = owner[name]
            new = "assistive" if watcher.latest[router].get(name) == "silent" else "silent"
            while not watcher.events.empty():
                watcher.events.get_nowait()
            custom.patch_namespaced_custom_object(GROUP, VERSION, NS, "aiusecases", name, {"spec": {"mode": new}})
            t_edit = time.perf_counter()
            while True:
                try:
                    t, r, modes = watcher.events.get(timeout=60)
                except queue.Empty:
                    raise failed(f"edit {k}: no ConfigMap change within 60 s") from None
                if r == router and modes.get(name) == new:
                    latencies.append(t - t_edit)
                    break
        time.sleep(2)  # the use case's own status patch lands after the ConfigMap
        after = _scrape(metrics_port)
        # Minus the bench's own PATCH per edit; the watcher's watch is not counted (WATCH verb).
        server_requests = _apiserver_writes(api) - server_before - n_edits

        # Peer: one plain ConfigMap PATCH round trip on the same API server, same client.
        core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="peer"),
                                                                 data={"k": "0"}))
        peer = []
        for k in range(n_edits):
            t = time.perf_counter()
            core.patch_namespaced_config_map("peer", NS, {"data": {"k": str(k)}})
            peer.append(time.perf_counter() - t)

        # Peer: the same creates in a namespace no operator watches, same API server and client.
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=PEER_NS)))
        t = time.perf_counter()
        _create_use_cases(custom, PEER_NS, n_use_cases, routers)
        peer_creates = time.perf_counter() - t

        requests = after.get("pacsflow_operator_api_requests_total", 0) - before.get(
            "pacsflow_operator_api_requests_total", 0)
        reconciles = after.get("pacsflow_operator_reconciliations_total", 0) - before.get(
            "pacsflow_operator_reconciliations_total", 0)
        return {
            "use_cases": n_use_cases, "routers": n_routers, "edits": n_edits,
            "create_all_objects_s": created,
            "initial_convergence_s": converge,
            "configmaps_full_s": configs_at - t0,
            "peer_same_creates_no_operator_s": peer_creates,
            "ratio_convergence_vs_peer_creates": converge / peer_creates,
            "converged_after_last_create_s": lag,
            "operator_api_requests_during_convergence": converge_requests,
            "operator_cpu_s_during_convergence": converge_cpu,
            "edit_to_configmap_p50_s": statistics.median(latencies),
            "edit_to_configmap_p95_s": _pct(latencies, 0.95),
            "peer_configmap_patch_p50_s": statistics.median(peer),
            "ratio_p50_vs_peer": statistics.median(latencies) / statistics.median(peer),
            "operator_peak_rss_bytes": _peak_rss(op.pid),
            "watch_restarts": watcher.restarts + statuses.restarts,
            "reconciler_api_requests_per_edit": requests / n_edits,
            "all_operator_api_requests_per_edit": server_requests / n_edits,
            "api_requests_per_reconcile": requests / reconciles if reconciles else None,
            "reconciliations_per_edit": reconciles / n_edits,
        }
    finally:
        watcher.stop()
        statuses.stop()
        stop_process(op, 30)
        if operator_log:
            log_file.close()
        api.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write ``.bench/operator.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.operator_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--use-cases", type=int, default=200)
    parser.add_argument("--routers", type=int, default=5)
    parser.add_argument("--edits", type=int, default=60)
    parser.add_argument("--operator-log", help="write the operator's INFO log here")
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting one (namespaces 'bench' and 'bench-peer' must not exist)")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        kubeconfig = args.kubeconfig
        if not kubeconfig:
            from tests.peers.cluster import control_plane

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacsflow-bench-")))
            kubeconfig = str(stack.enter_context(control_plane(tmp / "kube")).kubeconfig)
        result = run(kubeconfig, args.use_cases, args.routers, args.edits, args.operator_log)
    for key, value in result.items():
        print(f"{key:32} {value:.4g}" if isinstance(value, float) else f"{key:32} {value}")
    out = REPO / ".bench" / "operator.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
