"""The write-ahead journal on a full filesystem (a real, tiny tmpfs): no torn records,
and the exactly-once protocol holds when no new segment can be created."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.privileged.ebpf_fixtures import tmpfs
from tests.unit.test_journal import append, entry, open_journal

pytestmark = [pytest.mark.privileged]


def test_a_full_disk_refuses_a_batch_whole_and_keeps_the_rest(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=16k") as mnt:
        filler = mnt / "filler"
        filler.write_bytes(b"f" * 8192)
        journal = open_journal(mnt / "journal")
        kept: list[tuple[bytes, bytes]] = []
        with pytest.raises(OSError) as refused:
            for i in range(2_000):
                batch = [entry(i * 7 + j) for j in range(7)]
                append(journal, batch)
                kept += batch
        assert refused.value.errno == errno.ENOSPC
        assert len(kept) > 20
        filler.unlink()  # space again: the next batch follows the last whole one
        later = [entry(20_000 + j) for j in range(7)]
        append(journal, later)
        sealed = journal.rotate()
        assert journal.read(sealed) == kept + later  # nothing torn in between
        journal.close()


def test_without_inodes_a_rotation_empties_the_segment_in_place(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=1m,nr_inodes=5") as mnt:
        journal = open_journal(mnt / "journal")  # inodes: mount root, journal/, seg 1
        append(journal, [entry(1)])
        assert journal.rotate() == 1  # seg 2: the 4th inode
        filler = mnt / "filler"
        filler.write_text("")  # the 5th and last
        append(journal, [entry(2)])
        # drain 2 takes entry 2 into memory; no seg 3 possible: seg 2 is emptied instead
        assert journal.rotate() == 1
        assert journal.rotate_failures == 1
        append(journal, [entry(3)])  # arrives after drain 2, still in seg 2
        journal.close()

        # A crash now: the checkpoint says 1 (entry 1 counted; entry 2 counted too, by
        # drain 2, whose position stayed 1). The replay must return entry 3 only.
        filler.unlink()
        again = open_journal(mnt / "journal")
        assert again.recover(1) == [entry(3)]
        again.close()
