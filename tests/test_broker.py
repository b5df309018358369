"""The embedded broker never shows a consumer a half-written message.

The race is provoked deterministically: while the message body is being
serialised (after kombu's stock channel has already created the file under its
final name), we look at the queue directory the way a consumer in another
process does.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from kombu import Connection
from kombu.transport import filesystem as stock

from controlplane import broker


def _queue_name() -> str:
    # kombu keeps declared exchanges in process-wide state, so each test uses new names.
    return f"jobs{uuid.uuid4().hex[:8]}"


def _connection(tmp_path: Path, transport: type) -> Connection:
    (tmp_path / "control").mkdir(exist_ok=True)
    options = {
        "data_folder_in": str(tmp_path),
        "data_folder_out": str(tmp_path),
        "control_folder": str(tmp_path / "control"),
        "store_processed": False,
    }
    return Connection(transport=transport, transport_options=options)


def _visible_while_writing(tmp_path: Path, transport: type, module, monkeypatch) -> list[str]:
    seen: list[str] = []
    real_dumps = module.dumps
    name = _queue_name()

    def dumps_and_peek(payload):
        seen.extend(n for n in os.listdir(tmp_path) if n.endswith(f".{name}.msg") and not n.startswith("."))
        return real_dumps(payload)

    monkeypatch.setattr(module, "dumps", dumps_and_peek)
    with _connection(tmp_path, transport) as conn:
        queue = conn.SimpleQueue(name)
        queue.put({"n": 1})
        message = queue.get(timeout=1)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
    return seen


def test_a_consumer_sees_no_message_file_until_it_is_complete(tmp_path, monkeypatch):
    assert _visible_while_writing(tmp_path, broker.Transport, broker, monkeypatch) == []


def test_kombus_own_channel_shows_the_file_before_its_body_is_written(tmp_path, monkeypatch):
    """The failure the subclass exists for; if kombu fixes it, this test says so."""
    assert len(_visible_while_writing(tmp_path, stock.Transport, stock, monkeypatch)) == 1


def test_no_partial_file_is_left_when_the_write_fails(tmp_path, monkeypatch):
    def refuse(payload):
        raise OSError("disk full")

    monkeypatch.setattr(broker, "dumps", refuse)
    name = _queue_name()
    with _connection(tmp_path, broker.Transport) as conn:
        queue = conn.SimpleQueue(name)
        with pytest.raises(Exception, match="Cannot add file"):
            queue.put({"n": 1})
        queue.close()
    assert [n for n in os.listdir(tmp_path) if name in n] == []
