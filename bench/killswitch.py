"""The kill switch: AIUseCase ``spec.mode`` triage -> silent until the router stops sending, on a real API server.

``python -m bench.killswitch [--edits 10]``:

1. Starts etcd + kube-apiserver + kube-controller-manager v1.34 (tests/peers/cluster.py; or uses ``--kubeconfig``),
   applies the generated CRDs and runs ``pacsflow-operator`` as its own process.
2. Creates a DicomRouter and one AIUseCase, promotes it silent -> assistive -> triage, and starts a router
   in this process (``RouterService``) on the ConfigMap the operator rendered: it watches that ConfigMap through
   the API, with the mounted-file watcher beside it (the file is never touched here, as a kubelet would be a minute
   late).
3. Each round demotes the use case (a PATCH of ``spec.mode`` to silent) and times PATCH sent -> the router's
   running config says silent. From that moment the outbox holds every queued SR, HL7 message and webhook of the
   use case before its next send (tests/integration/test_killswitch.py shows it on real receivers), and the
   pipeline sends nothing new for it. Then the use case is promoted back (not timed).
4. Peer, same process and API server: a direct PATCH of the router's ConfigMap -> the router's config says silent
   (the watch alone, without the operator). The difference is what the operator adds.

Goal: p95 <= 2 s. Writes ``.bench/killswitch.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import yaml
from kubernetes import client, config

from bench.operator_bench import GROUP, VERSION, _apply_crds, _pct
from tests.peers.net import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
NS = "killswitch"
ROUTER, USE_CASE = "ed", "ich"
GOAL_P95_S = 2.0


def _wait(check: Callable[[], object], what: str, timeout: float = 60.0, interval: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def run(kubeconfig: str, n_edits: int, workdir: Path) -> dict[str, float | int | bool]:
    # Imported here: the router package is heavy and only this benchmark needs it.
    from pacsflow_operator.reconcile.router import CONFIG_KEY, config_map_name
    from pacsflow_router.config import Audit, Metrics, parse_config, render_config
    from pacsflow_router.service import RouterService

    api = config.new_client_from_config(config_file=kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    _apply_crds(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PACSFLOW_OPERATOR_METRICS_PORT": str(free_port()),
           "PACSFLOW_OPERATOR_METRICS_HOST": "127.0.0.1", "PACSFLOW_OPERATOR_LOG_LEVEL": "WARNING"}
    op = subprocess.Popen([sys.executable, "-m", "pacsflow_operator", "--namespace", NS, "--liveness", ""],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    service = None
    cm_name = config_map_name(ROUTER)

    def rendered() -> str:
        try:
            return str((core.read_namespaced_config_map(cm_name, NS).data or {}).get(CONFIG_KEY, ""))
        except client.exceptions.ApiException:
            return ""

    def set_mode(mode: str) -> None:
        custom.patch_namespaced_custom_object(GROUP, VERSION, NS, "aiusecases", USE_CASE, {"spec": {"mode": mode}})

    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "dicomrouters", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DicomRouter", "metadata": {"name": ROUTER},
            "spec": {"aeTitle": "PACSFLOW", "destinations": [
                {"name": "pacs", "aeTitle": "PACS", "host": "pacs.example", "port": 104}]},
        })
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "aiusecases", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "AIUseCase", "metadata": {"name": USE_CASE},
            "spec": {"router": ROUTER, "model": {"name": "ich_detector", "version": 1}, "mode": "silent",
                     "match": {"modalities": ["CT"]}, "outputs": {"structuredReport": {"destination": "pacs"}}},
        })
        for mode in ("assistive", "triage"):  # one phase at a time (the CRD's rule)
            set_mode(mode)
            _wait(lambda m=mode: f"mode: {m}" in rendered(), f"ConfigMap rendered with {mode}", interval=0.05)

        # The router, as in its pod, but on loopback and a local spool (restart-only settings: never hot-reloaded).
        text = rendered()
        ours = parse_config(yaml.safe_load(text)).model_copy(update={
            "bind_address": "127.0.0.1", "port": free_port(), "spool_dir": str(workdir / "spool"),
            "audit": Audit(url=f"sqlite:///{workdir / 'audit.db'}"), "metrics": Metrics(port=free_port()),
        })
        config_file = workdir / "routing.yaml"
        config_file.write_text(render_config(ours))
        os.environ["KUBECONFIG"] = kubeconfig
        # Each reload says the local spool/ports differ from the pod's (restart-only settings): expected here.
        logging.getLogger("pacsflow_router.service").setLevel(logging.ERROR)
        service = RouterService(ours, config_path=str(config_file))
        service.start()
        assert service.config_watcher is not None, "the operator rendered no configMap reference"
        if not service.config_watcher.connected.wait(30):
            raise RuntimeError("the router's watch on its ConfigMap never opened")

        def router_mode() -> str:
            assert service is not None
            return next((u.mode for u in service.config.use_cases if u.name == USE_CASE), "absent")

        demotions, promotions = [], []
        for _ in range(n_edits):
            t0 = time.perf_counter()
            set_mode("silent")
            _wait(lambda: router_mode() == "silent", "the router to see silent")
            demotions.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for m in ("assistive", "triage"):
                set_mode(m)
                _wait(lambda m=m: router_mode() == m, f"the router to see {m}")
            promotions.append(time.perf_counter() - t0)

        # Peer: the router's ConfigMap patched directly (no operator in the path), triage <-> silent.
        triage_text = rendered()
        silent_text = triage_text.replace("mode: triage", "mode: silent")
        peer = []
        for _ in range(n_edits):
            t0 = time.perf_counter()
            core.patch_namespaced_config_map(cm_name, NS, {"data": {CONFIG_KEY: silent_text}})
            _wait(lambda: router_mode() == "silent", "the router to see the direct edit")
            peer.append(time.perf_counter() - t0)
            core.patch_namespaced_config_map(cm_name, NS, {"data": {CONFIG_KEY: triage_text}})
            _wait(lambda: router_mode() == "triage", "the router to see the direct edit undone")
        p50, p95 = statistics.median(demotions), _pct(demotions, 0.95)
        return {
            "edits": n_edits,
            "cr_edit_to_router_silent_p50_s": p50,
            "cr_edit_to_router_silent_p95_s": p95,
            "cr_edit_to_router_silent_max_s": max(demotions),
            "goal_p95_s": GOAL_P95_S,
            "goal_met": p95 <= GOAL_P95_S,
            "promotion_back_two_phases_p50_s": statistics.median(promotions),
            "peer_configmap_edit_to_router_p50_s": statistics.median(peer),
            "peer_configmap_edit_to_router_p95_s": _pct(peer, 0.95),
            "ratio_p50_vs_peer": p50 / statistics.median(peer),
            "mounted_file_fallback_worst_case_s": 60.0 + 2.0,  # kubelet sync period (~1 min) + the file poll
        }
    finally:
        if service is not None:
            service.stop()
            service.audit.close()
            service.spool.close()
        stop_process(op, 30)
        api.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write ``.bench/killswitch.json``; non-zero when the goal is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.killswitch", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting one (namespace 'killswitch' "
                                             "must not exist)")
    args = parser.parse_args([] if argv is None else argv)  # `python -m bench`: its args are filters
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacsflow-killswitch-")))
        kubeconfig = args.kubeconfig
        if not kubeconfig:
            from tests.peers.cluster import control_plane

            kubeconfig = str(stack.enter_context(control_plane(tmp / "kube")).kubeconfig)
        result = run(kubeconfig, args.edits, tmp)
    for key, value in result.items():
        print(f"{key:40} {value:.4g}" if isinstance(value, float) else f"{key:40} {value}")
    out = REPO / ".bench" / "killswitch.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0 if result["goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
