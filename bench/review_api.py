"""pacsflow-api on a large results store: worklist p50/p95 with 100k results in PostgreSQL, against a plain psycopg
SELECT of the same rows, and reveal -> key image p50.

``python -m bench.review_api [--results N] [--rounds R]``; needs Debian postgresql (a throwaway cluster, as the tests).

- Store: N ``review_results`` rows (default 100,000: N/2 studies, each a triage and a silent result; 2% critical,
  mixed order priorities, a real 256x256 key-image PNG per row), bulk-inserted through SQLAlchemy.
- Worklist, three ways, R rounds each (first page, 50 studies, the reader's view, count included):
  ``ResultsStore.worklist`` (the query the API runs), ``GET /api/v1/worklist`` through the ASGI app (FastAPI
  TestClient: auth, validation, serialisation, the access audit row) with an API key (an scrypt check per request)
  and with the page's session cookie, and the peer: the same two statements written
  by hand and run with a plain psycopg cursor.
- Reveal -> image: ``POST .../reveal`` then ``GET .../image?marker=true`` for R results with the page's session,
  the time of the pair.

Printed: p50 and p95 in milliseconds of each, and the ratios to the peer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import statistics
import time

import numpy as np
import psycopg
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from pacsflow_api.app import create_app
from pacsflow_router.results.schema import REVIEW_RESULTS
from pacsflow_router.results.store import ResultsStore
from tests.peers.postgres import cluster, fresh_database

PEER_WORKLIST = """
SELECT r.study_uid, max(r.accession), max(r.patient_name), max(r.patient_id), max(r.procedure),
       min(CASE r.order_priority WHEN 'S' THEN 0 WHEN 'A' THEN 1 WHEN 'T' THEN 2 WHEN 'C' THEN 3 WHEN 'P' THEN 4
                                 WHEN 'R' THEN 5 ELSE 6 END) AS rank,
       max(CASE WHEN r.critical THEN 1 ELSE 0 END) AS critical, min(r.created_at) AS oldest
FROM review_results r
JOIN (SELECT tracking_uid, max(revision) AS revision FROM review_results GROUP BY tracking_uid) l
  ON r.tracking_uid = l.tracking_uid AND r.revision = l.revision
WHERE r.mode != 'silent'
GROUP BY r.study_uid ORDER BY critical DESC, rank, oldest, r.study_uid LIMIT 50 OFFSET 0
"""
PEER_COUNT = "SELECT count(DISTINCT study_uid) FROM review_results WHERE mode != 'silent'"


def _png() -> bytes:
    """A head-like key image (a bright disc on black, as the brain window renders a head CT): it compresses as the
    real ones do, unlike noise."""
    yy, xx = np.mgrid[0:256, 0:256]
    disc = ((yy - 128) ** 2 + ((xx - 128) * 1.2) ** 2 < 100 ** 2) * (120 + (xx // 16) % 3 * 20)
    out = io.BytesIO()
    Image.fromarray(disc.astype(np.uint8), mode="L").save(out, format="PNG", optimize=True)
    return out.getvalue()


def _rows(n: int) -> list[dict]:
    png, start = _png(), dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        study, mode = i // 2, ("triage", "silent")[i % 2]
        rows.append({
            "tracking_uid": f"2.25.{i}", "revision": 0, "result_key": f"{i:016x}", "study_uid": f"1.2.3.{study}",
            "accession": f"A{study:08d}", "patient_id": f"P{study:08d}", "patient_name": f"PATIENT^{study}",
            "procedure": "CT Head", "order_priority": "SARRRR"[study % 6], "use_case": f"ich-{mode}", "mode": mode,
            "model_name": "ich_detector", "model_version": 2, "finding_code": "1386000", "finding_scheme": "SCT",
            "finding_meaning": "Intracranial hemorrhage", "present": study % 7 == 0, "probability": 0.3,
            "critical": mode == "triage" and study % 50 == 0, "slice_index": 8, "row_fraction": 0.5,
            "col_fraction": 0.4, "sr_sop_uid": None, "created_at": start + dt.timedelta(seconds=study),
            "key_image_png": png})
    return rows


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[max(0, int(round(0.95 * len(ordered))) - 1)] * 1000


def _timed(fn, rounds: int) -> list[float]:
    fn()  # warm: plans cached, pages in memory
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.review_api", description=__doc__)
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    with cluster() as server:
        url = fresh_database(server)
        store = ResultsStore(url)
        rows = _rows(args.results)
        t0 = time.perf_counter()
        with store.engine.begin() as conn:
            for i in range(0, len(rows), 5000):
                conn.execute(insert(REVIEW_RESULTS), rows[i:i + 5000])
            conn.exec_driver_sql("ANALYZE review_results")
        print(f"{args.results} results ({args.results // 2} studies) inserted in {time.perf_counter() - t0:.1f} s")
        _, token = store.create_api_key("reader")
        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(plain) as peer, TestClient(create_app(store)) as client:
            def peer_worklist() -> None:
                with peer.cursor() as cur:
                    cur.execute(PEER_COUNT)
                    cur.fetchone()
                    cur.execute(PEER_WORKLIST)
                    assert len(cur.fetchall()) == 50

            def store_worklist() -> None:
                assert len(store.worklist(limit=50)[0]) == 50

            def api_worklist() -> None:
                response = client.get("/api/v1/worklist?limit=50", headers={"X-API-Key": token})
                assert response.status_code == 200 and len(response.json()["items"]) == 50

            def page_worklist() -> None:  # the reviewer page's way: the session cookie, no scrypt per request
                response = client.get("/api/v1/worklist?limit=50")
                assert response.status_code == 200 and len(response.json()["items"]) == 50

            results = {"psycopg SELECT (peer)": _ms(_timed(peer_worklist, args.rounds)),
                       "ResultsStore.worklist": _ms(_timed(store_worklist, args.rounds)),
                       "GET worklist (API key)": _ms(_timed(api_worklist, args.rounds))}
            assert client.post("/login", data={"api_key": token}).status_code == 200
            results["GET worklist (session)"] = _ms(_timed(page_worklist, args.rounds))
            peer50, peer95 = results["psycopg SELECT (peer)"]
            print(f"{'worklist, first page of 50':<28} {'p50 ms':>8} {'p95 ms':>8} {'p50/peer':>9} {'p95/peer':>9}")
            for name, (p50, p95) in results.items():
                print(f"{name:<28} {p50:8.1f} {p95:8.1f} {p50 / peer50:9.2f} {p95 / peer95:9.2f}")

            uids = iter([f"2.25.{2 * i}" for i in range(args.rounds + 1)])

            def reveal_then_image() -> None:  # as the page does it: session cookie
                uid = next(uids)
                assert client.post(f"/api/v1/results/{uid}/reveal").status_code == 200
                image = client.get(f"/api/v1/results/{uid}/image?marker=true")
                assert image.status_code == 200 and image.headers["content-type"] == "image/png"

            p50, p95 = _ms(_timed(reveal_then_image, args.rounds))
            print(f"{'reveal -> image (session)':<28} {p50:8.1f} {p95:8.1f}")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
