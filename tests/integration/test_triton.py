"""The Triton path against a real tritonserver (nvidia-pytriton's 2.51 binary, CPU python backend + ensembles).

Equality with the embedded path: the same ONNX file run by the router's EmbeddedOnnxBackend (in-process ONNX
Runtime and the same postprocess function). Tolerance: 1e-5 absolute on probabilities and locations (float32 sigmoid outputs; both sides run the
same graph on the CPU, ONNX Runtime versions differ between the two venvs).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.analysis.tritonbackend import REQUESTS, TritonBackend
from pacsflow_router.config import ModelRef
from pacsflow_router.errors import InferenceError, InferenceUnavailableError, ModelNotFoundError
from pacsflow_router.models import repository
from tests.peers.net import eventually
from tests.peers.triton import ROOT, TritonPeer, make_source_repository, make_test_onnx, serve, study_batch

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
        batch = study_batch(64)
        for version in versions:
            out = backend.infer(ModelRef(name="ich_detector", version=version), batch)
            probability, location = embedded(source / "ich_detector" / str(version) / "model.onnx", batch)
            np.testing.assert_allclose(out.probability, probability, atol=ATOL)
            np.testing.assert_allclose(out.location, location, atol=ATOL)
        backend.close()


def test_triage_overtakes_queued_silent_studies(tmp_path: Path):
    """A triage study (priority 1) sent behind a queue of silent ones (3) is answered before most of them.

    Control: the same request sent as silent waits its turn. Asserted on completion order, never on durations; each
    round first checks through Triton's statistics that several silent studies were still unanswered.
    """
    silent_count = 20  # ~1.2 s of queued compute here: a faster machine must not drain it before the probe
    with serve(ROOT / "model_repository", tmp_path) as peer:
        batch = study_batch(64)
        watcher, probe = TritonBackend(peer.url), TritonBackend(peer.url)
        watcher.infer(V1, batch)
        probe.infer(V1, batch)

        def answered() -> int:
            return watcher.statistics(V1)["ich_detector_v1:1"]["inference_stats"]["success"]["count"]

        def silent_after_probe(probe_priority: int) -> tuple[int, int]:
            order: list[str] = []
            lock = threading.Lock()
            clients = [TritonBackend(peer.url) for _ in range(silent_count)]
            for client in clients:
                client.infer(V1, batch[:1])  # connect before the round

            sent: list[str] = []

            def silent(client: TritonBackend) -> None:
                with lock:
                    sent.append("silent")
                client.infer(V1, batch, priority=3)
                with lock:
                    order.append("silent")

            start = answered()
            threads = [threading.Thread(target=silent, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            # Every silent request is in its client's hands (counted by the test, not by the in-flight gauge: a fast
            # machine answers the first before the last is sent, and the gauge would then never reach the count);
            # give them a moment to reach Triton's queue, then count (from Triton's statistics) how many are still
            # unanswered when the probe goes out behind them.
            eventually(lambda: len(sent) == silent_count, "every silent request sent", timeout=30)
            time.sleep(0.1)
            unanswered = silent_count - (answered() - start)
            probe.infer(V1, batch, priority=probe_priority)
            with lock:
                order.append("probe")
            for t in threads:
                t.join()
            return len(order) - 1 - order.index("probe"), unanswered

        triage_after, triage_waiting = silent_after_probe(1)
        silent_after, silent_waiting = silent_after_probe(3)
        assert triage_waiting >= 5 and silent_waiting >= 5, "the queue drained before the probe; nothing to compare"
        # Ahead of the triage probe: the silent studies already dispatched when it arrived (executing, or between
        # the ensemble's steps; a handful on a busy machine). It must overtake most of the queue, while the silent
        # control probe waits for (nearly) all of it: FIFO would give the triage probe the same 0-2.
        assert triage_after >= triage_waiting // 2
        assert silent_after <= 2
