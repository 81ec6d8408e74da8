"""ingest.part10: the receiver's own Part-10 header is pynetdicom's byte for byte, and the early-stopping index read
agrees with the full one on every transfer syntax the receiver accepts, sequences included; bad data is refused."""

from __future__ import annotations

import copy
import random
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from pacsflow_router.errors import UnparseableInstanceError
from pacsflow_router.ingest.part10 import file_header, index_attributes
from pacsflow_router.ingest.spool import parse_index_attributes
from pacsflow_router.models import phantom


@pytest.fixture(scope="module")
def slice_ds() -> Dataset:
    datasets, _ = phantom.generate_study(11, lesion=False, slices=1, rows=16, cols=16)
    ds = datasets[0]
    # Undefined-length sequences in group 0008, before the study/series UIDs, nested one level: the read must skip
    # them item by item and still find what comes after.
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    item.SeriesInstanceUID = "9.9.9"  # a (0020,000E) inside an item must not be taken for the top-level one
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D1100", "SRT", "Head"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, copy.deepcopy(item)])
    ds.ProcedureCodeSequence = Sequence([copy.deepcopy(inner)])
    return ds


def _dataset_bytes(ds: Dataset, ts: str) -> tuple[bytes, bytes]:
    """(data set as it travels in the C-STORE, the whole Part-10 file) in transfer syntax ``ts``."""
    ds = copy.deepcopy(ds)
    if ts == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = ts
    for seq in ("ReferencedImageSequence", "ProcedureCodeSequence"):
        ds[seq].is_undefined_length = True
        for item in ds[seq].value:
            item.is_undefined_length_sequence_item = True
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    whole = buf.getvalue()
    meta_end = BytesIO(whole)
    pydicom.filereader.read_preamble(meta_end, False)
    pydicom.filereader._read_file_meta_info(meta_end)
    return whole[meta_end.tell():], whole


@pytest.mark.parametrize("sop_instance_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498." + "1" * 37])
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_file_header_is_pynetdicoms_byte_for_byte(sop_instance_uid, ts):
    ct = "1.2.840.10008.5.1.4.1.1.2"
    expected = b"\0" * 128 + b"DICM" + encode_file_meta(create_file_meta(
        sop_class_uid=ct, sop_instance_uid=sop_instance_uid, transfer_syntax=ts))
    ours = file_header(ct, sop_instance_uid, ts, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION)
    assert ours == expected
    meta_stream = BytesIO(ours)
    pydicom.filereader.read_preamble(meta_stream, False)
    meta = pydicom.filereader._read_file_meta_info(meta_stream)
    assert meta_stream.tell() == len(ours)
    assert meta.MediaStorageSOPInstanceUID == sop_instance_uid
    assert meta.TransferSyntaxUID == ts


def test_file_header_refuses_a_non_ascii_uid():
    with pytest.raises(UnparseableInstanceError):
        file_header("1.2.840.10008.5.1.4.1.1.2", "1.2.\u00e9", ExplicitVRLittleEndian, "1.2", "X")


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                DeflatedExplicitVRLittleEndian, RLELossless])
def test_index_attributes_agree_with_the_full_read(slice_ds, ts):
    dataset, whole = _dataset_bytes(slice_ds, ts)
    header = whole[:len(whole) - len(dataset)]
    assert index_attributes(memoryview(dataset), ts, header) == parse_index_attributes(whole)
    assert index_attributes(dataset, ts, header) == (
        slice_ds.StudyInstanceUID, slice_ds.SeriesInstanceUID, slice_ds.SOPInstanceUID, "CT")


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_index_attributes_refuse_garbage_and_missing_uids(slice_ds, ts):
    rng = random.Random(ts)
    for garbage in [b"", b"\x08\x00\x18\x00UI\xff\xff" + b"1" * 10, *(rng.randbytes(300) for _ in range(20))]:
        with pytest.raises(UnparseableInstanceError):
            index_attributes(garbage, ts, b"\0" * 128 + b"DICM")
    ds = copy.deepcopy(slice_ds)
    del ds.SeriesInstanceUID
    dataset, _ = _dataset_bytes(ds, ExplicitVRLittleEndian)
    with pytest.raises(UnparseableInstanceError, match="SeriesInstanceUID"):
        index_attributes(dataset, ExplicitVRLittleEndian)
