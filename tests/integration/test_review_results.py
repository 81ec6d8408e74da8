"""The router writes the reviewer panel's row for every analysed result (every mode) into the results store."""

from __future__ import annotations

import io

import pydicom
from PIL import Image
from sqlalchemy import text

from pacsflow_router import metrics
from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.models import phantom
from pacsflow_router.results.store import ResultsStore
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, in_process_router
from tests.peers.reviewstore import USE_CASES, seed_store


def test_every_mode_gets_a_row_with_the_srs_tracking_uid_and_a_windowed_key_image(tmp_path):
    url, facts = seed_store(tmp_path, {71: (True, "R")})
    store = ResultsStore(url)
    try:
        rows = store.study_results(study_uid=facts[71]["study_uid"], include_silent=True)
        assert sorted(r["mode"] for r in rows) == ["silent", "triage"]
        assert [r["mode"] for r in store.study_results(study_uid=facts[71]["study_uid"])] == ["triage"]
        triage = next(r for r in rows if r["mode"] == "triage")
        sr = next(pydicom.dcmread(p) for p in (tmp_path / "outbox" / "items").glob("*.dcm"))
        tracking = {str(e.value) for e in sr.iterall() if e.keyword == "UID"}  # Tracking Unique Identifier
        assert triage["tracking_uid"] in tracking
        assert triage["sr_sop_uid"] == str(sr.SOPInstanceUID)
        assert triage["accession"] == facts[71]["accession"] and triage["order_priority"] == "R"
        assert triage["present"] and 0 <= triage["row_fraction"] <= 1 and 0 <= triage["col_fraction"] <= 1
        silent = next(r for r in rows if r["mode"] == "silent")
        assert silent["sr_sop_uid"] is None
        image = Image.open(io.BytesIO(store.result(triage["tracking_uid"])["key_image_png"]))
        assert image.mode == "L" and max(image.size) <= 256
        assert image.getextrema()[0] < image.getextrema()[1]  # windowed, not one flat grey
    finally:
        store.close()


def test_a_store_that_cannot_take_the_row_loses_no_study(tmp_path):
    before = metrics.REVIEW_RESULTS_FAILED.labels("ich-triage")._value.get()
    with in_process_router(tmp_path, USE_CASES[:1], EmbeddedOnnxBackend(MODEL_REPOSITORY)) as router:
        with router.audit.engine.begin() as conn:
            conn.execute(text("DROP TABLE review_results"))
        datasets, _ = phantom.generate_study(72, lesion=True, slices=17, rows=256, cols=256)
        for ds in datasets:
            router.spool.store(part10(ds))
        assert router.process_due() == 1
        assert len(router.queued()) == 1  # the SR still goes out
        assert router.audit.records()[0]["outcome"].startswith("reported")
    assert metrics.REVIEW_RESULTS_FAILED.labels("ich-triage")._value.get() == before + 1
