"""What the worker does to keep its memory down, each in a child process of its own
(the settings are the process's).

tune_malloc: large C buffers are mapped on their own and given back when freed; glibc's
own accounting (mallinfo2) tells where an 8 MiB block went, independently of our code.
trim_malloc: the free holes inside the heap leave RSS, as the kernel counts it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stream_processors.malloc import tune_malloc

_PROBE = """
import ctypes, sys
from stream_processors.malloc import tune_malloc
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
tune_malloc(int(sys.argv[1]))
block = bytearray(8 << 20)            # mapped: above glibc's starting threshold
del block                             # freed: glibc's sliding threshold rises to 8 MiB
before = libc.mallinfo2().hblkhd
block = bytearray(8 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def _in_a_child(script: str, *args: object, env: dict[str, str] | None = None) -> str:
    """What ``script`` prints, run in a fresh interpreter (its own heap and settings)."""
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True,
                          capture_output=True, text=True, env=env).stdout


def _mapped_bytes_of_a_second_block(threshold: int) -> int:
    return int(_in_a_child(_PROBE, threshold))


def test_a_fixed_threshold_keeps_large_blocks_mapped() -> None:
    if not _is_glibc():
        pytest.fail("this test needs glibc (Debian's libc6): mallopt and mallinfo2")
    assert _mapped_bytes_of_a_second_block(131_072) >= 8 << 20
    # glibc left to itself: the second block comes from the heap, and stays there.
    assert _mapped_bytes_of_a_second_block(0) == 0


def test_zero_leaves_glibc_alone() -> None:
    assert tune_malloc(0) is False


_HOLES = """
import sys
from stream_processors.malloc import trim_malloc
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status
                    if line.startswith("VmRSS"))
blocks = [bytearray(4096) for _ in range(20_000)]   # 80 MB from glibc's heap
kept = blocks[15::16]                               # one in 16 stays: holes of 60 KB
del blocks
before = rss()
if sys.argv[1] == "trim":
    assert trim_malloc()
print(before - rss())
"""


def _released_by(action: str) -> int:
    return int(_in_a_child(_HOLES, action))


def test_a_trim_gives_the_heaps_free_holes_back() -> None:
    """75 MB freed in holes between live blocks stay resident until trimmed."""
    if not _is_glibc():
        pytest.fail("this test needs glibc (Debian's libc6): malloc_trim")
    assert _released_by("trim") > 60 << 20
    assert _released_by("none") < 5 << 20


def _is_glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


def test_clickhouse_driver_date_tables_fill_lazily() -> None:
    """Importing our ClickHouse client does not build the driver's table of every day
    from 1900 to 2299 (146,097 entries, about 20 MB); a date still converts."""
    probe = ("import datetime, stream_processors.clickhouse.client\n"
             "from clickhouse_driver.columns.datecolumn import DateColumn as D\n"
             "n = len(D.date_lut)\n"
             "print(n, D.date_lut[(datetime.date(2026, 12, 4) - D.min_value).days])")
    entries, day = _in_a_child(probe, env={k: v for k, v in os.environ.items()
                                           if k != "CLICKHOUSE_DRIVER_LASY_DATE_LUT"}).split()
    assert int(entries) < 100
    assert day == "2026-12-04"


def _worker_tasks(trim_seconds: str) -> list[str]:
    """The names of the worker app's background tasks and timers, built with the setting."""
    probe = ("import stream_processors.topology as t\n"
             "print(' '.join(getattr(getattr(task, '__wrapped__', task), '__name__', '?')\n"
             "               for task in t.app._app_tasks))")
    return _in_a_child(probe, env={**os.environ,
                                   "JOURNEY_MALLOC_TRIM_SECONDS": trim_seconds}).split()


def test_the_worker_trims_on_a_timer_unless_told_not_to() -> None:
    assert "trim_memory" in _worker_tasks("10")
    never = _worker_tasks("0")
    assert "trim_memory" not in never
    assert "observe_lag" in never  # the probe does see the other timers
