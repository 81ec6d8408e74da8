"""Pods for real (issue 12): image builds, cold node bring-up, ``helm install`` -> first SR, demotion -> last output.

``python -m bench.pods [--cycles 12]`` on a real node cluster (``tests.peers.node.node_cluster``: kube-apiserver,
etcd, controller-manager, containerd, kubelet, scheduler, kube-proxy on this machine; one node per host, so the
benchmark refuses to start while another kubelet runs):

1. **Images**: ``scripts/images.sh archive`` timed (what changed since the last build is rebuilt on cached layers)
   with each image's build seconds as the script reports them, and the archives' sizes.
2. **Cold cluster bring-up**: nothing running -> control plane Ready, node Ready, images imported.
3. **Kill switch, same API server**: ``bench.killswitch.run`` (an AIUseCase PATCH -> a router process on the host,
   watching its ConfigMap, says silent) in its own namespace, before the chart is installed (its operator process
   and the chart's do not share a namespace: ``operator.watchNamespaces={pacsflow}``).
4. **helm install -> first SR stored**: the chart with the local images (the operator a pod), a DicomRouter and an
   assistive AIUseCase applied, the router pod Ready (``/readyz``), a 16-slice phantom head CT sent with
   ``storescu`` to the router's ClusterIP, the SR at an Orthanc on the host.
5. **Demotion -> last output**, ``--cycles`` times: a study is sent, the use case demoted to silent (a PATCH with the
   promotion policy's ``changed-by``) after a delay that moves from ``DELAY_MIN_S`` to ``DELAY_MAX_S`` over the
   cycles, so that some demotions land before the study's SR is made and some while or after; then promoted back
   (not timed).
   Timed per cycle, from the PATCH: the router pod's "routing config reloaded ... =silent" log line (the kubelet's
   timestamp of the line) and the last SR that reached Orthanc after the PATCH (0 when none did). The ratio
   pod demotion / kill switch compares the pod's reload with step 3's in-process router.

Prints a table; writes ``.bench/pods.json``. Returns non-zero only when something is broken (no SR, no reload),
never on a timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.operator_bench import _pct  # noqa: E402
from pacsflow_router.domain import study_key  # noqa: E402
from pacsflow_router.models import phantom  # noqa: E402
from tests.peers.containerd import IMAGES_SCRIPT  # noqa: E402
from tests.peers.dcmtk import storescu  # noqa: E402
from tests.peers.node import Node, node_cluster  # noqa: E402
from tests.peers.orthanc import Orthanc  # noqa: E402
from tests.peers.pods import (  # noqa: E402
    ADMIN_USER,
    NAMESPACE,
    apply,
    assistive_use_case,
    describe,
    dicom_router,
    helm_install,
    log_lines,
    override,
    spool_volume,
)

ROUTER, USE_CASE = "ed", "ich-head-ct"
POD_PREFIX = f"{ROUTER}-router"
#: Demotion delays after the study's acknowledgement, spread over [DELAY_MIN_S, DELAY_MAX_S] across the cycles:
#: around the end of the study's stable window (2 s), when it is analysed and its SR made and sent (about 0.2 s for
#: 16 slices here), so that demotions land before, while and after the SR goes out. A first run spread over 0-5 s
#: stepped over that moment: every SR was either held or already stored at the PATCH.
DELAY_MIN_S, DELAY_MAX_S = 1.5, 3.0
SLICES = 16


class Broken(RuntimeError):
    """Something that must work did not (no SR, no reload): the benchmark has no number to give."""


def _wait(check: Callable[[], Any], what: str, timeout: float, interval: float = 0.05,
          context: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Broken(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f"\n{context()}" if context is not None else ""))
        time.sleep(interval)


class SrWatch:
    """When each study's first SR reached Orthanc (its C-STORE ledger, polled every 20 ms on a thread)."""

    def __init__(self, pacs: Orthanc) -> None:
        self.pacs = pacs
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sr-watch", daemon=True)

    def __enter__(self) -> SrWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = time.time()
            for entry in self.pacs.received(modality="SR"):
                self.first_seen.setdefault(entry.study_uid, now)


