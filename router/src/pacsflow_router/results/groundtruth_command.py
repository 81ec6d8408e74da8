"""``pacsflow ground-truth import``: load ground-truth labels (accession -> finding present/absent) from a CSV file
into the results store, where the evidence of silent use cases is computed from them.

Importing the same file again changes nothing; a changed label replaces the old one. Rejected rows are reported by
line number and reason on stderr, never with their values; the valid rows are imported all the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .groundtruth import GroundTruthFileError, parse_labels
from .store import open_for_command

URL_ENV = "PACSFLOW_STORE_URL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacsflow ground-truth", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("import", help="import labels from a CSV file (accession,label,use_case,finding)")
    load.add_argument("--url", default=os.environ.get(URL_ENV),
                      help=f"the results store's SQLAlchemy URL (default: ${URL_ENV})")
    load.add_argument("file", type=Path, help="CSV with a header row: accession, label, use_case and/or finding")
    return parser


def main(argv: list[str]) -> int:
    """Run ``pacsflow ground-truth``; returns the exit status (0 all rows imported, 1 some rows rejected or the store
    unreachable, 2 usage, an unreadable file or a store from a newer release)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(f"give the results store's URL with --url or ${URL_ENV}")
    try:
        parsed = parse_labels(args.file.read_bytes())
    except OSError as exc:
        print(f"pacsflow ground-truth: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except GroundTruthFileError as exc:
        print(f"pacsflow ground-truth: {args.file}: {exc}; nothing imported", file=sys.stderr)
        return 2
    store = open_for_command("ground-truth", args.url)
    if isinstance(store, int):
        return store
    try:
        done = store.record_ground_truth(parsed.labels, "csv")
    finally:
        store.close()
    for line, why in parsed.rejected:
        print(f"line {line}: rejected: {why}", file=sys.stderr)
    print(f"{done['inserted']} label(s) added, {done['updated']} changed, {done['unchanged']} already there; "
          f"{len(parsed.rejected)} row(s) rejected")
    return 1 if parsed.rejected else 0
