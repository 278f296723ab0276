import random
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from app.explore.visited import FingerprintSet


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=400))
def test_behaves_like_a_set(fps: list[int]) -> None:
    table = FingerprintSet(capacity=16)
    reference: set[int] = set()
    for fp in fps:
        assert table.add(fp) == (fp not in reference)
        reference.add(fp)
    assert len(table) == len(reference)
    for fp in fps:
        assert fp in table
    assert (2**64 - 1 in table) == (2**64 - 1 in reference)


def test_small_and_sequential_fingerprints_grow_and_stay_found() -> None:
    table = FingerprintSet(capacity=16)
    for fp in range(50_000):
        assert table.add(fp)
    assert len(table) == 50_000
    assert all(fp in table for fp in range(0, 50_000, 7))
    assert 50_000 not in table
    assert not table.add(0) and not table.add(49_999)


def test_at_most_24_bytes_per_fingerprint() -> None:
    rng = random.Random(7)
    n = 200_000
    tracemalloc.start()
    table = FingerprintSet()
    for _ in range(n):
        table.add(rng.getrandbits(64))
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(table) == n
    assert table.nbytes / n <= 24
    assert current / n <= 24