def build_images() -> dict[str, Any]:
    """``scripts/images.sh archive`` timed; per-image build seconds from its report; archive sizes."""
    start = time.monotonic()
    done = subprocess.run([str(IMAGES_SCRIPT), "archive"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Broken(f"scripts/images.sh archive failed:\n{done.stderr[-3000:]}")
    archives = [Path(line) for line in done.stdout.split()]
    built = {}
    for line in done.stderr.splitlines():  # "localhost/pacsflow/router:0.1.0 built in 103s"
        ref, sep, seconds = line.partition(" built in ")
        if sep:
            built[ref.rsplit("/", 1)[-1].split(":")[0]] = float(seconds.rstrip("s"))
    return {"archives": archives, "images_sh_archive_s": time.monotonic() - start, "built_s": built,
            "size_mb": {a.name.removesuffix(".tar").rsplit("-", 1)[0]: a.stat().st_size / 1e6 for a in archives}}


def _reload_after(node: Node, since: float, mode: str) -> float | None:
    """Kubelet time of the router pod's first "routing config reloaded" line with ``USE_CASE=mode`` after ``since``."""
    needle = f"{USE_CASE}={mode}"
    return next((t for t, text in log_lines(node, POD_PREFIX)
                 if t >= since and "routing config reloaded" in text and needle in text), None)


def _processed_mode(node: Node, key: str) -> str | None:
    """The mode the router pod analysed study ``key`` in (its "study <key> use case <uc> (<mode>)" line)."""
    prefix = f"study {key} use case {USE_CASE} ("
    for _, text in log_lines(node, POD_PREFIX):
        at = text.find(prefix)
        if at >= 0:
            return text[at + len(prefix):].split(")", 1)[0]
    return None


def _set_mode(custom: Any, mode: str, annotations: dict[str, str]) -> None:
    custom.patch_namespaced_custom_object("pacsflow.io", "v1alpha1", NAMESPACE, "aiusecases", USE_CASE, {
        "metadata": {"annotations": annotations}, "spec": {"mode": mode}})


def run(workdir: Path, cycles: int, edits: int) -> dict[str, Any]:
    from kubernetes import client, config

    from bench import killswitch

    images = build_images()
    studies = [phantom.write_study(workdir / f"study-{seed}", seed, lesion=bool(seed % 2), slices=SLICES)
               for seed in range(700, 701 + cycles)]
    result: dict[str, Any] = {"images": {k: v for k, v in images.items() if k != "archives"}}
    if (running := _node_running()) is not None:  # checked here, after the (minutes of) image builds
        raise Broken(f"a kubelet already runs on this host ({running}); one node per host: stop it first "
                     "(make cluster-down)")
    start = time.monotonic()
    with node_cluster(workdir / "cluster", images["archives"]) as node:
        result["cold_bring_up_s"] = time.monotonic() - start
        result["killswitch"] = killswitch.run(str(node.cp.kubeconfig), edits, _mkdir(workdir / "killswitch"))
        pacs = Orthanc(workdir / "orthanc", config={"DicomScpTimeout": 5}).start()
        api = config.new_client_from_config(config_file=str(node.cp.kubeconfig))
        try:
            with SrWatch(pacs) as watch:
                result.update(_install_and_first_sr(node, images["archives"], workdir, pacs, watch, studies[0]))
                result["cycles"] = _demotions(node, client.CustomObjectsApi(api), watch, studies[1:])
        finally:
            api.close()
            pacs.stop(kill=True)
    return result


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _install_and_first_sr(node: Node, archives: list[Path], workdir: Path, pacs: Orthanc, watch: SrWatch,
                          study: tuple[list[Path], phantom.GroundTruth]) -> dict[str, float]:
    start = time.monotonic()
    # The kill switch's run applied the CRDs already: the chart takes them over. Its operator watches only its
    # namespace, so the kill switch's objects are left to the operator that made them.
    helm_install(node, archives, extra=["--take-ownership", "--set", f"operator.watchNamespaces={{{NAMESPACE}}}"])
    node.kubectl("rollout", "status", "deployment/pacsflow", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    operator_available = time.monotonic() - start
    apply(node, workdir, spool_volume(f"{ROUTER}-spool", _mkdir(workdir / "spool-pv")),
          dicom_router(ROUTER, pacs.dicom_port), assistive_use_case(USE_CASE, ROUTER))
    _wait(lambda: POD_PREFIX in node.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "name"),
          "the operator creating the router's Deployment", 180, context=lambda: describe(node, "pods"))
    node.kubectl("rollout", "status", f"deployment/{POD_PREFIX}", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    router_ready = time.monotonic() - start
    paths, truth = study
    host = json.loads(node.kubectl("get", "service", POD_PREFIX, "-n", NAMESPACE, "-o", "json"))["spec"]["clusterIP"]
    # kube-proxy programs the Service's rules a moment after the pod is Ready: retry a refused association.
    _wait(lambda: len(storescu(11112, paths, host=host).acknowledged) == len(paths),
          "the router's ClusterIP accepting the study", 60, interval=0.5)
    _wait(lambda: truth.study_instance_uid in watch.first_seen, "the first SR at Orthanc", 300,
          context=lambda: node.pod_logs(NAMESPACE, POD_PREFIX)[-3000:])
    return {"helm_install_to_operator_available_s": operator_available,
            "helm_install_to_router_ready_s": router_ready,
            "helm_install_to_first_sr_s": time.monotonic() - start}


def _demotions(node: Node, custom: Any, watch: SrWatch,
               studies: list[tuple[list[Path], phantom.GroundTruth]]) -> list[dict[str, Any]]:
    host = json.loads(node.kubectl("get", "service", POD_PREFIX, "-n", NAMESPACE, "-o", "json"))["spec"]["clusterIP"]
    logs = lambda: node.pod_logs(NAMESPACE, POD_PREFIX)[-3000:]  # noqa: E731
    rows = []
    for i, (paths, truth) in enumerate(studies):
        if i:  # promote back (not timed): the policy wants who, and a fresh clinical-lead override
            since = time.time()
            _set_mode(custom, "assistive", override(f"pods benchmark, demotion cycle {i}"))
            _wait(lambda s=since: _reload_after(node, s, "assistive"), "the router pod applying the promotion", 60,
                  context=logs)
        sent = storescu(11112, paths, host=host)
        if len(sent.acknowledged) != len(paths):
            raise Broken(f"cycle {i}: the study was not acknowledged: {sent.output[-1000:]}")
        delay = DELAY_MIN_S + (DELAY_MAX_S - DELAY_MIN_S) * i / max(1, len(studies) - 1)
        time.sleep(delay)
        patched = time.time()
        _set_mode(custom, "silent", {"pacsflow.io/changed-by": ADMIN_USER})
        reloaded = _wait(lambda p=patched: _reload_after(node, p, "silent"), "the router pod applying the demotion",
                         60, interval=0.02, context=logs)
        key = study_key(truth.study_instance_uid)
        mode = _wait(lambda k=key: _processed_mode(node, k), f"cycle {i}: the study analysed", 120, context=logs)
        if mode != "silent":
            # Analysed before the demotion applied: its SR went out before it, or is held by the outbox (never sent).
            time.sleep(10)
        seen = watch.first_seen.get(truth.study_instance_uid)
        rows.append({"delay_s": delay, "reload_s": reloaded - patched,
                     "analysed_in": mode, "sr_after_patch_s": None if seen is None else seen - patched,
                     "last_output_s": max(0.0, seen - patched) if seen is not None else 0.0,
                     "sr_after_reload": seen is not None and seen > reloaded})
    return rows


def report(result: dict[str, Any]) -> None:
    images = result["images"]
    print(f"images: scripts/images.sh archive {images['images_sh_archive_s']:.0f} s (cached layers; rebuilt: "
          + (", ".join(f"{k} {v:.0f} s" for k, v in images["built_s"].items()) or "none") + ")")
    print("  sizes (docker-archive): " + ", ".join(f"{k} {v:.0f} MB" for k, v in images["size_mb"].items()))
    print(f"cold cluster bring-up (control plane + node Ready, images imported): {result['cold_bring_up_s']:.1f} s")
    print(f"helm install -> operator available {result['helm_install_to_operator_available_s']:.1f} s, router Ready "
          f"{result['helm_install_to_router_ready_s']:.1f} s, first SR stored {result['helm_install_to_first_sr_s']:.1f} s")
    rows = result["cycles"]
    reload_s = [r["reload_s"] for r in rows]
    last = [r["last_output_s"] for r in rows]
    ks = result["killswitch"]
    print(f"demotion -> router pod applied it (its reload log line), {len(rows)} cycles: p50 "
          f"{statistics.median(reload_s):.3f} s, p95 {_pct(reload_s, 0.95):.3f} s, max {max(reload_s):.3f} s")
    print(f"demotion -> last SR stored (0 when none after the PATCH): p50 {statistics.median(last):.3f} s, p95 "
          f"{_pct(last, 0.95):.3f} s; SRs after the PATCH {sum(r['sr_after_patch_s'] is not None and r['sr_after_patch_s'] > 0 for r in rows)}, "
          f"after the reload {sum(r['sr_after_reload'] for r in rows)}")
    print(f"kill switch (same API server, router process on the host): p50 {ks['cr_edit_to_router_silent_p50_s']:.3f} s,"
          f" p95 {ks['cr_edit_to_router_silent_p95_s']:.3f} s; pod / kill switch p50 "
          f"{statistics.median(reload_s) / ks['cr_edit_to_router_silent_p50_s']:.2f}x, p95 "
          f"{_pct(reload_s, 0.95) / ks['cr_edit_to_router_silent_p95_s']:.2f}x")
    print(f"  {'delay':>6}{'reload':>9}{'analysed':>11}{'SR-patch':>10}")
    for r in rows:
        sr = "-" if r["sr_after_patch_s"] is None else f"{r['sr_after_patch_s']:.2f}"
        print(f"  {r['delay_s']:>6.2f}{r['reload_s']:>9.3f}{r['analysed_in']:>11}{sr:>10}")


def _node_running() -> str | None:
    found = subprocess.run(["pgrep", "-a", "kubelet"], capture_output=True, text=True, check=False).stdout.strip()
    return found or None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write ``.bench/pods.json``; non-zero only when something is broken."""
    parser = argparse.ArgumentParser(prog="python -m bench.pods", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=12, help="demote/promote cycles (default 12)")
    parser.add_argument("--edits", type=int, default=10, help="kill switch edits (default 10)")
    args = parser.parse_args([] if argv is None else argv)  # `python -m bench`: its args are filters
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-pods-") as tmp:
        try:
            result = run(Path(tmp), args.cycles, args.edits)
        except Broken as exc:
            print(f"broken: {exc}")
            return 1
    report(result)
    out = REPO / ".bench" / "pods.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
