"""The store that keeps the web pages' uploads for re-submission: bounded in count, bytes and age."""

from __future__ import annotations

import pytest

from imagetext.web.uploads import UploadStore


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_kept_upload_comes_back_by_its_token_and_only_by_it():
    store = UploadStore()
    kept = store.put("cat.png", b"\x89PNG cat", "data:image/jpeg;base64,AAAA")
    assert store.get(kept.token) is kept and kept.data == b"\x89PNG cat"
    other = store.put("cat.png", b"\x89PNG cat", "data:image/jpeg;base64,AAAA")
    assert other.token != kept.token and len(kept.token) >= 20
    for token in (None, "", "x" * 24, kept.token + "x", "../../etc/passwd", kept.token[:-1]):
        assert store.get(token) is None


def test_the_store_never_holds_more_than_its_count():
    store = UploadStore(max_items=3)
    tokens = [store.put(f"{i}.png", bytes(10), "p").token for i in range(5)]
    assert len(store) == 3
    assert [store.get(t) is not None for t in tokens] == [False, False, True, True, True]


def test_the_store_never_holds_more_than_its_bytes_and_drops_the_least_recently_used():
    store = UploadStore(max_items=100, max_bytes=1000)
    a = store.put("a", bytes(400), "")
    b = store.put("b", bytes(400), "")
    assert store.get(a.token) is a  # a is now more recently used than b
    c = store.put("c", bytes(400), "")
    assert store.nbytes <= 1000
    assert store.get(b.token) is None and store.get(a.token) is a and store.get(c.token) is c
    assert store.put("huge", bytes(1001), "") is None  # larger than the whole budget: not kept
    assert store.get(a.token) is a and store.get(c.token) is c
    assert store.nbytes == 800


def test_uploads_expire_unless_used():
    clock = Clock()
    store = UploadStore(ttl_s=60, clock=clock)
    old = store.put("old", b"1", "")
    used = store.put("used", b"2", "")
    clock.now += 50
    assert store.get(used.token) is used  # using it restarts its time
    clock.now += 20
    assert store.get(old.token) is None
    assert store.get(used.token) is used
    clock.now += 61
    assert store.get(used.token) is None
    assert len(store) == 0 and store.nbytes == 0


def test_the_bounds_must_be_positive():
    with pytest.raises(ValueError):
        UploadStore(max_items=0)
    with pytest.raises(ValueError):
        UploadStore(max_bytes=0)
