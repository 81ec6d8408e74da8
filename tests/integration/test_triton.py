"""The Triton path against a real tritonserver (nvidia-pytriton's 2.51 binary, CPU python backend + ensembles).

Equality with the embedded path: the same ONNX file run by the router's EmbeddedOnnxBackend (in-process ONNX
Runtime and the same postprocess function). Tolerance: 1e-5 absolute on probabilities and locations (float32 sigmoid outputs; both sides run the
same graph on the CPU, ONNX Runtime versions differ between the two venvs).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from pacsflow_router.analysis import preprocess
from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.analysis.tritonbackend import REQUESTS, TritonBackend
from pacsflow_router.config import ModelRef
from pacsflow_router.errors import InferenceError, InferenceUnavailableError, ModelNotFoundError
from pacsflow_router.models import repository
from tests.peers.net import eventually
from tests.peers.triton import (
    ROOT,
    TritonPeer,
    hold_executions,
    make_source_repository,
    make_test_onnx,
    pending_requests,
    serve,
    study_batch,
)

pytestmark = pytest.mark.triton

ATOL = 1e-5
V1 = ModelRef(name="ich_detector", version=1)
V2 = ModelRef(name="ich_detector", version=2)


def embedded(onnx_file: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The embedded path's answer for ``<repo>/<name>/<version>/model.onnx``: the router's EmbeddedOnnxBackend."""
    version = onnx_file.parent
    backend = EmbeddedOnnxBackend(version.parent.parent)
    out = backend.infer(ModelRef(name=version.parent.name, version=int(version.name)), batch)
    return out.probability, out.location


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[TritonPeer, Path]:
    tmp = tmp_path_factory.mktemp("triton")
    source = make_source_repository(tmp / "src", {1: 1})
    peer = serve(source, tmp)
    yield peer, source
    peer.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("shared_memory", [False, True], ids=["tensors", "shm"])
def test_triton_matches_embedded(served, protocol: str, shared_memory: bool):
    peer, source = served
    backend = TritonBackend(peer.url if protocol == "http" else peer.grpc_url, protocol, 30, shared_memory)
    try:
        assert backend.ready(V1)
        # 70 slices: more than the ensemble's max_batch_size (64), so the study goes as two chunks.
        for n in (70, 3):
            batch = study_batch(n, seed=n)
            out = backend.infer(V1, batch, priority=1)
            probability, location = embedded(source / "ich_detector" / "1" / "model.onnx", batch)
            assert out.probability.shape == (n,) and out.location.shape == (n, 2)
            np.testing.assert_allclose(out.probability, probability, atol=ATOL)
            np.testing.assert_allclose(out.location, location, atol=ATOL)
            assert out.probability.std() > 0.01  # the answers vary per slice: the comparison means something
    finally:
        backend.close()


def test_priorities_are_accepted(served):
    """Triage (1), assistive (2), silent (3) and default (0) requests are all served with the same answers."""
    peer, _ = served
    backend = TritonBackend(peer.url)
    batch = study_batch(4)
    answers = [backend.infer(V1, batch, priority=p).probability for p in (0, 1, 2, 3)]
    for other in answers[1:]:
        np.testing.assert_array_equal(other, answers[0])


def test_unknown_version_is_model_not_found(served):
    peer, _ = served
    backend = TritonBackend(peer.url)
    before = REQUESTS.labels("ich_detector", "9", "model-not-found")._value.get()
    with pytest.raises(ModelNotFoundError, match=r"ich_detector version 9 .*versions there: \[1\]"):
        backend.infer(ModelRef(name="ich_detector", version=9), study_batch(2))
    assert REQUESTS.labels("ich_detector", "9", "model-not-found")._value.get() == before + 1
    assert not backend.ready(ModelRef(name="ich_detector", version=9))
    with pytest.raises(ModelNotFoundError):
        backend.infer(ModelRef(name="no_such_model", version=1), study_batch(2))


def test_bad_batch_is_an_inference_error_not_unavailable(served):
    peer, _ = served
    backend = TritonBackend(peer.url)
    with pytest.raises(InferenceError) as info:
        backend.infer(V1, np.zeros((2, 1, 128, 128), np.float32))
    assert type(info.value) is InferenceError


def test_triton_metrics_endpoint_stays_reachable(served):
    import urllib.request

    peer, _ = served
    TritonBackend(peer.url).infer(V1, study_batch(2))
    text = urllib.request.urlopen(peer.metrics_url, timeout=5).read().decode()
    assert 'nv_inference_request_success{model="ich_detector_v1",version="1"}' in text


