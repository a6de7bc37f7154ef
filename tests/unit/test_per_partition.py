"""What a stage keeps in memory per partition: the decoded entries' bound."""

from stream_processors.stages.per_partition import Decoded


def test_decoded_entries_stay_within_their_budget_the_least_recently_used_leaving() -> None:
    decoded: Decoded[str] = Decoded(budget=100)
    decoded.put(b"a", "A", 40)
    decoded.put(b"b", "B", 40)
    assert decoded.get(b"a") == "A"  # now the most recently used
    decoded.put(b"c", "C", 40)  # 120 bytes: the oldest, b, leaves
    assert decoded.get(b"b") is None
    assert (decoded.get(b"a"), decoded.get(b"c")) == ("A", "C")
    decoded.put(b"a", "A2", 70)  # replaced, not counted twice: 70 + 40 > 100, c leaves
    assert (decoded.get(b"a"), decoded.get(b"c"), len(decoded)) == ("A2", None, 1)


def test_an_entry_larger_than_the_budget_is_not_kept_nor_does_it_evict_the_rest() -> None:
    decoded: Decoded[str] = Decoded(budget=100)
    decoded.put(b"a", "A", 60)
    decoded.put(b"big", "B", 101)
    assert (decoded.get(b"big"), decoded.get(b"a")) == (None, "A")


def test_a_dropped_entry_frees_its_bytes() -> None:
    decoded: Decoded[str] = Decoded(budget=100)
    decoded.put(b"a", "A", 60)
    decoded.drop(b"a")
    decoded.put(b"b", "B", 60)
    decoded.put(b"c", "C", 40)
    assert (decoded.get(b"a"), decoded.get(b"b"), decoded.get(b"c")) == (None, "B", "C")


def test_changed_windows_are_taken_at_most_a_limit_at_a_time_the_rest_due_at_once() -> None:
    from stream_processors.stages.per_partition import Unpublished

    unpublished = Unpublished()
    unpublished.windows.update((b"k", n) for n in range(7))
    taken = [unpublished.take(100.0, 3), unpublished.take(100.5, 3)]
    assert [len(t) for t in taken] == [3, 3]
    assert not unpublished.never_published
    assert unpublished.due(100.5, 5.0)  # some left: due although just published
    taken.append(unpublished.take(101.0, 3))  # the last one: it starts afresh
    assert sorted(n for t in taken for _, n in t) == list(range(7))  # each once
    assert not unpublished.windows
    assert (unpublished.due(105.9, 5.0), unpublished.due(106.0, 5.0)) == (False, True)
