"""Grain worker processes (`config.data.num_workers > 0`): the reader pickles, the stream
is the same as with threads only, and the iterator state resumes across processes.
(Training with workers, from prepared data: tests/test_prepare.py.)"""
import os
import pickle
import numpy as np

from jaxsr import config_util
from jaxsr.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(num_workers):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.source = "skimage"
    c.train.batch_size, c.train.patch_size = 4, 24
    c.data.num_workers = num_workers
    return c


def take(it, n):
    return np.stack([next(it)["hr"] for _ in range(n)])


def test_reader_pickles_and_keeps_decoding():
    reader = pipeline.make_reader(small_config(0))
    first = reader(0)                              # fills this process's cache
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._cached_read is None              # the cache did not travel
    np.testing.assert_array_equal(clone(0), first)


def close(it):
    if hasattr(it, "close"):                       # stops the worker processes now
        it.close()


def test_workers_match_threads_and_resume_exactly():
    threads = take(iter(pipeline.train_dataset(small_config(0))), 6)
    config = small_config(2)
    it = iter(pipeline.train_dataset(config))
    first = take(it, 3)
    state = it.get_state()
    uninterrupted = np.concatenate([first, take(it, 3)])
    close(it)
    assert uninterrupted.shape == (6, 4, 24, 24, 3)
    # Same crops and flips (per-element RNG) in the same batches as threads only.
    np.testing.assert_array_equal(uninterrupted, threads)
    resumed = iter(pipeline.train_dataset(config))
    resumed.set_state(state)
    np.testing.assert_array_equal(take(resumed, 3), uninterrupted[3:])
    close(resumed)

