"""The kill switch in the outbox: items of a use case the hold check names are never sent, and audited as held."""

from __future__ import annotations

from pathlib import Path

from pacsflow_router.results.export import Message, Outbox, OutboxItem


class _Recorder:
    """A message destination that accepts everything (the outbox's sender protocol)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, message: Message) -> int:
        self.sent.append(message.body)
        return 200


def _outbox(tmp_path: Path, silent: set[str], outcomes: list[tuple[str | None, str]], dest: _Recorder) -> Outbox:
    def hold(item: OutboxItem) -> str | None:
        return f"use case {item.use_case} was demoted to silent" if item.use_case in silent else None

    def senders(name: str):
        raise AssertionError("no DICOM items here")

    return Outbox(tmp_path / "outbox", senders, message_senders=lambda channel, name: dest,
                  on_result=lambda item, outcome: outcomes.append((item.use_case, outcome)), hold=hold)


def test_items_of_a_demoted_use_case_are_held_not_sent(tmp_path: Path):
    silent: set[str] = set()
    outcomes: list[tuple[str | None, str]] = []
    dest = _Recorder()
    outbox = _outbox(tmp_path, silent, outcomes, dest)
    for channel in ("hl7", "webhook"):
        outbox.enqueue_message(channel, "ris", f"{channel}-ich", b"ich", study_key="s1", use_case="ich")
        outbox.enqueue_message(channel, "ris", f"{channel}-pe", b"pe", study_key="s1", use_case="pe")
    silent.add("ich")  # the demotion lands while the items are queued
    assert outbox.deliver_due() == 2
    assert dest.sent == [b"pe", b"pe"]
    assert sorted(outcomes) == [("ich", "held"), ("ich", "held"), ("pe", "delivered"), ("pe", "delivered")]
    # Promoting the use case again does not release them: they came from the model judged unsafe.
    silent.clear()
    assert outbox.deliver_due() == 0
    assert dest.sent == [b"pe", b"pe"]
    assert outbox.pending() == 0
    assert outbox.state("hl7-ich", channel="hl7") == "failed"
    outbox.close()


def test_without_a_hold_check_everything_is_sent(tmp_path: Path):
    dest = _Recorder()
    outbox = Outbox(tmp_path / "outbox", lambda name: None, message_senders=lambda c, n: dest)  # type: ignore[arg-type,return-value]
    outbox.enqueue_message("webhook", "w", "k", b"x", use_case="ich")
    assert outbox.deliver_due() == 1
    outbox.close()
