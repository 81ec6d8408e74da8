"""Render and check the deployable Triton model repository from the one committed source.

The committed ``model_repository/`` (Triton layout) holds, per model, the ONNX versions the model team drops in::

    model_repository/ich_detector/config.pbtxt      platform onnxruntime_onnx, tensors image -> logit, location_logit
    model_repository/ich_detector/<N>/model.onnx

The embedded backend runs those files directly. Triton serves a *rendered* repository, derived from that source for
one target, so there are never two hand-maintained copies:

``cpu-python``
    The ``tritonserver`` bundled in the nvidia-pytriton wheel (tests, ``make triton``): it has the python backend but
    no onnxruntime backend, so the ONNX step is a python-backend model running ONNX Runtime on the CPU.
``gpu``
    Stock NGC Triton on a GPU node: the ONNX step runs on the native onnxruntime backend with a GPU instance group.

For a source model ``M`` and each of its versions ``N`` both targets render:

``M_vN_onnx``        version ``N``: the committed ONNX file, dynamic batching, priority levels, bounded queue; input
                     dims from that version's own graph (versions may differ: ich_detector 1 takes one window
                     channel, version 2 three; the source config may leave the channel dimension -1)
``M_vN``             version ``N``: the ensemble ``M_vN_onnx`` -> ``M_postprocess``, what the router asks for; its
                     ``parameters`` carry the version's ``model.json``, ``preprocess.json`` and algorithm version
                     string (:data:`MANIFEST_PARAMETERS`), so a router on Triton preprocesses and reports with exactly
                     what Triton serves (analysis/manifestmirror.py), not with a copy in its own image
``M_postprocess``    version 1: the router's own :func:`pacsflow_router.analysis.postprocess.postprocess` (a verbatim copy of
                     its module) in the python backend, so both paths turn raw outputs into findings with one function

Why a model per version rather than Triton versions of one model:

* an ensemble's steps live in its one ``config.pbtxt``, shared by all its versions, so an ensemble ``M`` with
  versions 1 and 2 cannot route version 2 to ONNX version 2 (``model_version: -1`` would send both to the newest
  ONNX and silently break pinning);
* Triton loads a model's versions all or nothing: one broken ``model.onnx`` in version 3 of a shared ONNX model
  unloads versions 1 and 2 as well. Separate models keep a bad drop-in from taking down the versions that work.

So the router asks Triton for model :func:`ensemble_name` ``(M, N)`` at version ``N`` (Triton's own metrics then
carry both). Dropping ``M/<N+1>/model.onnx`` into the source and rendering again only adds the two new model folders
(unchanged files are not rewritten; new folders appear by an atomic rename), so Triton (poll mode, or an explicit load
of :func:`version_models`) loads them without touching the versions already serving.

Config parsing uses the protobuf schema shipped in tritonclient (``tritonclient.grpc.model_config_pb2``): that is
Triton's own definition of ``config.pbtxt``, used here as data; no client is created.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import cast

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ..analysis.manifest import ALGORITHM_VERSION_FILE, MANIFEST_FILE, onnx_algorithm_version, version_file
from ..analysis.preprocess import SPEC_FILE
from ..config import served_model_name

TARGETS = ("cpu-python", "gpu")

#: Triton priority levels of every rendered model: 1 triage, 2 assistive, 3 silent (the default, also for 0).
PRIORITY_LEVELS = 3
#: Requests (one per study chunk) a model queues before Triton rejects more; the router keeps the study and retries.
MAX_QUEUE_SIZE = 32
#: How long the dynamic batcher waits to merge requests from concurrent studies.
MAX_QUEUE_DELAY_MICROSECONDS = 2000
#: Batch size used when the source config says 0 (no batching declared) but the first dimension is -1.
DEFAULT_MAX_BATCH_SIZE = 64
#: Python-backend models read this file; the GPU target hands the same file to the onnxruntime backend.
ONNX_FILE = "model.onnx"
POSTPROCESS_MODULE = "pacsflow_router.analysis.postprocess"
_RENDER_MARK = ".pacsflow-rendered"
#: File of a version's manifest (in a router's mirror) -> the ensemble parameter that carries its text. A file comes
#: from the version folder, else the model folder, as the router looks them up; a missing one is left out.
MANIFEST_PARAMETERS = {
    MANIFEST_FILE: "pacsflow_model_json",
    SPEC_FILE: "pacsflow_preprocess_json",
    ALGORITHM_VERSION_FILE: "pacsflow_algorithm_version",
}

_ONNX_MODEL_PY = '''\
"""Rendered by pacsflow model-repository (target cpu-python): runs the version's ONNX file with ONNX Runtime (CPU)."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        onnx_file = config["parameters"]["onnx_file"]["string_value"]
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        # The dynamic batcher hands over several requests: run them as one batch, then split the rows back.
        feeds = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                 for name in self.inputs}
        sizes = [a.shape[0] for a in feeds[self.inputs[0]]]
        results = self.session.run(self.outputs, {n: np.concatenate(a) for n, a in feeds.items()})
        bounds = np.cumsum(sizes)[:-1]
        parts = [np.split(r, bounds) for r in results]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(p[i])) for n, p in zip(self.outputs, parts)]
            )
            for i in range(len(requests))
        ]
