"""Slices -> the model's input tensor: HU rescale, windows as channels, resize, normalise (DALI + numpy reference).

The steps and their parameters come from the model's preprocessing spec,
``<model_repository>/<model>/preprocess.json`` (a ``<version>/preprocess.json`` overrides it), so the
model, its training script and both implementations here share one definition:

1. resize the stored values to ``size`` (rows, cols) with bilinear interpolation, pixel centres aligned at
   half-pixel offsets (``src = (dst + 0.5) * in / out - 0.5``, clamped at the border) and no antialiasing,
   so DALI's ``fn.resize`` (``INTERP_LINEAR``, ``antialias=False``) and the numpy reference compute the same
   sums;
2. HU = value x Rescale Slope + Rescale Intercept (PS3.3 C.11.1.1.2; 1 and 0 when absent) -- linear, so
   it commutes with step 1;
3. window, once per channel: ``clip((HU - (center - width / 2)) / width, 0, 1)``. A spec declares either one
   ``window`` (one channel; version 1 of ich_detector) or a list ``windows`` (one channel each, in order: e.g.
   brain 40/80, subdural 75/215, bone 600/2800, the standard input of published hemorrhage detectors -- blood
   and bone both saturate the brain window, the subdural and bone windows tell them apart);
4. ``(x - mean) / std``; output float32 ``[N, C, rows, cols]``, C = number of windows;
5. with ``neighbours`` = n > 0 (a 2.5-D model, ich_detector version 3): each slice's input is the channels of the
   slices k - n .. k + n of the series (in its sorted order) side by side, the series' first or last slice repeated
   past either end (:func:`stack_neighbours`), so C = windows x (2n + 1). Run on the host after either backend:
   DALI's samples are independent images, and this step only copies.

Projection radiographs (a spec with ``radiograph``) replace step 2: each image's stored values map to its own
normalised units (low/high percentile -> 0/1, MONOCHROME1 inverted, :func:`radiograph_rescale`), still one
affine map per image, so steps 1, 3 and 4 and both implementations are unchanged.

Resizing first means the per-pixel arithmetic runs on the 256x256 output instead of the 512x512 input,
which halves DALI's CPU time (measured: 274 -> 141 ms per 64-slice study on one thread). Steps 2-3 are
folded into one multiply-add per image and channel (``a = slope / width``, ``b = (intercept - low) / width``);
the resize runs once per image whatever the number of channels.

DALI runs on the CPU here (``device_id=None``) and puts the same stages on the GPU when one is present
(``device="gpu"``, or ``"auto"`` when DALI sees a CUDA device).
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import domain
from ..config import ModelRef
from ..errors import ConfigError, InferenceError
from .manifest import version_file

__all__ = [
    "PreprocessSpec", "load_spec", "read_spec", "rescale_of", "preprocess_numpy", "preprocess_dali",
    "preprocess_series", "Radiograph", "radiograph_rescale", "build_pipeline", "gpu_available", "SPEC_FILE",
    "stack_neighbours",
]

SPEC_FILE = "preprocess.json"
#: Largest batch one DALI run takes; longer series run in chunks of this size.
MAX_BATCH = 64

Backend = Literal["dali", "numpy"]
Device = Literal["auto", "cpu", "gpu"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Spec):
    """Display window applied to HU values (brain window by default)."""

    name: str = ""
    """What the window shows (``brain``, ``subdural``, ``bone``); documentation only."""
    center: float = 40.0
    width: float = Field(default=80.0, gt=0)


class Normalize(_Spec):
    """Normalisation after windowing and resize: ``(x - mean) / std``."""

    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)


class Radiograph(_Spec):
    """Intensity normalisation of a projection radiograph (DX, CR), used instead of the Modality LUT's units.

    Projection radiographs have no absolute scale like HU: the stored range depends on the detector, the bit
    depth and the vendor's processing, and MONOCHROME1 images store air bright. Each image is therefore mapped
    to *normalised units*, 0 at the low and 1 at the high ``percentiles`` of its own values after the Modality
    LUT, inverted for MONOCHROME1 so that dense is bright in every image; the spec's window then applies in
    those units (center 0.5, width 1 keeps the percentile range as is). The percentiles come from a strided
    subsample of the stored image, computed once on the host, so DALI and the numpy reference get the same
    per-image affine map and agree exactly.
    """

    source: Literal["percentile", "voi"] = "percentile"
    """``percentile``: always the image's own percentiles. ``voi``: the first Window Center/Width (PS3.3
    C.11.2.1.2, linear) when present, else the percentiles. Vendor windows are often the full stored range
    (pydicom's RG1 chest CR: 15000/30000), so percentiles are the robust default."""
    percentiles: tuple[float, float] = (1.0, 99.0)
    """Low and high percentile of the stored values mapped to 0 and 1."""
    invert_monochrome1: bool = True
    """Map MONOCHROME1 images so that dense is bright, as in MONOCHROME2."""
    max_samples: int = Field(default=262_144, ge=1024)
    """The percentiles are taken on a strided subsample of at most about this many pixels."""

    @model_validator(mode="after")
    def _ordered(self) -> Radiograph:
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        return self


class PreprocessSpec(_Spec):
    """A model's preprocessing parameters (``preprocess.json``)."""

    description: str = ""
    window: Window = Field(default_factory=Window)
    """The one window of a single-channel model (ignored when ``windows`` is given)."""
    windows: tuple[Window, ...] | None = Field(default=None, min_length=1)
    """One window per input channel, in channel order (multi-window models)."""
    size: tuple[int, int] = (256, 256)
    """Output (rows, columns)."""
    interpolation: Literal["linear"] = "linear"
    normalize: Normalize = Field(default_factory=Normalize)
    radiograph: Radiograph | None = None
    """Projection radiographs: windows apply to per-image normalised units (:class:`Radiograph`) instead of
    the Modality LUT's output (HU)."""
    neighbours: int = Field(default=0, ge=0, le=8)
    """2.5-D input: this many slices above and below each slice join its channels (:func:`stack_neighbours`)."""

    @model_validator(mode="after")
    def _one_window_key(self) -> PreprocessSpec:
        if self.windows is not None and "window" in self.model_fields_set:
            raise ValueError("give either 'window' (one channel) or 'windows' (one per channel), not both")
        return self

    @property
    def channel_windows(self) -> tuple[Window, ...]:
        """The window of each input channel, in order."""
        return self.windows if self.windows is not None else (self.window,)

    @property
    def slice_channels(self) -> int:
        """Channels computed from one image (one per window): what :func:`preprocess_numpy` and DALI return."""
        return len(self.channel_windows)

    @property
    def channels(self) -> int:
        """Number of input channels C of the model's ``[N, C, rows, cols]`` tensor (windows x slices stacked)."""
        return self.slice_channels * (2 * self.neighbours + 1)


def read_spec(path: str | Path) -> PreprocessSpec:
    """Read and validate one ``preprocess.json``.

    Raises
    ------
    ConfigError
        The file is missing or not a valid spec; the message names the file and the key.
    """
    path = Path(path)
    try:
        return PreprocessSpec.model_validate(json.loads(path.read_text()))
    except OSError as exc:
        raise ConfigError(f"cannot read preprocessing spec {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"preprocessing spec {path} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid preprocessing spec {path}: {problems}") from None


def load_spec(model_repository: str | Path, model: ModelRef | str, version: int | None = None) -> PreprocessSpec:
    """The preprocessing spec of a model in a Triton-layout model repository.

    Parameters
    ----------
    model_repository : str or Path
        Root of the repository.
    model : ModelRef or str
        The model (name and pinned version) or just its name.
    version : int, optional
        Version folder to look in first (default: the ModelRef's version).

    Returns
    -------
    PreprocessSpec
        ``<repo>/<name>/<version>/preprocess.json`` if present, else ``<repo>/<name>/preprocess.json``.
    """
    name = model.name if isinstance(model, ModelRef) else model
    if version is None and isinstance(model, ModelRef):
        version = model.version
    return read_spec(version_file(Path(model_repository) / name, version, SPEC_FILE))


def rescale_of(header: Any) -> tuple[float, float]:
    """(slope, intercept) of the Modality LUT of an image header; (1, 0) when absent or malformed."""
    try:
        slope = float(header.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        return 1.0, 0.0
    return slope, intercept


def _voi_window(header: Any) -> tuple[float, float] | None:
    """(low, high) of the first linear VOI window (PS3.3 C.11.2.1.2.1), or None when absent or unusable."""
    try:
        center, width = header.get("WindowCenter"), header.get("WindowWidth")
        if center is None or width is None:
            return None
        # Multi-valued windows are alternatives for the viewer; the first is the sender's default.
        center = float(center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center)
        width = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(center) and np.isfinite(width)) or width < 2.0:
        return None
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def radiograph_rescale(pixels: np.ndarray, header: Any, spec: Radiograph) -> tuple[float, float]:
    """(slope, intercept) mapping a radiograph's stored values to normalised units (see :class:`Radiograph`).

    Parameters
    ----------
    pixels : numpy.ndarray
        The stored 2-D image (before any LUT).
    header : pydicom.Dataset or mapping
        Photometric Interpretation, Rescale Slope/Intercept and, for ``source="voi"``, Window Center/Width.
    spec : Radiograph
        Percentiles, window source and MONOCHROME1 handling.

    Returns
    -------
    tuple of float
        ``(a, b)`` such that ``a * stored + b`` is 0 at the low and 1 at the high end (dense = bright); used in
        place of the Modality LUT's (slope, intercept) by both preprocessing backends.
    """
    slope, intercept = rescale_of(header)
    window = _voi_window(header) if spec.source == "voi" else None
    if window is None:
        step = max(1, math.ceil(math.sqrt(pixels.size / spec.max_samples)))
        sample = np.asarray(pixels[::step, ::step], dtype=np.float64) * slope + intercept
        low, high = (float(v) for v in np.percentile(sample, spec.percentiles))
    else:
        low, high = window
    # A flat image has no range: any positive span keeps the map finite (the domain check judges the content).
    span = max(high - low, 1e-6 * max(abs(high), 1.0), 1e-12)
    invert = spec.invert_monochrome1 and str(header.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if invert:
        return -slope / span, (high - intercept) / span
    return slope / span, (intercept - low) / span


# ---------------------------------------------------------------- numpy reference


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resampling with half-pixel centres, clamped at the border."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _resize_linear(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    r0, r1, fr = _linear_taps(image.shape[0], rows)
    c0, c1, fc = _linear_taps(image.shape[1], cols)
    tmp = image[r0] * (1 - fr)[:, None] + image[r1] * fr[:, None]
    out: np.ndarray = tmp[:, c0] * (1 - fc) + tmp[:, c1] * fc
    return out


def preprocess_numpy(
    images: Sequence[np.ndarray], rescale: Sequence[tuple[float, float]], spec: PreprocessSpec
) -> np.ndarray:
    """The numpy reference of the preprocessing (also what the training script uses).

    Parameters
    ----------
    images : sequence of numpy.ndarray
        2-D stored-value images, any size and integer/float dtype.
    rescale : sequence of (float, float)
        (slope, intercept) per image.
    spec : PreprocessSpec
        Windows (channels), output size and normalisation.

    Returns
    -------
    numpy.ndarray
        float32 ``[N, C, rows, cols]``, C = ``spec.slice_channels`` (one per window; see :func:`stack_neighbours`).
    """
    rows, cols = spec.size
    out = np.empty((len(images), spec.slice_channels, rows, cols), dtype=np.float32)
    mean, std = np.float32(spec.normalize.mean), np.float32(spec.normalize.std)
    for n, (image, (a, b)) in enumerate(zip(images, _window_affine(rescale, spec), strict=True)):
        resized = _resize_linear(image.astype(np.float32), rows, cols)
        for c in range(spec.slice_channels):
            windowed = np.clip(resized * a[c] + b[c], np.float32(0.0), np.float32(1.0))
            out[n, c] = (windowed - mean) / std
    return out


def _window_affine(
    rescale: Sequence[tuple[float, float]], spec: PreprocessSpec
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image (a, b), float32 vectors of one value per channel: ``window_c(rescale(v)) = clip(a_c v + b_c, 0, 1)``."""
    lows = np.array([w.center - w.width / 2 for w in spec.channel_windows], dtype=np.float64)
    widths = np.array([w.width for w in spec.channel_windows], dtype=np.float64)
    return [((slope / widths).astype(np.float32), ((intercept - lows) / widths).astype(np.float32))
            for slope, intercept in rescale]


# ---------------------------------------------------------------- DALI


@functools.cache
def gpu_available() -> bool:
    """Whether DALI sees a CUDA device (False on machines without a driver, never raises; asked once)."""
    try:
        from nvidia.dali import backend as dali_backend

        # GetCUDADeviceCount is provided by backend_impl at run time but missing from DALI's stubs.
        return int(dali_backend.GetCUDADeviceCount()) > 0  # type: ignore[attr-defined]
    except (ImportError, RuntimeError, OSError):
        return False


def build_pipeline(
    spec: PreprocessSpec,
    *,
    device: Literal["cpu", "gpu"] = "cpu",
    batch_size: int = MAX_BATCH,
    num_threads: int = 1,
    input_dtype: str = "int16",
) -> Any:
    """A built DALI pipeline computing the spec's steps (the graph a Triton dali_backend model can serialise).

    Inputs (``feed_input``): ``raw`` HWC images (C = 1) of ``input_dtype``, ``scale`` and ``offset`` float32
    vectors of one value per channel and sample (the folded rescale + window, see :func:`_window_affine`), which
    broadcast against the single stored channel. Output: float32 CHW ``[C, rows, cols]`` per sample.
    """
    import nvidia.dali as dali
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali.data_node import DataNode

    rows, cols = spec.size
    mean, std = spec.normalize.mean, spec.normalize.std
    # The DALIDataType members are the very objects DALI also exposes as types.INT16 etc. (which its
    # stubs do not declare).
    dtypes = {"int16": types.DALIDataType.INT16, "uint16": types.DALIDataType.UINT16,
              "uint8": types.DALIDataType.UINT8, "float32": types.DALIDataType.FLOAT}

    # DALI documents device_id=None (a CPU-only pipeline); its stub declares int.
    @dali.pipeline_def(
        batch_size=batch_size, num_threads=num_threads, device_id=0 if device == "gpu" else None,  # type: ignore[arg-type]
        # Synchronous, one iteration in flight: each call feeds one batch and reads it back.
        exec_async=False, exec_pipelined=False, prefetch_queue_depth=1,
    )
    def _pipeline() -> DataNode:
        raw = fn.external_source(name="raw", layout="HWC", dtype=dtypes[input_dtype])
        # Shape (1, 1, C): multiplying the (H, W, 1) resized image broadcasts it to one channel per window.
        scale = fn.external_source(name="scale", dtype=types.DALIDataType.FLOAT, ndim=3)
        offset = fn.external_source(name="offset", dtype=types.DALIDataType.FLOAT, ndim=3)
        if device == "gpu":
            raw, scale, offset = raw.gpu(), scale.gpu(), offset.gpu()
        resized = fn.resize(raw, resize_x=cols, resize_y=rows, interp_type=types.DALIInterpType.INTERP_LINEAR,
                            antialias=False, dtype=types.DALIDataType.FLOAT)
        out = dali.math.clamp(resized * scale + offset, 0.0, 1.0)
        if (mean, std) != (0.0, 1.0):
            out = (out - mean) / std
        return fn.transpose(out, perm=[2, 0, 1])

    pipe = _pipeline()
    pipe.build()
    return pipe


_pipelines: dict[tuple[PreprocessSpec, str, str], tuple[threading.Lock, Any]] = {}
_pipelines_lock = threading.Lock()


def _cached_pipeline(spec: PreprocessSpec, device: Literal["cpu", "gpu"], input_dtype: str
                     ) -> tuple[threading.Lock, Any]:
    # Building a pipeline costs ~100 ms; one per (spec, device, dtype) lives for the process.
    key = (spec, device, input_dtype)
    with _pipelines_lock:
        if key not in _pipelines:
            _pipelines[key] = (threading.Lock(), build_pipeline(spec, device=device, input_dtype=input_dtype))
        return _pipelines[key]


def _resolve_device(device: Device) -> Literal["cpu", "gpu"]:
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise InferenceError("preprocessing device 'gpu' requested but DALI sees no CUDA device; use 'cpu' or 'auto'")
    return device


def preprocess_dali(
    images: Sequence[np.ndarray],
    rescale: Sequence[tuple[float, float]],
    spec: PreprocessSpec,
    *,
    device: Device = "auto",
) -> np.ndarray:
    """The DALI implementation of :func:`preprocess_numpy` (same arguments and result).

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"}
        Where DALI runs the stages; ``auto`` picks the GPU when DALI sees one.
    """
    if len(images) != len(rescale):
        raise ValueError(f"{len(images)} images but {len(rescale)} rescale pairs")
    rows, cols = spec.size
    if not images:
        return np.empty((0, spec.slice_channels, rows, cols), dtype=np.float32)
    where = _resolve_device(device)
    dtypes = {np.dtype(im.dtype).name for im in images}
    # One dtype per batch: native int16 (CT) goes in as is; anything else as float32 (exact for <= 24-bit ints).
    input_dtype = dtypes.pop() if len(dtypes) == 1 and dtypes <= {"int16", "uint16", "uint8", "float32"} else "float32"
    lock, pipe = _cached_pipeline(spec, where, input_dtype)
    out = np.empty((len(images), spec.slice_channels, rows, cols), dtype=np.float32)
    with lock:  # a DALI pipeline is not thread-safe; feeding and running must pair up
        for start in range(0, len(images), MAX_BATCH):
            chunk = images[start:start + MAX_BATCH]
            pipe.feed_input("raw", [np.ascontiguousarray(im, dtype=input_dtype)[:, :, None] for im in chunk])
            affine = _window_affine(rescale[start:start + MAX_BATCH], spec)
            pipe.feed_input("scale", [a.reshape(1, 1, -1) for a, _ in affine])
            pipe.feed_input("offset", [b.reshape(1, 1, -1) for _, b in affine])
            (result,) = pipe.run()
            if where == "gpu":
                result = result.as_cpu()
            out[start:start + len(chunk)] = result.as_array()
    return out


def stack_neighbours(batch: np.ndarray, neighbours: int) -> np.ndarray:
    """The 2.5-D input: each slice's window channels together with those of its neighbours in the series.

    Parameters
    ----------
    batch : numpy.ndarray
        ``[N, W, rows, cols]`` per-slice channels of one series in its sorted order (W windows).
    neighbours : int
        n: slices taken on each side.

    Returns
    -------
    numpy.ndarray
        ``[N, W * (2n + 1), rows, cols]``: for slice k the channels of slices k - n, ..., k, ..., k + n in that
        order (all windows of one slice together), index clamped to the series (the end slices repeat). With
        n = 0 the batch itself.
    """
    if neighbours == 0:
        return batch
    if len(batch) == 0:
        return np.empty((0, batch.shape[1] * (2 * neighbours + 1), *batch.shape[2:]), dtype=batch.dtype)
    index = np.clip(np.arange(len(batch))[:, None] + np.arange(-neighbours, neighbours + 1)[None, :], 0, len(batch) - 1)
    stacked: np.ndarray = batch[index].reshape(len(batch), -1, *batch.shape[2:])
    return stacked


def preprocess_series(
    series: domain.Series, spec: PreprocessSpec, backend: Backend = "dali", *, device: Device = "auto"
) -> np.ndarray:
    """Preprocess the slices of a series (in their sorted order) into the model's input batch.

    Parameters
    ----------
    series : domain.Series
        Decoded slices of any matrix size; Rescale Slope/Intercept read from each slice's header.
    spec : PreprocessSpec
        The model's spec (:func:`load_spec`).
    backend : {"dali", "numpy"}
        DALI pipeline (production) or the numpy reference.
    device : {"auto", "cpu", "gpu"}
        DALI device (ignored by the numpy backend).

    Returns
    -------
    numpy.ndarray
        float32 ``[N, C, rows, cols]``, N = number of slices, C = ``spec.channels`` (with ``neighbours``, each
        slice's windows and its neighbours', :func:`stack_neighbours`).
    """
    images = [s.pixels for s in series.slices]
    if spec.radiograph is None:
        rescale = [rescale_of(s.header) for s in series.slices]
    else:
        rescale = [radiograph_rescale(s.pixels, s.header, spec.radiograph) for s in series.slices]
    if backend == "numpy":
        return stack_neighbours(preprocess_numpy(images, rescale, spec), spec.neighbours)
    if backend == "dali":
        return stack_neighbours(preprocess_dali(images, rescale, spec, device=device), spec.neighbours)
    raise ValueError(f"unknown preprocessing backend {backend!r}; use 'dali' or 'numpy'")
