"""A bounded, append-only on-disk queue of Kafka records for the SDK.

While the broker is unreachable the SDK appends records here instead of blocking the
app or dropping them, and sends them in order once the broker answers again. Records
survive a restart of the app: a new client on the same directory sends what the old
one could not.

Layout: numbered segment files of length-prefixed records (``>ii`` key length, -1 for
no key, and value length) and a ``cursor`` file with the position of the first record
not yet sent, replaced atomically on every commit.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from pathlib import Path

__all__ = ["DiskSpool", "SpoolFull"]

_HEADER = struct.Struct(">ii")


class SpoolFull(RuntimeError):
    """The spool reached its size bound; the record was not stored."""


class DiskSpool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 256 * 1024 * 1024,
                 segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_file = open(self.directory / "lock", "a")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"spool directory {self.directory} is used by another process; "
                               "give each process its own spool_dir") from None
        self._read_segment, self._read_offset = self._load_cursor()
        segments = self._segments()
        self._write_segment = segments[-1] if segments else self._read_segment
        self._pending, self._bytes = self._scan()

    # ── public ───────────────────────────────────────────────────────────────
    def __len__(self) -> int:
        return self._pending

    @property
    def bytes(self) -> int:
        return self._bytes

    def append(self, key: bytes | None, value: bytes) -> None:
        size = _HEADER.size + (len(key) if key else 0) + len(value)
        with self._lock:
            if self._bytes + size > self.max_bytes:
                raise SpoolFull(f"the spool in {self.directory} holds {self._bytes:,} bytes, its "
                                f"bound is {self.max_bytes:,}")
            path = self._path(self._write_segment)
            if path.exists() and path.stat().st_size + size > self.segment_bytes:
                self._write_segment += 1
                path = self._path(self._write_segment)
            with open(path, "ab") as f:
                f.write(_HEADER.pack(-1 if key is None else len(key), len(value)))
                if key:
                    f.write(key)
                f.write(value)
            self._pending += 1
            self._bytes += size

    def peek(self, limit: int) -> list[tuple[bytes | None, bytes]]:
        """Up to ``limit`` of the oldest records not yet committed, oldest first."""
        with self._lock:
            return [record for record, _ in self._read(limit)]

    def commit(self, count: int) -> None:
        """Mark the ``count`` oldest records as sent."""
        with self._lock:
            records = self._read(count)
            if not records:
                return
            _, (segment, offset) = records[-1]
            self._pending -= len(records)
            self._bytes -= sum(_HEADER.size + len(k or b"") + len(v) for (k, v), _ in records)
            for old in range(self._read_segment, segment):
                self._path(old).unlink(missing_ok=True)
            self._read_segment, self._read_offset = segment, offset
            if self._pending == 0:  # start afresh: no file grows forever
                for old in self._segments():
                    self._path(old).unlink(missing_ok=True)
                self._read_segment = self._write_segment = self._write_segment + 1
                self._read_offset = 0
            self._save_cursor()

    def close(self) -> None:
        self._lock_file.close()

    # ── private ──────────────────────────────────────────────────────────────
    def _path(self, segment: int) -> Path:
        return self.directory / f"segment-{segment:08d}.bin"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("segment-*.bin"))

    def _load_cursor(self) -> tuple[int, int]:
        try:
            segment, offset = (self.directory / "cursor").read_text().split()
            return int(segment), int(offset)
        except (FileNotFoundError, ValueError):
            segments = self._segments()
            return (segments[0] if segments else 0), 0

    def _save_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        tmp.write_text(f"{self._read_segment} {self._read_offset}")
        os.replace(tmp, self.directory / "cursor")

    def _scan(self) -> tuple[int, int]:
        count = size = 0
        for (key, value), _ in self._read(None):
            count += 1
            size += _HEADER.size + len(key or b"") + len(value)
        return count, size

    def _read(self, limit: int | None) -> list[tuple[tuple[bytes | None, bytes], tuple[int, int]]]:
        """Records from the cursor, each with the position just after it."""
        out: list = []
        segment, offset = self._read_segment, self._read_offset
        while (limit is None or len(out) < limit) and segment <= self._write_segment:
            path = self._path(segment)
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    while limit is None or len(out) < limit:
                        header = f.read(_HEADER.size)
                        if len(header) < _HEADER.size:
                            break  # end of segment (or a torn last write)
                        key_len, value_len = _HEADER.unpack(header)
                        key = f.read(key_len) if key_len >= 0 else None
                        value = f.read(value_len)
                        if len(value) < value_len:
                            break
                        offset = f.tell()
                        out.append(((key, value), (segment, offset)))
            if limit is not None and len(out) >= limit:
                break
            segment, offset = segment + 1, 0
        return out
