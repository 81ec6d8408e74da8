"""Fuzzing the DICOM parse path with hypothesis: the spool's indexing of a received instance's header
(``ingest.spool.parse_index_attributes``) and pixel decoding (``analysis.volume.load_study``).

Inputs are raw bytes, byte-level mutations of real files (pydicom's test files: uncompressed little and big endian,
RLE, JPEG baseline, JPEG-LS, JPEG 2000, multi-frame) and real files whose Image Pixel module was rewritten
(rows, columns, bits, samples, photometric interpretation, frames). The documented outcomes are the only allowed
ones: the header gives the index attributes or raises UnparseableInstanceError (the SCP answers 0xC000, nothing is
stored); a study that got into the spool gives a Study or raises UnparseableInstanceError (the study is finished
with an audited error). Any other exception is a crash. Every crasher found is in ``CRASHERS`` with its input as
bytes.
"""

from __future__ import annotations

import tempfile
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from pacsflow_router import domain
from pacsflow_router.analysis.volume import load_study
from pacsflow_router.errors import UnparseableInstanceError
from pacsflow_router.ingest.spool import parse_index_attributes
from tests.unit.pacsflow_router.fuzzing import FUZZ, keep_crasher

SEED_NAMES = ("CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_gdcm.dcm",
              "JPEGLSNearLossless_08.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm")


