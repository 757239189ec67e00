"""Background prefetch workers: the same batches in the same order as the plain iterator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mae_tracker.data.jetfile import JetImageReader, cache_in_memory, iterate_batches, make_splits
from mae_tracker.data.loader import Prefetcher, prefetch
from mae_tracker.data.preprocess import Preprocessor


@pytest.fixture(scope="module")
def reader(jets_file):
    return JetImageReader(jets_file)


def passes(reader, indices, **kwargs):
    return iterate_batches(reader, indices, 32, shuffle=True, seed=3, epoch=1, drop_last=True, **kwargs)


def broken_pass(reader, indices):
    """A pass whose every read fails, as a vanished disk would."""

    class Broken:
        info = reader.info

        def read(self, idx):
            raise OSError("disk gone")

    batches = passes(reader, indices)
    batches.reader = Broken()
    return batches


def same(a, b):
    a, b = list(a), list(b)
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@pytest.mark.parametrize("workers", [1, 3])
def test_prefetched_batches_equal_the_plain_iterator(reader, workers):
    train = make_splits(len(reader), seed=0)["pretrain"]
    pre = Preprocessor.fit(reader, train)
    plain = list(passes(reader, train, preprocessor=pre))
    assert len(plain) == len(train) // 32
    with Prefetcher(passes(reader, train, preprocessor=pre), workers=workers) as loader:
        assert len(loader) == len(plain)
        assert same(loader, plain)
    # a rank's shard and an in-memory source too
    shard = passes(reader, train, preprocessor=pre, rank=1, world_size=2)
    assert same(prefetch(passes(reader, train, preprocessor=pre, rank=1, world_size=2), workers=2), shard)
    cached = cache_in_memory(reader, train, max_bytes=2**30)
    assert same(prefetch(passes(cached, train), workers=workers), passes(reader, train))


def test_n_batches_caps_the_pass_with_and_without_workers(reader):
    train = make_splits(len(reader), seed=0)["pretrain"]
    first = list(passes(reader, train))[:3]
    assert same(prefetch(passes(reader, train), workers=2, n_batches=3), first)
    assert same(prefetch(passes(reader, train), workers=0, n_batches=3), first)


def test_early_close_stops_workers_and_errors_reach_the_consumer(reader):
    train = make_splits(len(reader), seed=0)["pretrain"]
    loader = Prefetcher(passes(reader, train), workers=2, depth=1)
    next(loader)
    loader.close()
    assert not any(t.is_alive() for t in loader._threads)
    with pytest.raises(StopIteration):
        next(loader)

    with pytest.raises(OSError, match="disk gone"):
        list(Prefetcher(broken_pass(reader, train), workers=2))


def test_each_worker_reads_with_its_own_handle(reader):
    clone = reader.clone()
    assert clone is not reader and clone.info == reader.info
    idx = np.array([5, 1, 9])
    assert np.array_equal(clone.read(idx)[0], reader.read(idx)[0])
    clone.close()


def test_worker_processes_give_the_same_batches_and_pass_errors_on(reader):
    """Process workers (h5py lets one thread decompress at a time): same batches, same order,
    capped passes, a rank's shard, and a reader error raised in the consumer."""
    train = make_splits(len(reader), seed=0)["pretrain"]
    pre = Preprocessor.fit(reader, train)
    plain = list(passes(reader, train, preprocessor=pre))
    loader = prefetch(passes(reader, train, preprocessor=pre), workers=2, processes=True)
    assert len(loader) == len(plain) and same(loader, plain)
    assert same(prefetch(passes(reader, train), workers=2, n_batches=3, processes=True), list(passes(reader, train))[:3])
    shard = passes(reader, train, preprocessor=pre, rank=1, world_size=2)
    assert same(prefetch(passes(reader, train, preprocessor=pre, rank=1, world_size=2), workers=2, processes=True),
                shard)
    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(broken_pass(reader, train), workers=2, processes=True))
