"""A study the router cannot decode gets an audited error and never blocks the studies behind it."""

from __future__ import annotations

import pytest

from pacsflow_router.models import phantom
from tests.e2e.conftest import audit_records, metric_value, wait_for
from tests.peers.dcmtk import storescu
from tests.peers.router import use_case

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_undecodable_pixel_data_is_audited_and_the_next_study_still_gets_its_sr(pacs, make_router, studies,
                                                                                  tmp_path):
    router = make_router([use_case("ich", "assistive")], pacs_port=pacs.dicom_port).start()
    datasets, bad = phantom.generate_study(51, lesion=True, slices=4, rows=128, cols=128)
    paths = []
    for i, ds in enumerate(datasets):
        # The header parses, so the instance is acknowledged; the pixel data is a fraction of what Rows x Columns
        # needs, so it never decodes (what a broken modality or a truncated transfer produces).
        ds.PixelData = ds.PixelData[:1000]
        path = tmp_path / f"bad{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    assert len(storescu(router.port, paths).acknowledged) == len(paths), "acknowledged: it must not be lost"

    good_paths, good = studies(52, lesion=True)
    assert len(storescu(router.port, good_paths).acknowledged) == len(good_paths)
    wait_for(lambda: pacs.instances(modality="SR", study_uid=good.study_instance_uid), 120,
             "the good study's SR", router)
    records = wait_for(lambda: audit_records(router, bad), 120, "the bad study's audited error", router)
    assert len(records) == 1 and records[0]["outcome"].startswith("error:")
    assert records[0]["probability"] is None
    assert pacs.instances(modality="SR", study_uid=bad.study_instance_uid) == []
    assert metric_value(router, "pacsflow_studies_processed_total", use_case="ich", outcome="error") == 1
