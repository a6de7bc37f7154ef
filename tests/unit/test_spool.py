import pytest

from producers.spool import DiskSpool, SpoolFull


def test_records_come_back_in_order_and_commit_removes_them(tmp_path) -> None:
    spool = DiskSpool(tmp_path, segment_bytes=64)
    for i in range(20):
        spool.append(f"k{i % 3}".encode() if i % 5 else None, f"value-{i}".encode())
    assert len(spool) == 20
    assert spool.peek(3) == [(None, b"value-0"), (b"k1", b"value-1"), (b"k2", b"value-2")]
    spool.commit(7)
    assert len(spool) == 13
    assert spool.peek(1) == [(b"k1", b"value-7")]
    assert len(list(tmp_path.glob("segment-*.bin"))) > 1  # rotated


def test_pending_records_survive_a_restart(tmp_path) -> None:
    spool = DiskSpool(tmp_path, segment_bytes=100)
    for i in range(10):
        spool.append(b"k", f"v{i}".encode())
    spool.commit(4)
    spool.close()
    again = DiskSpool(tmp_path, segment_bytes=100)
    assert len(again) == 6
    assert [v for _, v in again.peek(100)] == [f"v{i}".encode() for i in range(4, 10)]


def test_draining_everything_leaves_no_segments(tmp_path) -> None:
    spool = DiskSpool(tmp_path)
    spool.append(b"k", b"v")
    spool.commit(1)
    assert (len(spool), spool.bytes) == (0, 0)
    assert list(tmp_path.glob("segment-*.bin")) == []
    spool.append(b"k", b"w")
    assert spool.peek(5) == [(b"k", b"w")]


def test_the_bound_is_enforced(tmp_path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=100)
    spool.append(b"k", b"x" * 50)
    with pytest.raises(SpoolFull, match="bound is 100"):
        spool.append(b"k", b"x" * 50)
    assert len(spool) == 1


def test_one_process_per_directory(tmp_path) -> None:
    first = DiskSpool(tmp_path)
    with pytest.raises(RuntimeError, match="used by another process"):
        DiskSpool(tmp_path)
    first.close()
    DiskSpool(tmp_path).close()  # free again once the first is closed


def test_the_default_spool_is_kept_per_broker_and_topic(monkeypatch, tmp_path) -> None:
    from producers.sdk import default_spool_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    one = default_spool_dir(["10.0.0.1:9092", "10.0.0.2:9092"], "shop.touchpoints")
    assert one == default_spool_dir(["10.0.0.2:9092", "10.0.0.1:9092"], "shop.touchpoints")
    assert one.parent != default_spool_dir("127.0.0.1:9092", "shop.touchpoints").parent
    assert one.name == "shop.touchpoints" and one.is_relative_to(tmp_path / "journey-sdk")
