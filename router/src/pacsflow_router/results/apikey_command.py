"""``pacsflow api-key``: create, rotate and revoke the results API's keys in the results store.

The token (``<key id>.<secret>``) is printed once, on stdout, for the caller to hand over; the store keeps only the
secret's scrypt hash (:mod:`.apikeys`), so a lost token is rotated, never recovered.
"""

from __future__ import annotations

import argparse
import os
import sys

from .schema import ROLES
from .store import open_for_command

URL_ENV = "PACSFLOW_STORE_URL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacsflow api-key", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get(URL_ENV),
                        help=f"the results store's SQLAlchemy URL (default: ${URL_ENV})")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", parents=[common], help="make a key for a role; prints its token once")
    create.add_argument("--role", required=True, choices=ROLES)
    for name, what in (("rotate", "give a key a new secret; prints the new token once"),
                       ("revoke", "revoke a key for good")):
        command = commands.add_parser(name, parents=[common], help=what)
        command.add_argument("key_id", help="the key's id (pk_...), the part of the token before the dot")
    return parser


def main(argv: list[str]) -> int:
    """Run ``pacsflow api-key``; returns the exit status (0 done, 1 no such key or store unreachable, 2 usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(f"give the results store's URL with --url or ${URL_ENV}")
    store = open_for_command("api-key", args.url)
    if isinstance(store, int):
        return store
    try:
        if args.command == "create":
            key_id, token = store.create_api_key(args.role)
            print(token)
            print(f"created API key {key_id} ({args.role}); the token above is shown once, only its hash is stored",
                  file=sys.stderr)
        elif args.command == "rotate":
            print(store.rotate_api_key(args.key_id))
            print(f"rotated API key {args.key_id}; the old token no longer works", file=sys.stderr)
        else:
            store.revoke_api_key(args.key_id)
            print(f"revoked API key {args.key_id}", file=sys.stderr)
    except KeyError:
        print(f"pacsflow api-key: no active API key {args.key_id} in this store", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
