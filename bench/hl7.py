"""HL7 v2 order intake: ORM/s over one MLLP connection, pacsflow (durable) vs HAPI HL7v2's receiver (not durable).

``python -m bench hl7`` (or ``python -m bench.hl7``); needs ``make hl7-peer``.

The same sender (HAPI 2.6.0's client, ``Peer sendmany``) sends the same order, N times as N distinct orders (MSH-10
and accession made unique), over one connection, waiting for each ACK before the next message as MLLP senders do:

- pacsflow: the router's :class:`~pacsflow_router.workflow.listener.Hl7Listener` in a child process; every AA is
  sent only after the order and its ACK are committed to the spool's SQLite database (WAL, ``synchronous=FULL``).
- HAPI: HAPI's own MLLP server (``Peer receive``): parses, validates, writes a JSON line (no fsync), answers.

Printed per message kind (ORM^O01 v2.3, OMI^O23 v2.5.1): the median messages/s of each receiver over ``--rounds``
rounds (each round's figure beside it; the receivers take turns going first, as the machine is shared) and
pacsflow's ratio to HAPI. A round in which pacsflow did not store every order exactly once, or answered anything but
AA, fails the bench. Both receivers run on this machine in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.peers.hapi import HapiReceiver, sendmany
from tests.peers.hl7msgs import OrderMessage
from tests.peers.net import free_port

KINDS = {"orm23": "ORM^O01 v2.3", "omi251": "OMI^O23 v2.5.1"}


class PacsflowListener:
    """The router's HL7 listener + order store over a fresh spool, in a child process stopped by closing stdin."""

    def __init__(self, spool_dir: Path) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "bench.hl7", "--serve", str(spool_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"pacsflow HL7 listener did not start: {line!r}")
        self.port = int(line)

    def stop(self) -> int:
        """Stop the listener; the number of orders it had stored."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        stored = int(self.proc.stdout.readline() or -1)
        self.proc.wait(timeout=30)
        return stored


def _serve(spool_dir: str) -> None:
    from pacsflow_router.config import Hl7Listener as Hl7ListenerConfig
    from pacsflow_router.ingest.spool import Spool
    from pacsflow_router.workflow.listener import Hl7Listener
    from pacsflow_router.workflow.orders import OrderStore

    store = OrderStore(Spool(spool_dir, 0.99), f"sqlite:///{Path(spool_dir).resolve().parent / 'store.db'}")
    listener = Hl7Listener(Hl7ListenerConfig(port=free_port()), store)
    listener.start()
    print(listener.port, flush=True)
    sys.stdin.read()
    listener.stop()
    print(store.count(), flush=True)


def run_pacsflow(message: bytes, count: int, spool_dir: Path) -> tuple[dict[str, Any], int]:
    """pacsflow's ``sendmany`` result and the number of orders it stored."""
    pacsflow = PacsflowListener(spool_dir)
    try:
        result = sendmany(pacsflow.port, message, count)
    finally:
        stored = pacsflow.stop()
    return result, stored


def run_hapi(message: bytes, count: int, out: Path) -> dict[str, Any]:
    """HAPI's receiver's ``sendmany`` result."""
    with HapiReceiver(out) as rx:
        return sendmany(rx.port, message, count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hl7", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="messages per receiver, message kind and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per message kind, receivers alternating first (the median is reported)")
    parser.add_argument("--serve", metavar="SPOOL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.serve:
        _serve(args.serve)
        return 0

    failed = 0
    print(f"\nHL7 order intake: {args.count} orders per receiver over one MLLP connection, sender HAPI 2.6.0's "
          f"client (one message in flight); median of {args.rounds} rounds, receivers alternating")
    print(f"{'message':16} {'receiver':30} {'msgs/s':>8} {'rounds':>24} {'pacsflow/HAPI':>14}")
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-hl7-") as tmp:
        work = Path(tmp)
        for kind, title in KINDS.items():
            message = OrderMessage(control_id=f"BENCH-{kind}", accession=f"BENCH-{kind}").encoded(kind)
            ours: list[float] = []
            theirs: list[float] = []
            for r in range(args.rounds):
                steps = ["pacsflow", "hapi"] if r % 2 == 0 else ["hapi", "pacsflow"]
                for step in steps:
                    if step == "hapi":
                        theirs.append(float(run_hapi(message, args.count, work / f"hapi-{kind}-{r}.jsonl")
                                            ["msgsPerSecond"]))
                        continue
                    result, stored = run_pacsflow(message, args.count, work / f"spool-{kind}-{r}")
                    ours.append(float(result["msgsPerSecond"]))
                    # The untimed first message is an order too: count + 1 stored, every ACK an AA.
                    if stored != args.count + 1 or result["acks"] != {"AA": args.count}:
                        print(f"pacsflow round {r}: stored {stored} orders (expected {args.count + 1}), "
                              f"ACKs {_acks(result)}")
                        failed = 1
            mine, peer = statistics.median(ours), statistics.median(theirs)
            print(f"{title:16} {'pacsflow (durable, fsync)':30} {mine:8.1f} {_rounds(ours):>24} "
                  f"{mine / peer:14.2f}")
            print(f"{'':16} {'HAPI receiver (not durable)':30} {peer:8.1f} {_rounds(theirs):>24}")
    return failed


def _rounds(rates: list[float]) -> str:
    return " ".join(f"{r:.0f}" for r in rates)


def _acks(result: dict[str, Any]) -> str:
    acks = result["acks"]
    return " ".join(f"{k}:{v}" for k, v in sorted(acks.items()))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
