"""MLLP framing: split and coalesced segments, oversized messages dropped unbuffered, bytes outside a frame refused."""

from __future__ import annotations

import socket

import pytest

from pacsflow_router.errors import MllpFramingError
from pacsflow_router.workflow.mllp import HEAD_BYTES, Frame, FrameReader, frame, read_frame

MSG1 = b"MSH|^~\\&|RIS|H|PACS|H|20261130||ORM^O01|1|P|2.3\rPID|||P1"
MSG2 = b"MSH|^~\\&|RIS|H|PACS|H|20261130||ORM^O01|2|P|2.3\rPID|||P2"


def _frames(reader: FrameReader) -> list[Frame]:
    out = []
    while (got := reader.next_frame()) is not None:
        out.append(got)
    return out


def test_frame_wraps_in_vt_fs_cr():
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"


def test_one_message_split_byte_by_byte():
    reader = FrameReader(1024)
    got = []
    for i, byte in enumerate(frame(MSG1)):
        reader.feed(bytes([byte]))
        got += _frames(reader)
        # Nothing comes out before the <FS> (byte len(MSG1) + 1); the message comes out whole at it.
        assert [f.message for f in got] == ([] if i < len(MSG1) + 1 else [MSG1])
    # The trailing <CR> was consumed: the reader is between frames, not inside one.
    assert not reader.in_frame
    reader.feed(frame(MSG2))
    assert [f.message for f in _frames(reader)] == [MSG2]


def test_several_messages_in_one_segment():
    reader = FrameReader(1024)
    reader.feed(frame(MSG1) + frame(MSG2) + frame(MSG1)[:10])
    assert [f.message for f in _frames(reader)] == [MSG1, MSG2]
    assert reader.in_frame
    reader.feed(frame(MSG1)[10:])
    assert [f.message for f in _frames(reader)] == [MSG1]


def test_oversized_message_is_counted_not_buffered():
    reader = FrameReader(1024)
    reader.feed(b"\x0b" + MSG1)
    chunk = b"X" * 65536
    for _ in range(320):  # 20 MiB
        reader.feed(chunk)
    reader.feed(b"\x1c\r" + frame(MSG2))
    big, after = _frames(reader)
    assert big.oversized and big.message == b""
    assert big.size == len(MSG1) + 320 * 65536
    assert big.head.startswith(MSG1) and len(big.head) == HEAD_BYTES
    assert reader.buffered_peak <= 1024
    # The next message on the same connection is read normally.
    assert after == Frame(MSG2, len(MSG2))


@pytest.mark.parametrize("garbage", [b"MSH|^~\\&|no framing\r", b"GET / HTTP/1.1\r\n", b"\x1c\r"])
def test_bytes_outside_a_frame_are_refused(garbage):
    reader = FrameReader(1024)
    reader.feed(frame(MSG1))
    with pytest.raises(MllpFramingError, match="outside an MLLP frame"):
        reader.feed(garbage)
    assert [f.message for f in _frames(reader)] == [MSG1]


def test_a_new_frame_inside_a_frame_is_refused():
    reader = FrameReader(1024)
    with pytest.raises(MllpFramingError, match="before the previous one ended"):
        reader.feed(b"\x0b" + MSG1 + b"\x0b" + MSG2 + b"\x1c\r")


def test_line_ends_between_frames_are_tolerated():
    reader = FrameReader(1024)
    reader.feed(frame(MSG1) + b"\n\r\n" + frame(MSG2))
    assert [f.message for f in _frames(reader)] == [MSG1, MSG2]


def test_read_frame_over_a_socket_pair():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(frame(MSG1)[:5])
        left.sendall(frame(MSG1)[5:] + frame(MSG2))
        reader = FrameReader(1024)
        assert read_frame(right, reader, 5).message == MSG1
        assert read_frame(right, reader, 5).message == MSG2
        with pytest.raises(TimeoutError):
            read_frame(right, reader, 0.2)
        left.close()
        with pytest.raises(ConnectionError):
            read_frame(right, reader, 5)
