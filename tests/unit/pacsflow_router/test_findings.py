"""findings.summarize: the most likely slice, its point in the original matrix and in the patient."""

import numpy as np
import pytest

from pacsflow_router import domain
from pacsflow_router.analysis import findings
from pacsflow_router.errors import InferenceError
from pacsflow_router.models import phantom


def _series(seed=41, rows=200, cols=160, slices=6, lesion=True):
    datasets, truth = phantom.generate_study(seed, lesion=lesion, slices=slices, rows=rows, cols=cols)
    series = domain.Series(truth.series_instance_uid, "CT", "HEAD", "Head non-con",
                           [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])
    return series, truth


def _output(n, k, p, loc):
    probability = np.full(n, 0.01, dtype=np.float32)
    probability[k] = p
    location = np.full((n, 2), 0.5, dtype=np.float32)
    location[k] = loc
    return domain.ModelOutput(probability, location)


def test_picks_the_most_likely_slice_and_maps_the_location_onto_the_original_matrix():
    series, _ = _series()
    finding = findings.summarize(series, _output(6, 4, 0.93, (0.25, 0.75)), critical_threshold=0.85)
    header = series.slices[4].header
    assert finding.slice_index == 4
    assert finding.probability == pytest.approx(0.93)
    assert finding.sop_instance_uid == header.SOPInstanceUID
    assert finding.sop_class_uid == header.SOPClassUID
    assert finding.series_uid == series.series_uid
    assert finding.frame_of_reference_uid == header.FrameOfReferenceUID
    # (column, row) in SCOORD image coordinates of the 200 x 160 original, not the model's 256 x 256.
    assert finding.pixel_point == pytest.approx((0.75 * 160, 0.25 * 200))


def test_patient_point_of_a_true_lesion_centre_is_the_lesion_centre():
    series, truth = _series(seed=42, lesion=True, slices=12)
    lesion = truth.lesions[0]
    k = lesion.slice_indices[len(lesion.slice_indices) // 2]
    row, col = lesion.pixel_centre
    loc = ((row + 0.5) / truth.rows, (col + 0.5) / truth.cols)
    finding = findings.summarize(series, _output(12, k, 0.9, loc), critical_threshold=None)
    x, y, z = finding.patient_point
    assert (x, y) == pytest.approx(lesion.centre_mm[:2], abs=0.01)
    assert z == pytest.approx(float(series.slices[k].header.ImagePositionPatient[2]))


def test_patient_point_follows_an_oblique_orientation():
    series, _ = _series(slices=1)
    header = series.slices[0].header
    # Rows run along -y, columns along +x (a 90 degree in-plane rotation).
    header.ImageOrientationPatient = ["0", "-1", "0", "1", "0", "0"]
    header.ImagePositionPatient = ["10", "20", "30"]
    header.PixelSpacing = ["2", "3"]  # 2 mm between rows, 3 mm between columns
    point = findings.pixel_to_patient(header, column=10.5, row=4.5)
    assert point == pytest.approx((10 + 2 * 4, 20 - 3 * 10, 30))


def test_missing_geometry_gives_no_patient_point_but_a_pixel_point():
    series, _ = _series(slices=2)
    for s in series.slices:
        del s.header.ImagePositionPatient
        del s.header.FrameOfReferenceUID
    finding = findings.summarize(series, _output(2, 1, 0.5, (0.5, 0.5)), critical_threshold=0.85)
    assert finding.patient_point is None and finding.frame_of_reference_uid is None
    assert finding.pixel_point == pytest.approx((80.0, 100.0))


def test_nan_probabilities_are_ignored_and_locations_clipped_into_the_image():
    series, _ = _series(slices=3)
    output = domain.ModelOutput(np.array([np.nan, 0.2, 0.1], np.float32),
                                np.array([[0.5, 0.5], [1.7, -0.2], [0.5, 0.5]], np.float32))
    finding = findings.summarize(series, output, critical_threshold=None)
    assert finding.slice_index == 1
    assert finding.pixel_point == (0.0, 200.0)


def test_output_that_does_not_match_the_series_is_an_inference_error():
    series, _ = _series(slices=3)
    with pytest.raises(InferenceError, match="for a series of 3 slices"):
        findings.summarize(series, _output(2, 0, 0.5, (0.5, 0.5)), critical_threshold=None)
    all_nan = domain.ModelOutput(np.full(3, np.nan, np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(InferenceError, match="no finite probability"):
        findings.summarize(series, all_nan, critical_threshold=None)
    with pytest.raises(ValueError, match="critical_threshold"):
        findings.summarize(series, _output(3, 0, 0.5, (0.5, 0.5)), critical_threshold=1.5)


def test_slice_weights_take_the_most_likely_neighbourhood():
    """model.json output.sliceWeights: a lone bright slice counts with its neighbours' evidence."""
    series, _ = _series(slices=6)
    probability = np.array([0.1, 0.9, 0.1, 0.6, 0.7, 0.6], dtype=np.float32)
    output = domain.ModelOutput(probability, np.full((6, 2), 0.5, dtype=np.float32))
    plain = findings.summarize(series, output, critical_threshold=None)
    assert (plain.slice_index, plain.probability) == (1, pytest.approx(0.9))
    smoothed = findings.summarize(series, output, critical_threshold=None, slice_weights=[0.25, 0.5, 0.25])
    # slice 1: 0.25 * 0.1 + 0.5 * 0.9 + 0.25 * 0.1 = 0.5; slice 4: 0.25 * 0.6 + 0.5 * 0.7 + 0.25 * 0.6 = 0.65
    assert (smoothed.slice_index, smoothed.probability) == (4, pytest.approx(0.65))
    # The series' end slices repeat: slice 5 is 0.25 * 0.7 + 0.75 * 0.6 (slice 4: 0.5).
    end = domain.ModelOutput(np.array([0, 0, 0, 0, 0.7, 0.6], dtype=np.float32), output.location)
    last = findings.summarize(series, end, critical_threshold=None, slice_weights=[0.25, 0.5, 0.25])
    assert (last.slice_index, last.probability) == (5, pytest.approx(0.625))
    assert findings.summarize(series, output, critical_threshold=None, slice_weights=[1.0]).probability \
        == pytest.approx(0.9)


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.3, 0.3, 0.3], [-0.25, 1.5, -0.25], []])
def test_slice_weights_in_the_manifest_must_be_a_centred_mean(weights):
    from pydantic import ValidationError

    from pacsflow_router.analysis.manifest import OutputSpec

    assert OutputSpec.model_validate({"sliceWeights": [0.25, 0.5, 0.25]}).slice_weights == [0.25, 0.5, 0.25]
    with pytest.raises(ValidationError, match="slice_weights|sliceWeights"):
        OutputSpec.model_validate({"sliceWeights": weights})