def _seed(name: str) -> bytes:
    """A pydicom test file as a received instance: with the UIDs the spool indexes by (a few files lack them)."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing (pydicom ships it)"
    ds = pydicom.dcmread(path)
    for keyword, uid in (("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1"),
                         ("SeriesInstanceUID", "1.2.826.0.1.3680043.8.498.2"),
                         ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.3")):
        if not ds.get(keyword):
            setattr(ds, keyword, uid)
    buf = BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


SEEDS = [_seed(name) for name in SEED_NAMES]

#: Inputs that once crashed the parse path (regression tests; each was a hypothesis find): (label, bytes).
CRASHERS: list[tuple[str, bytes]] = [
    # ImageOrientationPatient b"\\x00.0\\0.0\\...": sort_slices raised ValueError converting it to float (found by
    # test_mutated_real_files as a flipped byte in CT_small.dcm; minimised to a 2x2 CT). Now: no orientation, sorted by
    # InstanceNumber.
    # A 16-bit 4x4 RLE image whose Rows says 1: pylibjpeg-rle (Rust) panicked, pyo3's PanicException (a
    # BaseException) went past every handler and would have ended the pipeline thread (found by
    # test_rewritten_pixel_modules on MR_small_RLE.dcm with Rows 4). Now: pixel data not decodable, an audited error.
    ("rle-rows-smaller-than-encoded-panics", b"\0" * 128 + bytes.fromhex(
        "4449434d02000000554c0400ce000000020001004f4200000200000000010200020055491a00312e322e3834302e31303030"
        "382e352e312e342e312e312e32000200030055494000312e322e3832362e302e312e333638303034332e382e3439382e3130"
        "3432373332303833393732343131393139383433333531383733343238393638363639310200100055491400312e322e3834"
        "302e31303030382e312e322e35000200120055491c00312e322e3832362e302e312e333638303034332e382e3439382e3100"
        "0200130053480e0050594449434f4d20332e302e32200800160055491a00312e322e3834302e31303030382e352e312e342e"
        "312e312e32000800180055494000312e322e3832362e302e312e333638303034332e382e3439382e31303432373332303833"
        "393732343131393139383433333531383733343238393638363639310800600043530200435420000d0055490600312e322e"
        "330020000e0055490800312e322e332e3500280002005553020001002800040043530c004d4f4e4f4348524f4d4532202800"
        "100055530200010028001100555302000400280000015553020010002800010155530200100028000201555302000f002800"
        "0301555302000000e07f10004f420000fffffffffeff00e00400000000000000feff00e05c00000002000000400000004800"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000fd00fd00fd00fd000300254a6f0394b9de08032d52779c03c1e61035feffdde000000000")),
    # A 2x2 RLE image with NumberOfFrames 2 but one fragment: pydicom's frame generator raised StopIteration (found by
    # test_rewritten_pixel_modules). Now: pixel data not decodable.
    ("rle-more-frames-than-fragments", b"\0" * 128 + bytes.fromhex(
        "4449434d02000000554c0400ce000000020001004f4200000200000000010200020055491a00312e322e3834302e31303030"
        "382e352e312e342e312e312e32000200030055494000312e322e3832362e302e312e333638303034332e382e3439382e3933"
        "3034303336313533303934303830313336343339383837373031353338373237333733370200100055491400312e322e3834"
        "302e31303030382e312e322e35000200120055491c00312e322e3832362e302e312e333638303034332e382e3439382e3100"
        "0200130053480e0050594449434f4d20332e302e32200800160055491a00312e322e3834302e31303030382e352e312e342e"
        "312e312e32000800180055494000312e322e3832362e302e312e333638303034332e382e3439382e39333034303336313533"
        "303934303830313336343339383837373031353338373237333733370800600043530200435420000d0055490600312e322e"
        "330020000e0055490800312e322e332e3500280002005553020001002800040043530c004d4f4e4f4348524f4d4532202800"
        "0800495302003220280010005553020002002800110055530200020028000001555302000800280001015553020008002800"
        "020155530200070028000301555302000000e07f10004f420000fffffffffeff00e00400000000000000feff00e046000000"
        "0100000040000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000010025014a6ffeffdde000000000")),
    # SamplesPerPixel with the VR bytes b"U\\x00": the spool indexes the file (it reads the UIDs only), then pydicom
    # raised NotImplementedError when load_study first touched the element (found by test_mutated_real_files as a VR
    # byte of SOPClassUID in JPEG2000.dcm, then frame_headers). Now: every element is parsed on read, the instance is
    # unreadable, the study an audited error.
    ("unknown-vr-after-the-uids", b"\0" * 128 + bytes.fromhex(
        "4449434d02000000554c040096000000020001004f4200000200000000010200020055491a00312e322e3834302e31303030"
        "382e352e312e342e312e312e32000200030055490800312e322e332e34000200100055491400312e322e3834302e31303030"
        "382e312e322e31000200120055491c00312e322e3832362e302e312e333638303034332e382e3439382e3100020013005348"
        "0e0050594449434f4d20332e302e32200800160055491a00312e322e3834302e31303030382e352e312e342e312e312e3200"
        "0800180055490800312e322e332e34000800600043530200435420000d0055490600312e322e330020000e0055490800312e"
        "322e332e3500280002005500020001002800040043530c004d4f4e4f4348524f4d4532202800080049530200312028001000"
        "55530200020028001100555302000200280000015553020010002800010155530200100028000201555302000f0028000301"
        "555302000000e07f10004f570000080000000000000000000000")),
    ("iop-not-a-number", b"\0" * 128 + bytes.fromhex(
    "4449434d02000000554c040096000000020001004f4200000200000000010200020055491a00312e322e3834302e31303030"
    "382e352e312e342e312e312e32000200030055490800312e322e332e34000200100055491400312e322e3834302e31303030"
    "382e312e322e31000200120055491c00312e322e3832362e302e312e333638303034332e382e3439382e3100020013005348"
    "0e0050594449434f4d20332e302e32200800160055491a00312e322e3834302e31303030382e352e312e342e312e312e3200"
    "0800180055490800312e322e332e34000800600043530200435420000d0055490600312e322e330020000e0055490800312e"
    "322e332e35002000320044530c00302e305c302e305c302e30202000370044531800002e305c302e305c302e305c302e305c"
    "312e305c302e3020280002005553020001002800040043530c004d4f4e4f4348524f4d453220280010005553020002002800"
    "1100555302000200280000015553020010002800010155530200100028000201555302000f0028000301555302000000e07f"
    "10004f570000080000000000000000000000")),
]


def check(raw: bytes) -> None:
    """The contract on one received instance: indexed or refused; once indexed, decoded or an audited error."""
    try:
        _check(raw)
    except BaseException:
        keep_crasher("dicom", raw)
        raise


def _check(raw: bytes) -> None:
    try:
        attrs = parse_index_attributes(raw)
    except UnparseableInstanceError:
        return
    assert all(isinstance(a, str) for a in attrs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instance.dcm"
        path.write_bytes(raw)
        ref = domain.StudyRef(study_uid=attrs[0], key=domain.study_key(attrs[0]), paths=(str(path),),
                              last_received=0.0)
        try:
            study = load_study(ref)
        except UnparseableInstanceError:
            return
        assert isinstance(study, domain.Study)
        for series in study.series:
            for item in series.slices:
                assert item.pixels.ndim == 2


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "flip-header", "insert", "delete", "truncate"]))
        if len(data) < 200:
            op = "insert"  # mutations shrink the file: grow it back rather than index out of range
        if op == "flip-header":  # the file meta and the first elements, where lengths and VRs live
            at = draw(st.integers(128, min(len(data) - 1, 1500)))
            data[at] = draw(st.integers(0, 255))
        elif op == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            at = draw(st.integers(0, len(data) - 1))
            del data[at:at + draw(st.integers(1, 16))]
        else:
            del data[draw(st.integers(min(132, len(data)), len(data))):]
    return bytes(data)


@st.composite
def rewritten_pixel_module(draw: st.DrawFn) -> bytes:
    ds = pydicom.dcmread(BytesIO(draw(st.sampled_from(SEEDS))))
    changes = draw(st.dictionaries(st.sampled_from(
        ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
         "PhotometricInterpretation", "NumberOfFrames", "PlanarConfiguration", "RescaleSlope"]),
        st.none(), max_size=4))
    for keyword in changes:
        if keyword == "PhotometricInterpretation":
            value: object = draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                                                  "PALETTE COLOR", "YBR_ICT", "YBR_RCT", "XYZ"]))
        elif keyword == "NumberOfFrames":
            value = str(draw(st.integers(0, 5)))
        elif keyword == "RescaleSlope":
            value = draw(st.sampled_from(["0", "-1", "1e308", "2"]))
        elif keyword in ("Rows", "Columns"):
            value = draw(st.integers(0, 600))
        elif keyword in ("BitsAllocated", "BitsStored", "HighBit"):
            value = draw(st.sampled_from([0, 1, 7, 8, 12, 15, 16, 17, 31, 32, 64]))
        else:
            value = draw(st.integers(0, 4))
        setattr(ds, keyword, value)
    if draw(st.booleans()) and "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        pixels = bytearray(ds.PixelData)
        del pixels[draw(st.integers(0, len(pixels))):]
        ds.PixelData = bytes(pixels)
    buf = BytesIO()
    ds.save_as(buf)  # as read: the same transfer syntax and encoding
    return buf.getvalue()


@FUZZ
@given(st.binary(max_size=2048))
def test_raw_bytes(raw):
    check(b"\0" * 128 + b"DICM" + raw)
    check(raw)


@FUZZ
@given(mutated())
def test_mutated_real_files(raw):
    check(raw)


@FUZZ
@given(rewritten_pixel_module())
def test_rewritten_pixel_modules(raw):
    check(raw)


@pytest.mark.parametrize("raw", [pytest.param(raw, id=label) for label, raw in CRASHERS]
                         or [pytest.param(b"", id="none-yet")])
def test_crashers_stay_fixed(raw):
    check(raw)


def test_the_seeds_decode():
    """The fuzzer starts from files that decode (else the mutations only test the refusal paths)."""
    for name, raw in zip(SEED_NAMES, SEEDS, strict=True):
        attrs = parse_index_attributes(raw)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "seed.dcm"
            path.write_bytes(raw)
            study = load_study(domain.StudyRef(attrs[0], "k", (str(path),), 0.0))
        assert any(s.slices for s in study.series), name
