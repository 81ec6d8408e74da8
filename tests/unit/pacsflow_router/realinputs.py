"""Shared builders for the real-input tests (multi-frame, character sets, partial studies, de-identified sources).

Phantom studies written to disk as a scanner would send them, then loaded by the router's own
:func:`pacsflow_router.analysis.volume.load_study`, so every test goes through the real decoding path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pacsflow_router import domain
from pacsflow_router.analysis import volume
from pacsflow_router.analysis.findings import summarize
from pacsflow_router.config import UseCase
from pacsflow_router.models import phantom
from pacsflow_router.results.reports import ReportSpec, build_sr
from tests.peers.srcheck import check_sr
from tests.peers.srcontent import walk

USE_CASE = UseCase.model_validate({
    "name": "ich-head-ct", "model": {"name": "ich_detector", "version": 1}, "mode": "assistive",
})
SPEC = ReportSpec(
    finding_type=Code("1386000", "SCT", "Intracranial hemorrhage"),
    procedure=Code("303653007", "SCT", "Computed tomography of head"),
    present_statement="Intracranial hemorrhage suspected.", absent_statement="No intracranial hemorrhage detected.",
)


def phantom_datasets(seed: int, *, lesion: bool = True, slices: int = 8, size: int = 64
                     ) -> tuple[list[Dataset], phantom.GroundTruth]:
    """A small phantom head CT series (single-frame CT Image Storage) and its ground truth."""
    return phantom.generate_study(seed, lesion=lesion, slices=slices, rows=size, cols=size)


def write(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Each dataset as a PS3.10 file in ``folder`` (what the spool holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def legacy_converted(datasets: Sequence[Dataset]) -> hd.legacy.LegacyConvertedEnhancedCTImage:
    """The single-frame series as one Legacy Converted Enhanced CT instance (highdicom's converter)."""
    return hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=list(datasets), series_instance_uid=generate_uid(), series_number=77,
        sop_instance_uid=generate_uid(), instance_number=1,
    )


def load(paths: Sequence[Path], study_uid: str) -> domain.Study:
    """The router's own loading of spooled files."""
    return volume.load_study(domain.StudyRef(study_uid, domain.study_key(study_uid), tuple(map(str, paths)), 0.0))


def result_for(finding: domain.Finding) -> domain.StudyResult:
    """A use-case result around ``finding``."""
    return domain.StudyResult(use_case=USE_CASE.name, model_name="ich_detector", model_version=1,
                              finding=finding, critical=False, timings={})


def output_at(series: domain.Series, index: int, row: float, col: float) -> domain.ModelOutput:
    """A model output that points at (row, col) pixels on image ``index``, as a correct model would."""
    n = len(series.slices)
    probability = np.full(n, 0.01)
    probability[index] = 0.97
    location = np.full((n, 2), 0.5)
    rows, cols = series.slices[index].pixels.shape
    location[index] = (row / rows, col / cols)
    return domain.ModelOutput(probability=probability, location=location)


def finding_at(series: domain.Series, index: int, row: float, col: float) -> domain.Finding:
    """The finding a correct model pointing at (row, col) on image ``index`` gives (no critical threshold)."""
    return summarize(series, output_at(series, index, row, col), critical_threshold=None)


def report(study: domain.Study, finding: domain.Finding, *, spec: ReportSpec = SPEC) -> Dataset:
    """The SR the router builds for ``finding`` on ``study`` (:data:`USE_CASE`, software version 0.1.0)."""
    return build_sr(study, result_for(finding), USE_CASE, software_version="0.1.0", spec=spec)


def saved(sr: Dataset, path: Path) -> Dataset:
    """Write ``sr`` as a PS3.10 file and read it back."""
    sr.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def valid(sr: Dataset, path: Path) -> Dataset:
    """Write ``sr`` to ``path``, require dciodvfy and dsrdump to report no error on it, and read it back."""
    reread = saved(sr, path)
    check = check_sr(path)
    assert check.ok, check.errors
    return reread


def items(sr: Dataset, value_type: str) -> list[Dataset]:
    """Content items of one value type."""
    return [i for i in walk(sr.ContentSequence) if i.ValueType == value_type]
