"""De-identification per instance: pacsflow's Annex E profile (deid/annex_e.py) vs dicognito, same files, same run.

``python -m bench.deid [--repeats N]``: the inputs of tests/unit/pacsflow_router/test_deid_vs_dicognito.py
(pydicom and pydicom-data files) plus 16 phantom head CT slices (512x512). Each tool gets its own freshly parsed
copy of every instance per round (dicognito changes a data set in place; parsing is not timed). Printed: median
microseconds per instance for dicognito, for pacsflow's profile alone, and for pacsflow's whole edge step (profile
plus the AES-GCM encrypted pseudonym map record, fsync'ed SQLite commit), and the ratios to dicognito.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from io import BytesIO
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer
from pydicom.data import get_testdata_file
from pydicom.filewriter import dcmwrite

from pacsflow_router.config import Deidentification
from pacsflow_router.deid.annex_e import deidentify
from pacsflow_router.deid.pseudonyms import PseudonymStore
from pacsflow_router.models import phantom
from tests.unit.pacsflow_router.test_deid_vs_dicognito import FILES

OPTIONS = Deidentification(retain_longitudinal_temporal_information="modified-dates",
                           retain_patient_characteristics=True, clean_descriptors=True,
                           allow_burned_in_annotation=True)


def _encoded() -> list[bytes]:
    out = []
    for name in FILES:
        buf = BytesIO()
        dcmwrite(buf, pydicom.dcmread(get_testdata_file(name), force=True))  # type: ignore[arg-type]
        out.append(buf.getvalue())
    slices, _truth = phantom.generate_study(5, lesion=True, slices=16, rows=512, cols=512)
    for ds in slices:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _time(encoded: list[bytes], run) -> float:
    copies = [pydicom.dcmread(BytesIO(b), force=True) for b in encoded]
    t0 = time.perf_counter()
    for ds in copies:
        run(ds)
    return (time.perf_counter() - t0) / len(copies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv if argv is not None else [])
    encoded = _encoded()
    anonymizer = Anonymizer(seed="bench")
    with tempfile.TemporaryDirectory() as tmp:
        store = PseudonymStore(Path(tmp) / "pseudonyms.db", b"bench-secret-" * 4)
        keys = store.keys
        # Interleaved per round, so the load of a shared machine falls on all three alike; medians of the rounds.
        rounds = [(_time(encoded, anonymizer.anonymize),
                   _time(encoded, lambda ds: deidentify(ds, OPTIONS, keys)),
                   _time(encoded, lambda ds: store.record(deidentify(ds, OPTIONS, keys), "bench")))
                  for _ in range(args.repeats)]
        store.close()
    print(f"instances per round: {len(encoded)} ({len(FILES)} pydicom/pydicom-data files + 16 phantom CT slices), "
          f"median of {args.repeats} rounds")
    theirs, profile, edge = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(f"dicognito 0.19 anonymize:               {theirs * 1e6:8.0f} us/instance")
    print(f"pacsflow Annex E profile:               {profile * 1e6:8.0f} us/instance  ratio to dicognito "
          f"{statistics.median(r[1] / r[0] for r in rounds):.2f}x (median of per-round ratios)")
    print(f"pacsflow profile + encrypted map entry: {edge * 1e6:8.0f} us/instance  ratio to dicognito "
          f"{statistics.median(r[2] / r[0] for r in rounds):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