def test_version_drop_in_and_pin_switch(tmp_path: Path):
    """A new version is rendered and loaded while version 1 keeps answering, unchanged; pin 2 changes the answers."""
    source = make_source_repository(tmp_path / "src", {1: 1})
    peer = serve(source, tmp_path)
    batch = study_batch(16)
    try:
        backend = TritonBackend(peer.url)
        v1_before = backend.infer(V1, batch)
        with pytest.raises(ModelNotFoundError):
            backend.infer(V2, batch)

        stop = threading.Event()
        failures: list[BaseException] = []
        served_v1: list[np.ndarray] = []

        def keep_asking_v1() -> None:
            client = TritonBackend(peer.url)
            while not stop.is_set():
                try:
                    served_v1.append(client.infer(V1, batch).probability)
                except InferenceError as exc:
                    failures.append(exc)

        worker = threading.Thread(target=keep_asking_v1)
        worker.start()
        try:
            make_test_onnx(source / "ich_detector" / "2" / "model.onnx", seed=2)
            changed = repository.write_repository(repository.plan_repository(source, "cpu-python"), tmp_path / "models")
            assert sorted(changed) == ["ich_detector_v2", "ich_detector_v2_onnx"]
            backend.load(repository.version_models("ich_detector", 2))
            v2 = backend.infer(V2, batch)
        finally:
            stop.set()
            worker.join()
        assert failures == [] and len(served_v1) > 0
        for answer in served_v1:
            np.testing.assert_array_equal(answer, v1_before.probability)
        np.testing.assert_array_equal(backend.infer(V1, batch).probability, v1_before.probability)
        expected, _ = embedded(source / "ich_detector" / "2" / "model.onnx", batch)
        np.testing.assert_allclose(v2.probability, expected, atol=ATOL)
        assert np.abs(v2.probability - v1_before.probability).max() > 0.05
        index = backend.repository_index()
        assert index["ich_detector_v1"]["1"] == "READY" and index["ich_detector_v2"]["2"] == "READY"
    finally:
        peer.stop()


def test_malformed_model_directory_is_reported_and_good_versions_keep_serving(tmp_path: Path):
    source = make_source_repository(tmp_path / "src", {1: 1, 2: 2})
    models = tmp_path / "models"
    repository.render_repository(source, models, "cpu-python")
    # A version whose model file went missing, and a model folder with a config.pbtxt that does not parse.
    (models / "ich_detector_v2_onnx" / "2" / "model.onnx").unlink()
    (models / "other_model" / "1").mkdir(parents=True)
    (models / "other_model" / "config.pbtxt").write_text('name: "other_model"\nbackend: "python"\ninput [ {')

    problems = repository.check_repository(models)
    assert any(p.startswith("other_model/config.pbtxt: not a valid Triton model config") for p in problems)
    assert "ich_detector_v2_onnx/2: missing model.onnx" in problems
    with TritonPeer(models, tmp_path, "explicit").start(wait_models=("ich_detector_v1",)) as peer:
        backend = TritonBackend(peer.url)
        batch = study_batch(8)
        out = backend.infer(V1, batch)
        expected, _ = embedded(source / "ich_detector" / "1" / "model.onnx", batch)
        np.testing.assert_allclose(out.probability, expected, atol=ATOL)
        assert not backend.ready(V2)
        with pytest.raises(InferenceUnavailableError, match=r"version 2 .* not ready in Triton \(ich_detector_v2_onnx UNAVAILABLE .*NoSuchFile"):
            backend.infer(V2, batch)
        assert "model.onnx" in backend.repository_index()["ich_detector_v2_onnx"]["2"]  # the reason names the file
        assert "failed to read text proto from" in peer.log() and "other_model/config.pbtxt" in peer.log()
        np.testing.assert_allclose(backend.infer(V1, batch).probability, expected, atol=ATOL)


@pytest.mark.parametrize("protocol,shared_memory", [("http", True), ("grpc", False)])
def test_triton_stopped_and_restarted(tmp_path: Path, protocol: str, shared_memory: bool):
    """While Triton is down the backend says 'unavailable' (the study waits); after the restart it answers again."""
    source = make_source_repository(tmp_path / "src", {1: 1})
    peer = serve(source, tmp_path)
    batch = study_batch(8)
    try:
        backend = TritonBackend(peer.url if protocol == "http" else peer.grpc_url, protocol, 10, shared_memory)
        before = backend.infer(V1, batch)
        peer.stop()
        with pytest.raises(InferenceUnavailableError, match="unreachable"):
            backend.infer(V1, batch)
        assert not backend.ready(V1)
        peer.start(wait_models=("ich_detector_v1",))
        np.testing.assert_array_equal(backend.infer(V1, batch).probability, before.probability)
        backend.close()
    finally:
        peer.stop()


