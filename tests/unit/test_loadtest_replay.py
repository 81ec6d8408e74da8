"""bench.loadtest replays template studies by byte substitution: every identifier is new, nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pydicom

from bench import loadtest


def test_a_replayed_study_carries_new_identifiers_everywhere_and_the_same_pixels(tmp_path: Path):
    template = loadtest._write("mr", tmp_path / "mr", loadtest._mr(3))
    out = tmp_path / "out"
    out.mkdir()
    paths, study_uid, instances = loadtest._replay(template, 42, out)

    assert study_uid == f"{loadtest.ROOT}.100000000042.1"
    assert len(paths) == len(template.paths) == 6
    seen = []
    for path, source, listed in zip(paths, template.paths, instances, strict=True):
        data = path.read_bytes()
        assert loadtest.TOKEN.encode() not in data and loadtest.ACC_TOKEN.encode() not in data
        ds, before = pydicom.dcmread(path), pydicom.dcmread(source)
        assert ds.StudyInstanceUID == study_uid
        assert ds.SeriesInstanceUID.startswith(f"{loadtest.ROOT}.100000000042.2.")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.AccessionNumber, ds.PatientID) == ("LT000000000042", "LP000000000042")
        assert listed == (ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID)  # what the MPPS lists
        assert ds.PixelData == before.PixelData
        seen.append(ds.SOPInstanceUID)
    assert len(set(seen)) == len(seen)
    # Another number gives other identifiers (no two replayed studies share a UID).
    other = tmp_path / "other"
    other.mkdir()
    assert loadtest._replay(template, 43, other)[1] != study_uid