'''

_POSTPROCESS_MODEL_PY = '''\
"""Rendered by pacsflow model-repository: the router's postprocess function (copied beside this file) as a model."""

import importlib.util
import os

import numpy as np
import triton_python_backend_utils as pb_utils

_spec = importlib.util.spec_from_file_location(
    "pacsflow_postprocess", os.path.join(os.path.dirname(os.path.abspath(__file__)), "postprocess.py")
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logit = pb_utils.get_input_tensor_by_name(request, "logit").as_numpy()
            location_logit = pb_utils.get_input_tensor_by_name(request, "location_logit").as_numpy()
            probability, location = _module.postprocess(logit, location_logit)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("probability", np.asarray(probability, np.float32).reshape(-1, 1)),
                pb_utils.Tensor("location", np.asarray(location, np.float32).reshape(-1, 2)),
            ]))
        return responses
'''


class ModelRepositoryError(Exception):
    """The source repository cannot be rendered at all (no usable model, postprocess module not self-contained)."""


def ensemble_name(model: str, version: int) -> str:
    """Triton model name of the ensemble that serves ``model`` pinned to ``version``.

    Parameters
    ----------
    model : str
        Source model name (``config.ModelRef.name``), e.g. ``ich_detector``.
    version : int
        Pinned version (``config.ModelRef.version``).

    Returns
    -------
    str
        e.g. ``ich_detector_v2``; ask Triton for this name at version ``version``.
    """
    return served_model_name(model, version)


def version_models(model: str, version: int) -> list[str]:
    """Triton models serving ``model`` version ``version``, in load order (steps before the ensemble)."""
    return [f"{model}_postprocess", f"{ensemble_name(model, version)}_onnx", ensemble_name(model, version)]


def parse_config(text: str, where: str = "config.pbtxt") -> mc.ModelConfig:
    """Parse ``config.pbtxt`` text with Triton's own schema.

    Raises
    ------
    ValueError
        With the file and the parser's line/column message.
    """
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{where}: not a valid Triton model config: {exc}") from None


def _format(config: mc.ModelConfig) -> bytes:
    return cast(str, text_format.MessageToString(config)).encode()


@dataclass
class RepositoryPlan:
    """What a render writes: file contents by relative path, the models it renders and the problems it skipped."""

    target: str
    files: dict[PurePosixPath, bytes | Path] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing_pins: list[str] = field(default_factory=list)
    """Pinned versions (``--versions``) that the source lacks: the render fails, so Triton never serves without one."""

    def configs(self) -> dict[str, str]:
        """``config.pbtxt`` text per rendered model name (what the operator puts in a ConfigMap)."""
        return {
            str(p.parent): data.decode()
            for p, data in self.files.items()
            if p.name == "config.pbtxt" and len(p.parts) == 2 and isinstance(data, bytes)
        }


@dataclass(frozen=True)
class _Source:
    name: str
    config: mc.ModelConfig
    versions: dict[int, Path]


def _postprocess_source(path: Path | None = None) -> bytes:
    if path is None:
        spec = importlib.util.find_spec(POSTPROCESS_MODULE)
        if spec is None or spec.origin is None:
            raise ModelRepositoryError(f"{POSTPROCESS_MODULE} is not importable; the postprocess step copies its source")
        path = Path(spec.origin)
    source = path.read_bytes()
    # The module is copied verbatim into Triton's python backend, where only numpy and the stdlib exist.
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pacsflow")):
            raise ModelRepositoryError(
                f"{POSTPROCESS_MODULE} imports {node.module or '.'}; keep it self-contained (numpy only) so that "
                "Triton's python backend can run the same file"
            )
        if isinstance(node, ast.Import) and any(a.name.startswith("pacsflow") for a in node.names):
            raise ModelRepositoryError(f"{POSTPROCESS_MODULE} must not import pacsflow modules (copied into Triton)")
    return source


def _model_folders(
    root: Path, problems: list[str], consequence: str = ""
) -> Iterator[tuple[str, Path, mc.ModelConfig]]:
    """(name, folder, parsed config.pbtxt) of every model folder; a folder without a valid config is a problem."""
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = model_dir.name
        cfg_path = model_dir / "config.pbtxt"
        if not cfg_path.is_file():
            problems.append(f"{name}: no config.pbtxt{consequence}")
            continue
        try:
            config = parse_config(cfg_path.read_text(), f"{name}/config.pbtxt")
        except ValueError as exc:
            problems.append(f"{exc}{consequence}")
            continue
        yield name, model_dir, config


def _read_sources(
    source: Path, versions: Mapping[str, Collection[int]] | None, problems: list[str],
    missing_pins: list[str] | None = None,
) -> list[_Source]:
    out = []
    if not source.is_dir():
        raise ModelRepositoryError(f"model repository {source} does not exist")
    for name, model_dir, config in _model_folders(source, problems, "; model skipped"):
        if config.name and config.name != name:
            problems.append(f"{name}/config.pbtxt: name {config.name!r} does not match its folder; model skipped")
            continue
        if config.platform != "onnxruntime_onnx" and config.backend != "onnxruntime":
            problems.append(f"{name}: platform {config.platform or config.backend!r} is not onnxruntime_onnx; skipped")
            continue
        outputs = {o.name for o in config.output}
        if not {"logit", "location_logit"} <= outputs:
            problems.append(f"{name}: outputs {sorted(outputs)} lack logit/location_logit; model skipped")
            continue
        found: dict[int, Path] = {}
        for vdir in model_dir.iterdir():
            if vdir.is_dir() and vdir.name.isdigit() and int(vdir.name) > 0:
                onnx = vdir / (config.default_model_filename or ONNX_FILE)
                if onnx.is_file() and onnx.stat().st_size > 0:
                    found[int(vdir.name)] = onnx
                else:
                    problems.append(f"{name}/{vdir.name}: missing or empty {onnx.name}; version skipped")
        wanted = None if versions is None else versions.get(name, versions.get("*"))
        if wanted is not None:
            for v in sorted(set(wanted) - set(found)):
                problems.append(f"{name}: pinned version {v} has no usable {name}/{v}/{ONNX_FILE}")
                if missing_pins is not None:
                    missing_pins.append(f"{name}:{v}")
            found = {v: p for v, p in found.items() if v in set(wanted)}
        if not found:
            problems.append(f"{name}: no usable version; model skipped")
            continue
        out.append(_Source(name, config, dict(sorted(found.items()))))
    return out


def _batching(config: mc.ModelConfig) -> None:
    db = config.dynamic_batching
    db.max_queue_delay_microseconds = MAX_QUEUE_DELAY_MICROSECONDS
    db.priority_levels = PRIORITY_LEVELS
    db.default_priority_level = PRIORITY_LEVELS
    qp = db.default_queue_policy
    qp.max_queue_size = MAX_QUEUE_SIZE
    qp.timeout_action = mc.ModelQueuePolicy.REJECT
    # The router's per-request timeout applies inside Triton's queue too.
    qp.allow_timeout_override = True


def _io(src: mc.ModelConfig) -> tuple[int, list[mc.ModelInput], list[mc.ModelOutput]]:
    """Batch size and per-item tensors of the source model, whether it declares batching or not."""
    inputs = [mc.ModelInput(name=t.name, data_type=t.data_type, dims=list(t.dims)) for t in src.input]
    outputs = [mc.ModelOutput(name=t.name, data_type=t.data_type, dims=list(t.dims)) for t in src.output]
    if src.max_batch_size > 0:
        return src.max_batch_size, inputs, outputs
    for t in [*inputs, *outputs]:
        if not t.dims or t.dims[0] != -1:
            raise ModelRepositoryError(f"tensor {t.name} has no batch dimension; cannot batch slices")
        del t.dims[0]
    return DEFAULT_MAX_BATCH_SIZE, inputs, outputs


def onnx_input_dims(path: Path) -> dict[str, list[int]]:
    """Per-item dims (batch dimension dropped) of the inputs of an ONNX file whose non-batch dims are all fixed.

    The source ``config.pbtxt`` is shared by every version of a model, but versions may take different inputs
    (ich_detector 1: one window channel, ``[1, 256, 256]``; 2: three, ``[3, 256, 256]``): the rendered config of
    each version takes its dims from that version's own graph, which Triton checks the config against anyway.
    An unreadable file gives ``{}`` (the source dims are kept; Triton then reports the broken file).
    """
    import onnxruntime as ort  # the router's own runtime dependency; loads in well under a second for our models

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 -- any load failure means "no dims from the file", reported by Triton
        return {}
    dims: dict[str, list[int]] = {}
    for node in session.get_inputs():
        shape = list(node.shape)[1:]
        if shape and all(isinstance(d, int) and d > 0 for d in shape):
            dims[node.name] = [int(d) for d in shape]
    return dims


def _onnx_step(src: _Source, version: int, target: str) -> mc.ModelConfig:
    batch, inputs, outputs = _io(src.config)
    fixed = onnx_input_dims(src.versions[version])
    for t in inputs:
        if t.name in fixed and len(fixed[t.name]) == len(t.dims):
            del t.dims[:]
            t.dims.extend(fixed[t.name])
    cfg = mc.ModelConfig(name=f"{ensemble_name(src.name, version)}_onnx", max_batch_size=batch, input=inputs,
                         output=outputs)
    if target == "gpu":
        cfg.backend = "onnxruntime"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    else:
        cfg.backend = "python"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
        # model.py reads the file named here; the static check verifies that every served version has it.
        cfg.parameters["onnx_file"].string_value = ONNX_FILE
    _batching(cfg)
    cfg.version_policy.specific.versions.append(version)
    return cfg


def _postprocess_step(src: _Source, batch: int) -> mc.ModelConfig:
    fp32 = mc.TYPE_FP32
    cfg = mc.ModelConfig(
        name=f"{src.name}_postprocess", backend="python", max_batch_size=batch,
        input=[mc.ModelInput(name="logit", data_type=fp32, dims=[1]),
               mc.ModelInput(name="location_logit", data_type=fp32, dims=[2])],
        output=[mc.ModelOutput(name="probability", data_type=fp32, dims=[1]),
                mc.ModelOutput(name="location", data_type=fp32, dims=[2])],
    )
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    _batching(cfg)
    cfg.version_policy.specific.versions.append(1)
    return cfg


def _ensemble(src: _Source, version: int, onnx: mc.ModelConfig, post: mc.ModelConfig) -> mc.ModelConfig:
    cfg = mc.ModelConfig(
        name=ensemble_name(src.name, version), platform="ensemble", max_batch_size=onnx.max_batch_size,
        input=list(onnx.input), output=list(post.output),
    )
    cfg.version_policy.specific.versions.append(version)
    first = cfg.ensemble_scheduling.step.add(model_name=onnx.name, model_version=version)
    for t in onnx.input:
        first.input_map[t.name] = t.name
    for t in onnx.output:
        first.output_map[t.name] = f"raw_{t.name}"
    second = cfg.ensemble_scheduling.step.add(model_name=post.name, model_version=1)
    for t in post.input:
        second.input_map[t.name] = f"raw_{t.name}"
    for t in post.output:
        second.output_map[t.name] = t.name
    for file, text in _manifest_texts(src.versions[version]).items():
        cfg.parameters[MANIFEST_PARAMETERS[file]].string_value = text
    return cfg


def _manifest_texts(onnx_file: Path) -> dict[str, str]:
    """What a router needs of the version whose ONNX file this is, by file name (see :data:`MANIFEST_PARAMETERS`)."""
    version_dir = onnx_file.parent
    texts = {}
    for file in (MANIFEST_FILE, SPEC_FILE):
        path = version_file(version_dir.parent, int(version_dir.name), file)
        if path.is_file():
            texts[file] = path.read_text(encoding="utf-8")
    try:
        stated = onnx_algorithm_version(onnx_file)
    except Exception:  # noqa: BLE001 -- an unreadable graph is Triton's to report; the router falls back to N
        stated = None
    if stated:
        texts[ALGORITHM_VERSION_FILE] = stated
    return texts


def plan_repository(
    source: str | os.PathLike[str], target: str, versions: Mapping[str, Collection[int]] | None = None,
    postprocess_file: str | os.PathLike[str] | None = None,
) -> RepositoryPlan:
    """Compute the deployable repository for ``target`` from the source repository (pure: reads, never writes).

    Parameters
    ----------
    source : path-like
        The committed Triton-layout repository (``model_repository/``).
    target : {"cpu-python", "gpu"}
        Which Triton the repository is for (see the module docstring).
    versions : mapping, optional
        Versions to render per source model (``"*"`` applies to every model), e.g. the versions use cases pin.
        Default: every version present.
    postprocess_file : path-like, optional
        Source of the postprocess step; default: the installed :mod:`pacsflow_router.analysis.postprocess`.

    Returns
    -------
    RepositoryPlan
        Files to write and the problems found (broken versions/models are skipped, the rest is rendered).
    """
    if target not in TARGETS:
        raise ModelRepositoryError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    plan = RepositoryPlan(target)
    sources = _read_sources(Path(source), versions, plan.problems, plan.missing_pins)
    if not sources:
        raise ModelRepositoryError(f"no renderable model in {source}: " + "; ".join(plan.problems))
    postprocess_py = _postprocess_source(None if postprocess_file is None else Path(postprocess_file))
    for src in sources:
        post = _postprocess_step(src, _io(src.config)[0])
        pbase = PurePosixPath(post.name)
        plan.files[pbase / "config.pbtxt"] = _format(post)
        plan.files[pbase / "1" / "model.py"] = _POSTPROCESS_MODEL_PY.encode()
        plan.files[pbase / "1" / "postprocess.py"] = postprocess_py
        plan.models.append(post.name)
        for v, path in src.versions.items():
            onnx = _onnx_step(src, v, target)
            base = PurePosixPath(onnx.name)
            plan.files[base / "config.pbtxt"] = _format(onnx)
            plan.files[base / str(v) / ONNX_FILE] = path
            if target == "cpu-python":
                plan.files[base / str(v) / "model.py"] = _ONNX_MODEL_PY.encode()
            ens = _ensemble(src, v, onnx, post)
            plan.files[PurePosixPath(ens.name) / "config.pbtxt"] = _format(ens)
            # Triton needs the version folder even though an ensemble has no files of its own.
            plan.files[PurePosixPath(ens.name) / str(v) / ".keep"] = b""
            plan.models += [onnx.name, ens.name]
    return plan


def _same(dest: Path, data: bytes | Path) -> bool:
    if not dest.is_file():
        return False
    if isinstance(data, Path):
        return dest.stat().st_size == data.stat().st_size and dest.read_bytes() == data.read_bytes()
    return dest.read_bytes() == data


def write_repository(plan: RepositoryPlan, out: str | os.PathLike[str]) -> list[str]:
    """Make ``out`` match ``plan``, touching only what changed; returns the relative paths written or removed.

    New models and new version folders are assembled next to ``out`` and renamed into place, so a Triton polling
    ``out`` never sees a half-copied model; unchanged files keep their bytes and mtimes, so Triton sees no change
    in versions that already serve. Models and versions rendered earlier but no longer planned are removed; folders
    this renderer did not create are left alone.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mark = out / _RENDER_MARK
    previous = set(mark.read_text().split()) if mark.is_file() else set()
    changed: list[str] = []
    by_model: dict[str, dict[PurePosixPath, bytes | Path]] = {}
    for rel, data in plan.files.items():
        by_model.setdefault(rel.parts[0], {})[rel] = data
    for model, files in sorted(by_model.items()):
        if not (out / model).exists():
            _stage(out, out / model, {PurePosixPath(*r.parts[1:]): d for r, d in files.items()})
            changed.append(model)
            continue
        versions = sorted({r.parts[1] for r in files if len(r.parts) == 3})
        for v in versions:
            if not (out / model / v).exists():
                _stage(out, out / model / v,
                       {PurePosixPath(r.name): d for r, d in files.items() if len(r.parts) == 3 and r.parts[1] == v})
                changed.append(f"{model}/{v}")
        for rel, data in files.items():
            if not _same(out / rel, data):
                _put(out / rel, data, atomic=True)
                changed.append(str(rel))
        for vdir in (out / model).iterdir():
            if vdir.is_dir() and vdir.name.isdigit() and vdir.name not in versions:
                shutil.rmtree(vdir)
                changed.append(f"{model}/{vdir.name}")
    for model in sorted(previous - set(by_model)):
        if (out / model).is_dir():
            shutil.rmtree(out / model)
            changed.append(model)
    manifest = "\n".join(sorted(by_model)) + "\n"
    if not mark.is_file() or mark.read_text() != manifest:
        mark.write_text(manifest)
    return changed


def _stage(out: Path, dest: Path, files: dict[PurePosixPath, bytes | Path]) -> None:
    # Staged beside ``out`` (same file system, invisible to Triton), then renamed into place in one step.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    for rel, data in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        _put(staging / rel, data)
    staging.chmod(0o755)
    os.rename(staging, dest)


def _put(dest: Path, data: bytes | Path, atomic: bool = False) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp") if atomic else dest
    if isinstance(data, Path):
        shutil.copyfile(data, tmp)
    else:
        tmp.write_bytes(data)
    if atomic:
        os.replace(tmp, dest)


def render_repository(
    source: str | os.PathLike[str], out: str | os.PathLike[str], target: str,
    versions: Mapping[str, Collection[int]] | None = None, postprocess_file: str | os.PathLike[str] | None = None,
) -> RepositoryPlan:
    """:func:`plan_repository` then :func:`write_repository`; returns the plan (with its problems)."""
    plan = plan_repository(source, target, versions, postprocess_file)
    write_repository(plan, out)
    return plan


def _model_files(cfg: mc.ModelConfig) -> list[str]:
    if cfg.platform == "ensemble":
        return []
    if cfg.backend == "python":
        extra = cfg.parameters["onnx_file"].string_value if "onnx_file" in cfg.parameters else ""
        return ["model.py", *([extra] if extra else [])]
    if cfg.platform == "onnxruntime_onnx" or cfg.backend == "onnxruntime":
        return [cfg.default_model_filename or ONNX_FILE]
    return [cfg.default_model_filename] if cfg.default_model_filename else []


def check_repository(path: str | os.PathLike[str]) -> list[str]:
    """Statically check a Triton model repository (source or rendered); returns the problems, empty when clean.

    Checks: every model folder has a ``config.pbtxt`` that parses with Triton's schema and names its folder; its
    numbered version folders exist, cover the ``version_policy`` and hold the file its backend loads; every ensemble
    step names a model in the repository at a version that model serves, maps only tensors that model declares, reads
    only ensemble inputs or earlier steps' outputs, and every ensemble output is produced by a step.
    """
    root = Path(path)
    if not root.is_dir():
        return [f"{root}: not a directory"]
    problems: list[str] = []
    configs: dict[str, mc.ModelConfig] = {}
    served: dict[str, set[int]] = {}
    for name, model_dir, cfg in _model_folders(root, problems):
        if cfg.name and cfg.name != name:
            problems.append(f"{name}/config.pbtxt: name {cfg.name!r} does not match folder {name!r}")
        if not cfg.platform and not cfg.backend:
            problems.append(f"{name}/config.pbtxt: neither platform nor backend is set")
        configs[name] = cfg
        present = {int(v.name) for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()}
        if not present:
            problems.append(f"{name}: no numbered version folder")
        policy = cfg.version_policy.WhichOneof("policy_choice")
        if policy == "specific":
            wanted = set(cfg.version_policy.specific.versions)
            for v in sorted(wanted - present):
                problems.append(f"{name}: version_policy names version {v} but {name}/{v}/ does not exist")
            served[name] = wanted & present
        elif policy == "all":
            served[name] = present
        else:
            served[name] = set(sorted(present)[-max(cfg.version_policy.latest.num_versions, 1):])
        for v in sorted(served[name]):
            for needed in _model_files(cfg):
                if not (model_dir / str(v) / needed).is_file():
                    problems.append(f"{name}/{v}: missing {needed}")
    for name, cfg in configs.items():
        if cfg.platform == "ensemble":
            problems += _check_ensemble(name, cfg, configs, served)
    return problems


def _check_ensemble(
    name: str, cfg: mc.ModelConfig, configs: dict[str, mc.ModelConfig], served: dict[str, set[int]]
) -> list[str]:
    problems = []
    available = {t.name for t in cfg.input}
    if not cfg.ensemble_scheduling.step:
        problems.append(f"{name}: ensemble without steps")
    for i, step in enumerate(cfg.ensemble_scheduling.step):
        where = f"{name}: step {i} ({step.model_name})"
        target = configs.get(step.model_name)
        if target is None:
            problems.append(f"{where}: no model {step.model_name!r} in the repository")
            continue
        if step.model_version != -1 and step.model_version not in served.get(step.model_name, set()):
            problems.append(f"{where}: version {step.model_version} is not served by {step.model_name}")
        if cfg.max_batch_size > target.max_batch_size:
            problems.append(f"{where}: ensemble max_batch_size {cfg.max_batch_size} > step's {target.max_batch_size}")
        inputs = {t.name for t in target.input}
        outputs = {t.name for t in target.output}
        for key, value in step.input_map.items():
            if key not in inputs:
                problems.append(f"{where}: input_map key {key!r} is not an input of {step.model_name} {sorted(inputs)}")
            if value not in available:
                problems.append(f"{where}: input_map reads {value!r}, which no earlier step or ensemble input provides")
        for key in sorted(inputs - set(step.input_map)):
            problems.append(f"{where}: input {key!r} of {step.model_name} is not mapped")
        for key, value in step.output_map.items():
            if key not in outputs:
                problems.append(f"{where}: output_map key {key!r} is not an output of {step.model_name} {sorted(outputs)}")
            available.add(value)
    for t in cfg.output:
        if t.name not in available:
            problems.append(f"{name}: ensemble output {t.name!r} is produced by no step")
    return problems


def _parse_versions(items: list[str] | None) -> dict[str, list[int]] | None:
    if not items:
        return None
    out: dict[str, list[int]] = {}
    for item in items:
        model, _, numbers = item.rpartition(":")
        try:
            out.setdefault(model or "*", []).extend(int(n) for n in numbers.split(",") if n)
        except ValueError:
            raise SystemExit(f"--versions {item!r}: expected N[,N] or MODEL:N[,N]") from None
    return out


def main(argv: list[str] | None = None) -> int:
    """``pacsflow model-repository render|check``; returns the exit status.

    ``render`` exits 1 when nothing can be rendered or a pinned version (``--versions``) is missing (other
    skipped models/versions are printed to stderr and do not fail it);
    ``check`` exits 1 when it finds any problem.
    """
    parser = argparse.ArgumentParser(prog="pacsflow model-repository", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render the deployable repository for a Triton target")
    r.add_argument("--target", choices=TARGETS, required=True)
    r.add_argument("--out", required=True, help="output folder (Triton's --model-repository)")
    r.add_argument("--source", default="model_repository", help="committed source repository (default: %(default)s)")
    r.add_argument("--versions", nargs="+", metavar="[MODEL:]N[,N]",
                   help="versions to render (e.g. the pinned ones); default: every version present")
    c = sub.add_parser("check", help="statically check a (source or rendered) repository")
    c.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "render":
        try:
            plan = render_repository(args.source, args.out, args.target, _parse_versions(args.versions))
        except ModelRepositoryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for problem in plan.problems:
            print(f"skipped: {problem}", file=sys.stderr)
        if plan.missing_pins:
            # A use case pins these: serving the rest would fail its every study later, so fail the render
            # (the init container) where the platform team sees it.
            print(f"error: pinned version(s) {', '.join(plan.missing_pins)} not in {args.source}", file=sys.stderr)
            return 1
        # Skipped versions do not fail the render: the good ones must still deploy (and keep serving).
        print(f"rendered {len(plan.models)} models for {args.target} into {args.out}: {', '.join(plan.models)}")
        return 0
    problems = check_repository(args.path)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{args.path}: ok")
    return 1 if problems else 0
