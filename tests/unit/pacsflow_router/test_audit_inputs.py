"""The audit record says how many images were analysed of how many and which instances were skipped (no UIDs)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from pacsflow_router import domain
from pacsflow_router.results.audit import AuditLog


def test_series_inputs_are_recorded_with_hashed_instance_keys():
    header = Dataset()
    series = domain.Series("1.2.3", "CT", "HEAD", "", [domain.Slice(header, np.zeros((2, 2)))] * 5,
                           skipped=[domain.SkippedInstance("1.2.3.4.5", "pixel data not decodable")], missing=2)
    audit = AuditLog("sqlite://")
    try:
        audit.record_result(study_key="k", use_case="ich", mode="assistive", model_name="m", model_version=1,
                            probability=0.1, critical=False, outcome="reported", timings={}, inputs=series.inputs())
        (record,) = audit.records(study_key="k")
    finally:
        audit.close()
    assert record["inputs"] == {
        "analysed": 5, "expected": 8, "missing": 2,
        "skipped": [{"instance": domain.study_key("1.2.3.4.5"), "reason": "pixel data not decodable", "images": 1}],
    }
    assert "1.2.3.4.5" not in str(record)