def test_committed_repository_served_by_triton_matches_embedded(tmp_path: Path):
    """The committed ich_detector, every version, through Triton and embedded: same answers."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "model_repository", source)
    versions = sorted(int(p.name) for p in (source / "ich_detector").iterdir() if p.name.isdigit())
    with serve(source, tmp_path) as peer:
        backend = TritonBackend(peer.url, shared_memory=True)
        for version in versions:
            # Each version takes its own preprocessing's channels (v1: one window, v2: three).
            channels = preprocess.load_spec(source, ModelRef(name="ich_detector", version=version)).channels
            batch = np.random.default_rng(version).uniform(0, 1, (64, channels, 256, 256)).astype(np.float32)
            out = backend.infer(ModelRef(name="ich_detector", version=version), batch)
            probability, location = embedded(source / "ich_detector" / str(version) / "model.onnx", batch)
            np.testing.assert_allclose(out.probability, probability, atol=ATOL)
            np.testing.assert_allclose(out.location, location, atol=ATOL)
        backend.close()


def test_triage_overtakes_queued_silent_studies(tmp_path: Path):
    """A triage study (priority 1) queued behind silent ones (3) executes before all of them; a silent one after.

    Deterministic on any machine: the rendered ONNX step (its config as rendered: dynamic batching, priority levels,
    queue policy) runs wrapped so that the test holds its executions. A first request executes and waits; the silent
    requests and then the probe queue behind it, which the test confirms through Triton's own pending-request count;
    then the test releases the model and reads the order in which Triton executed them. Control: the same probe sent
    as silent executes last (first come, first served within a priority level).
    """
    silent_count = 6
    source = make_source_repository(tmp_path / "src", {1: 1})
    models = tmp_path / "models"
    repository.render_repository(source, models, "cpu-python")
    onnx_step = "ich_detector_v1_onnx"
    held = hold_executions(models / onnx_step, 1, tmp_path / "gate")
    with TritonPeer(models, tmp_path, "explicit").start(wait_models=("ich_detector_v1",)) as peer:
        TritonBackend(peer.url).infer(V1, study_batch(1))  # first-request setup happens outside the rounds

        def tagged(tag: int) -> np.ndarray:
            batch = study_batch(64, seed=tag)  # one request per execution: 64 rows is the model's max_batch_size
            batch[0, 0, 0, 0] = tag
            return batch

        def round_order(probe_priority: int) -> list[int]:
            """Execution order of: plug (tag 1), silent studies (tags 10..), probe (tag 2)."""
            held.clear()
            held.hold()
            threads: list[threading.Thread] = []
            errors: list[BaseException] = []

            def infer(tag: int, priority: int) -> None:
                try:
                    # A long timeout: Triton's queue timeout must not expire while the test holds the model.
                    TritonBackend(peer.url, timeout_seconds=600).infer(V1, tagged(tag), priority=priority)
                except BaseException as exc:  # noqa: BLE001 - reported by the test below
                    errors.append(exc)

            def send(tag: int, priority: int) -> None:
                thread = threading.Thread(target=infer, args=(tag, priority))
                thread.start()
                threads.append(thread)

            try:
                send(1, 3)
                eventually(lambda: held.executions() == [[1]], "the plug request executing (held)", timeout=60)
                for tag in range(10, 10 + silent_count):
                    send(tag, 3)
                eventually(lambda: pending_requests(peer, onnx_step, 1) == silent_count,
                           f"{silent_count} silent requests queued in Triton", timeout=60)
                send(2, probe_priority)
                eventually(lambda: pending_requests(peer, onnx_step, 1) == silent_count + 1,
                           "the probe queued behind them", timeout=60)
            finally:
                held.release()
                for thread in threads:
                    thread.join(timeout=600)
            assert errors == [] and not any(t.is_alive() for t in threads), errors
            return [tag for execution in held.executions() for tag in execution]

        silent_tags = set(range(10, 10 + silent_count))
        triage = round_order(probe_priority=1)
        assert triage[:2] == [1, 2] and set(triage[2:]) == silent_tags, triage
        control = round_order(probe_priority=3)
        assert control[0] == 1 and set(control[1:-1]) == silent_tags and control[-1] == 2, control


def test_served_manifest_is_what_the_version_folder_holds(tmp_path: Path, served):
    """A real tritonserver hands back each ensemble's manifest parameters: the committed files of every version, a
    version dropped into Triton's source alone (version 5: version 2's graph and preprocessing, a model.json of its
    own); the test repository's ensembles carry none (the router then keeps its image's files)."""
    import json

    from pacsflow_router.analysis.manifest import algorithm_version, load_manifest
    from pacsflow_router.analysis.manifestmirror import ManifestMirror

    source = tmp_path / "src"
    shutil.copytree(ROOT / "model_repository", source)
    v5 = source / "ich_detector" / "5"
    shutil.copytree(source / "ich_detector" / "2", v5)
    model_json = json.loads((source / "ich_detector" / "model.json").read_text())
    model_json["operatingPoint"]["decisionThreshold"] = 0.4
    (v5 / "model.json").write_text(json.dumps(model_json, indent=2))
    v5_ref = ModelRef(name="ich_detector", version=5)
    with serve(source, tmp_path) as peer:
        for protocol, url in (("http", peer.url), ("grpc", peer.grpc_url)):
            backend = TritonBackend(url, protocol, 30)
            files = backend.served_manifest(v5_ref)
            assert files == {"model.json": (v5 / "model.json").read_text(),
                             "preprocess.json": (v5 / "preprocess.json").read_text(),
                             "algorithm_version.txt": algorithm_version(source, V2)}, protocol
            assert backend.served_manifest(V1)["preprocess.json"] == \
                (source / "ich_detector" / "preprocess.json").read_text()
            with pytest.raises(ModelNotFoundError):
                backend.served_manifest(ModelRef(name="ich_detector", version=9))
            backend.close()
        # The router's mirror of it: read like a repository by the lookups the pipeline uses.
        backend = TritonBackend(peer.url)
        mirror = ManifestMirror(tmp_path / "mirror", ROOT / "model_repository", backend.served_manifest)
        root = mirror.repository(v5_ref)
        assert load_manifest(root, v5_ref).operating_point.decision_threshold == 0.4
        assert preprocess.load_spec(root, v5_ref).channels == 3
        assert algorithm_version(root, v5_ref).startswith("ich_detector 2.")
        batch = np.random.default_rng(5).uniform(0, 1, (4, 3, 256, 256)).astype(np.float32)
        np.testing.assert_allclose(backend.infer(v5_ref, batch).probability,
                                   embedded(v5 / "model.onnx", batch)[0], atol=ATOL)
        backend.close()
    test_peer, _ = served
    assert TritonBackend(test_peer.url).served_manifest(V1) is None


def test_a_reload_that_changes_inference_frees_the_old_backend_and_moves_the_manifests(tmp_path: Path, served):
    """A platform team points the router at another Triton endpoint (here the same server over gRPC instead of HTTP,
    shared memory on). The new backend serves the next study; the old one's shared-memory region is unregistered
    from Triton on the pipeline thread's next pass (never under an inference it may be running) and the manifest
    mirror asks the new endpoint. At stop the backend's regions go too."""
    import tritonclient.http as httpclient

    from pacsflow_router.config import parse_config
    from pacsflow_router.service import RouterService
    from tests.peers.net import free_port

    peer, source = served

    def config(url: str, protocol: str):
        return parse_config({
            "spoolDir": str(tmp_path / "spool"), "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
            "port": free_port(), "metrics": {"port": free_port()},
            "inference": {"backend": "triton", "url": url, "protocol": protocol, "sharedMemory": True,
                          "modelRepository": str(source), "manifestMirror": str(tmp_path / "mirror")},
            "useCases": [{"name": "ich", "model": {"name": "ich_detector", "version": 1}, "mode": "silent"}]})

    triton = httpclient.InferenceServerClient(peer.url)

    def regions() -> set[str]:
        return {region["name"] for region in triton.get_system_shared_memory_status()}

    before = regions()
    service = RouterService(config(peer.url, "http"))
    try:
        old = service.pipeline.backend
        old.infer(V1, study_batch(3, seed=3))
        registered = regions() - before
        assert registered  # the HTTP backend's region, registered on first use
        service.apply_config(config(peer.grpc_url, "grpc"))
        new = service.pipeline.backend
        assert new is not old
        assert registered <= regions()  # still there until the pipeline thread's next pass
        service.pipeline.close_retired()
        assert not registered & regions()
        # The manifests come through the new endpoint (this repository's ensembles carry none: the image's files).
        assert service.pipeline.manifests(V1) == source
        assert service.pipeline.manifests.__self__._fetch == new.served_manifest  # type: ignore[attr-defined]
        new.infer(V1, study_batch(3, seed=4))
        assert regions() - before
        service.stop()  # never started: no thread to wait for, so the backend is closed
        assert regions() == before
    finally:
        service.outbox.close()
        service.audit.close()
        service.spool.close()
