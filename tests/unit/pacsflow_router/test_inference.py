"""The embedded ONNX Runtime backend over a Triton-layout repository, and the backend factory."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pacsflow_router.analysis import inference
from pacsflow_router.analysis.postprocess import postprocess
from pacsflow_router.config import Inference, ModelRef
from pacsflow_router.errors import InferenceError, ModelNotFoundError

REPO = Path(__file__).resolve().parents[3] / "model_repository"


def _write_probe_model(path: Path, scale: float) -> None:
    """A real ONNX graph with the ich_detector I/O contract: logit = scale * mean(image) - 1,
    location_logit = [mean(image), -mean(image)] -- so outputs depend on each slice's input."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 256, 256])
    logit = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])
    loc = helper.make_tensor_value_info("location_logit", TensorProto.FLOAT, ["batch", 2])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m4"], ["m"], axis=1),
        helper.make_node("Mul", ["m", "scale"], ["ms"]),
        helper.make_node("Sub", ["ms", "one"], ["logit"]),
        helper.make_node("Neg", ["m"], ["negm"]),
        helper.make_node("Concat", ["m", "negm"], ["location_logit"], axis=1),
    ]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    graph = helper.make_graph(nodes, "probe", [image], [logit, loc], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


@pytest.fixture
def repo(tmp_path):
    _write_probe_model(tmp_path / "probe" / "1" / "model.onnx", scale=4.0)
    _write_probe_model(tmp_path / "probe" / "2" / "model.onnx", scale=8.0)
    return tmp_path


def test_runs_the_pinned_version_and_postprocesses(repo):
    backend = inference.EmbeddedOnnxBackend(repo)
    batch = np.stack([np.full((1, 256, 256), v, np.float32) for v in (0.0, 0.5, 1.0)])
    v1 = backend.infer(ModelRef(name="probe", version=1), batch)
    v2 = backend.infer(ModelRef(name="probe", version=2), batch)
    expected_p, expected_loc = postprocess(np.array([[-1.0], [1.0], [3.0]]), np.array([[0, 0], [0.5, -0.5], [1, -1]]))
    assert np.allclose(v1.probability, expected_p, atol=1e-5)
    assert np.allclose(v1.location, expected_loc, atol=1e-5)
    assert v2.probability[2] > v1.probability[2]  # version 2 is a different model
    assert isinstance(backend, inference.InferenceBackend)


def test_batches_larger_than_max_batch_run_in_chunks(repo):
    backend = inference.EmbeddedOnnxBackend(repo, max_batch=4)
    values = np.linspace(0, 1, 10, dtype=np.float32)
    batch = np.broadcast_to(values[:, None, None, None], (10, 1, 256, 256))
    out = backend.infer(ModelRef(name="probe", version=1), batch)
    assert out.probability.shape == (10,) and out.location.shape == (10, 2)
    assert np.allclose(out.probability, 1 / (1 + np.exp(-(4 * values - 1))), atol=1e-4)


def test_missing_model_or_version_is_model_not_found_with_a_hint(repo):
    backend = inference.EmbeddedOnnxBackend(repo)
    with pytest.raises(ModelNotFoundError, match=r"version 3 not found.*available versions of 'probe': \[1, 2\]"):
        backend.infer(ModelRef(name="probe", version=3), np.zeros((1, 1, 256, 256), np.float32))
    with pytest.raises(ModelNotFoundError, match="no model folder 'nope'"):
        backend.infer(ModelRef(name="nope", version=1), np.zeros((1, 1, 256, 256), np.float32))
    assert not backend.ready(ModelRef(name="probe", version=3))
    assert backend.ready(ModelRef(name="probe", version=1))


def test_corrupt_model_and_wrong_input_shape_are_inference_errors(repo):
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    backend = inference.EmbeddedOnnxBackend(repo)
    with pytest.raises(InferenceError, match="cannot be loaded"):
        backend.infer(ModelRef(name="broken", version=1), np.zeros((1, 1, 256, 256), np.float32))
    assert not backend.ready(ModelRef(name="broken", version=1))
    with pytest.raises(InferenceError, match=r"takes image of shape \[N, 1, 256, 256\], got \[2, 1, 128, 128\]"):
        backend.infer(ModelRef(name="probe", version=1), np.zeros((2, 1, 128, 128), np.float32))


def test_committed_model_has_the_io_contract():
    backend = inference.EmbeddedOnnxBackend(REPO)
    model = ModelRef(name="ich_detector", version=1)
    assert backend.ready(model)
    session = backend._session(model)
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("image", [1, 256, 256])]
    assert [(o.name, o.shape[1:]) for o in session.get_outputs()] == [("logit", [1]), ("location_logit", [2])]
    out = backend.infer(model, np.zeros((3, 1, 256, 256), np.float32))
    assert out.probability.shape == (3,) and np.all((out.probability >= 0) & (out.probability <= 1))
    assert (REPO / "ich_detector" / "1" / "model.onnx").stat().st_size < 5 * 2**20


def test_make_backend_picks_the_configured_backend(tmp_path):
    embedded = inference.make_backend(Inference(backend="embedded", model_repository=str(tmp_path)))
    assert isinstance(embedded, inference.EmbeddedOnnxBackend)
    assert embedded.model_repository == tmp_path.resolve()
    triton = inference.make_backend(Inference(backend="triton", url="127.0.0.1:1"))
    assert type(triton).__name__ == "TritonBackend"
    assert isinstance(triton, inference.InferenceBackend)
