"""`netwatch.capture.journal`: the eBPF backend's write-ahead journal, on real files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from netwatch.capture.journal import Journal, JournalError
from netwatch.capture.layout import KEY, VALUE


def entry(i: int) -> tuple[bytes, bytes]:
    key = KEY.pack(bytes([10, 0, 0, i % 250]) + bytes(12), bytes(16), 80, 40000 + i, 3, 6, 4)
    return key, VALUE.pack(i, i + 1, 100 * i, 100 * i + 1, 10, 20, 0)


def append(journal: Journal, entries: list[tuple[bytes, bytes]]) -> None:
    """As MapDrainer hands over one batch: the keys packed, then the values."""
    keys = b"".join(k for k, _ in entries) + b"\xff" * KEY.size  # trailing buffer garbage
    values = b"".join(v for _, v in entries) + b"\xee" * VALUE.size
    journal.append(keys, values, len(entries))


def open_journal(path: Path) -> Journal:
    return Journal(path, key_size=KEY.size, value_size=VALUE.size)


def test_a_sealed_segment_holds_exactly_the_batches_appended_before_the_rotation(
    tmp_path: Path,
) -> None:
    journal = open_journal(tmp_path)
    append(journal, [entry(1), entry(2)])
    append(journal, [entry(3)])
    sealed = journal.rotate()
    append(journal, [entry(4)])
    assert journal.read(sealed) == [entry(1), entry(2), entry(3)]
    assert journal.read(journal.current) == [entry(4)]
    assert journal.appended == 4


def test_recovery_returns_what_the_checkpoint_does_not_include(tmp_path: Path) -> None:
    first = open_journal(tmp_path)
    append(first, [entry(1)])
    counted = first.rotate()  # checkpointed with position `counted`...
    append(first, [entry(2)])
    uncounted = first.rotate()  # ...this one drained but the process died before its checkpoint
    append(first, [entry(3)])  # taken from the kernel, not yet drained
    first.close()  # kill -9: nothing else happens

    second = open_journal(tmp_path)
    assert second.current == uncounted + 2  # numbering goes on
    assert second.recover(counted) == [entry(2), entry(3)]
    # the replayed segments stay until the checkpoint that counts them is acknowledged
    assert second.segments() == [counted, uncounted, uncounted + 1, second.current]
    assert (tmp_path / f"seg-{counted:012d}.bin").stat().st_size == 0


def test_acknowledging_drops_counted_segments_and_keeps_an_empty_high_water_mark(
    tmp_path: Path,
) -> None:
    journal = open_journal(tmp_path)
    positions = []
    for i in range(3):
        append(journal, [entry(i)])
        positions.append(journal.rotate())
    journal.acknowledge(positions[1])
    assert journal.segments() == [positions[1], positions[2], journal.current]
    assert (tmp_path / f"seg-{positions[1]:012d}.bin").stat().st_size == 0
    journal.acknowledge(positions[2])
    journal.close()
    # every segment acknowledged: a restart still numbers after the last position
    again = open_journal(tmp_path)
    assert again.current > positions[2]
    assert again.recover(positions[2]) == []


def test_a_journal_older_than_the_checkpoint_is_renumbered_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = open_journal(tmp_path / "wiped")
    append(journal, [entry(7)])
    with caplog.at_level(logging.WARNING, logger="netwatch.capture"):
        assert journal.recover(41) == []
    assert "renumbering" in caplog.text
    assert journal.current == 42
    assert journal.read(42) == [entry(7)]  # what this process already took is kept
    assert journal.rotate() == 42


def test_a_torn_tail_is_reported_and_everything_before_it_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = open_journal(tmp_path)
    append(journal, [entry(1), entry(2)])
    append(journal, [entry(3), entry(4)])
    sealed = journal.rotate()
    path = tmp_path / f"seg-{sealed:012d}.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with caplog.at_level(logging.ERROR, logger="netwatch.capture"):
        assert journal.read(sealed) == [entry(1), entry(2)]
    assert str(path) in caplog.text and "torn record" in caplog.text


def test_entries_of_another_layout_are_not_misread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = Journal(tmp_path, key_size=KEY.size + 8, value_size=VALUE.size)
    other.append(b"k" * (KEY.size + 8), b"v" * VALUE.size, 1)
    sealed = other.rotate()
    other.close()
    with caplog.at_level(logging.ERROR, logger="netwatch.capture"):
        assert open_journal(tmp_path).read(sealed) == []
    assert "entry layout" in caplog.text


def test_an_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match=str(blocker)):
        open_journal(blocker / "journal")


def test_an_empty_batch_writes_nothing(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    journal.append(b"", b"", 0)
    assert journal.read(journal.rotate()) == []
    assert journal.appended == 0
