"""The finding of a 2D radiograph: one image, a point on it, no patient point (projection images have none)."""

from __future__ import annotations

import numpy as np
import pytest

from pacsflow_router import domain
from pacsflow_router.analysis import findings
from pacsflow_router.models import radiograph_phantom as rp


@pytest.mark.parametrize(("rows", "cols"), [(512, 512), (2048, 1680)])
def test_one_image_finding_maps_the_location_onto_the_stored_matrix(rows, cols):
    ds = rp.generate_radiograph(1, pneumothorax=False, rows=rows, cols=cols).dataset
    series = domain.Series("1.2.3", "DX", "CHEST", "Chest PA", [domain.Slice(header=ds, pixels=ds.pixel_array)])
    output = domain.ModelOutput(probability=np.array([0.9], np.float32), location=np.array([[0.25, 0.75]], np.float32))
    finding = findings.summarize(series, output, critical_threshold=0.85)
    assert finding.slice_index == 0 and finding.probability == pytest.approx(0.9)
    assert finding.pixel_point == pytest.approx((0.75 * cols, 0.25 * rows))
    assert finding.sop_instance_uid == ds.SOPInstanceUID and finding.sop_class_uid == ds.SOPClassUID
    # A projection radiograph has neither Image Position/Orientation (Patient) nor a frame of reference.
    assert finding.patient_point is None and finding.frame_of_reference_uid is None
