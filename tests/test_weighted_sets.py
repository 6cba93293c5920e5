"""Weighted training sets (config.data.train_dirs with (folder, weight) pairs): sampling
shares, unchanged stream for weight 1, determinism, iterator state, shards, bad entries."""
import os

import numpy as np
import pytest
from PIL import Image

from jaxsr import config_util
from jaxsr.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_set(folder, n, value):
    """n 32x32 images of one grey level per set (`value + image index`)."""
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((32, 32, 3), value + i, np.uint8)).save(folder / f"{i:02d}.png")
    return str(folder)


def config_for(train_dirs, batch=4):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.source = "folders"
    c.data.train_dirs = train_dirs
    c.train.batch_size, c.train.patch_size = batch, 16
    return c


@pytest.fixture
def two_sets(tmp_path):
    return make_set(tmp_path / "a", 3, 10), make_set(tmp_path / "b", 5, 100)


def draw(config, n_batches, **kw):
    it = iter(pipeline.train_dataset(config, **kw))
    return np.concatenate([next(it)["hr"] for _ in range(n_batches)]), it


def test_shares_match_weight_times_size(two_sets):
    a, b = two_sets
    weights, sizes = (1.0, 3.0), (3, 5)
    expected = weights[0] * sizes[0] / (weights[0] * sizes[0] + weights[1] * sizes[1])  # 1/6
    reader = pipeline.make_reader(config_for(((a, 1), (b, 3))))
    assert reader.sets == [(3, 1.0), (5, 3.0)]
    stream = pipeline.shard_index_stream(reader.sets, seed=0, shard=0, num_shards=1)
    n = 900
    drawn = np.array([stream[k] for k in range(n)])
    share_a = np.mean(drawn < 3)
    assert abs(share_a - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    # Within a set every image is drawn equally often (each set is a shuffled repeat).
    counts = np.bincount(drawn, minlength=8)
    for lo, hi in ((0, 3), (3, 8)):
        per_image = counts[lo:hi]
        assert per_image.max() - per_image.min() <= 1 + 0.02 * per_image.mean()
    # The pixels say the same: set a's images have grey levels 10..12, set b's 100..104.
    hr, _ = draw(config_for(((a, 1), (b, 3))), 40)
    levels = hr[:, 0, 0, 0]
    assert set(np.unique(levels)) <= {10, 11, 12, 100, 101, 102, 103, 104}
    p = np.mean(levels < 50)
    assert abs(p - expected) < 4 * np.sqrt(expected * (1 - expected) / len(levels))


def test_weight_one_pairs_keep_the_plain_stream(two_sets):
    a, b = two_sets
    plain, _ = draw(config_for((a, b)), 5)
    pairs, _ = draw(config_for(((a, 1), (b, 1.0))), 5)
    np.testing.assert_array_equal(plain, pairs)


def test_deterministic_and_resumable(two_sets):
    a, b = two_sets
    c = config_for(((a, 2), (b, 0.5)))
    first, it = draw(c, 3)
    again, _ = draw(c, 3)
    np.testing.assert_array_equal(first, again)
    state = it.get_state()
    after = np.concatenate([next(it)["hr"] for _ in range(3)])
    resumed = iter(pipeline.train_dataset(c))
    resumed.set_state(state)
    np.testing.assert_array_equal(np.concatenate([next(resumed)["hr"] for _ in range(3)]),
                                  after)


def test_global_batch_independent_of_process_count(two_sets):
    a, b = two_sets
    c = config_for(((a, 1), (b, 3)))
    c.data.num_shards = 2
    one, _ = draw(c, 4)
    halves = [draw(c, 4, process_index=p, process_count=2)[0] for p in (0, 1)]
    # Each global batch of 4 is process 0's 2 samples then process 1's 2.
    two = np.concatenate([np.concatenate([h[2 * k:2 * k + 2] for h in halves])
                          for k in range(4)])
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("entry, match", [
    (("x", 0), r"train_dirs\[1\].*positive"),
    (("x", -2), r"train_dirs\[1\].*positive"),
    (("x", 1, 2), r"train_dirs\[1\].*folder, weight"),
    ((3, 1), r"train_dirs\[1\].*folder, weight"),
    (("x", "heavy"), r"train_dirs\[1\].*folder, weight"),
])
def test_bad_entries_name_the_entry(two_sets, entry, match):
    with pytest.raises(ValueError, match=match):
        pipeline.make_reader(config_for((two_sets[0], entry)))


def test_missing_folder_names_the_entry(two_sets, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train_dirs\[1\].*does not exist"):
        pipeline.make_reader(config_for((two_sets[0], (str(tmp_path / "nowhere"), 2))))
