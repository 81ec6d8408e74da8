"""``pacsflow audit verify``: check the tamper-evident audit chain in the results store (:mod:`.chain`).

Prints one line per break (record id and kind, what is wrong; never patient data) and exits 1 when there is any, 0
when every record's hash, its link to the one before, the dense ids, the chain head, the forward cursors and the rows
the records cover all agree.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import chain
from .store import open_for_command

URL_ENV = "PACSFLOW_STORE_URL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacsflow audit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="verify the audit chain; exit 1 naming each changed, deleted or "
                                               "reordered record")
    check.add_argument("--url", default=os.environ.get(URL_ENV),
                       help=f"the results store's SQLAlchemy URL (default: ${URL_ENV})")
    return parser


def main(argv: list[str]) -> int:
    """Run ``pacsflow audit``; returns the exit status (0 intact, 1 broken or store unreachable, 2 usage/newer
    schema)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(f"give the results store's URL with --url or ${URL_ENV}")
    store = open_for_command("audit", args.url)
    if isinstance(store, int):
        return store
    try:
        count, findings = chain.verify(store.engine)
    finally:
        store.close()
    for finding in findings:
        print(f"pacsflow audit verify: {finding}", file=sys.stderr)
    if findings:
        print(f"audit chain BROKEN: {len(findings)} problem(s) in {count} records")
        return 1
    print(f"audit chain intact: {count} records")
    return 0
