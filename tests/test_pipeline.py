"""The Grain training pipeline: determinism, iterator state, process sharding, TFDS source."""
import os

import numpy as np

from jaxsr import config_util
from jaxsr.data import pipeline, tfds_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**data):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.source = "skimage"
    c.train.batch_size, c.train.patch_size = 4, 24
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def batches(config, n, **kw):
    it = iter(pipeline.train_dataset(config, **kw))
    return [next(it)["hr"] for _ in range(n)], it


def test_deterministic_for_seed_and_resumable():
    c = small_config()
    a, it = batches(c, 2)
    b, _ = batches(c, 2)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    state = it.get_state()
    after = next(it)["hr"]
    it2 = iter(pipeline.train_dataset(c))
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["hr"], after)
    c.seed = 1
    other, _ = batches(c, 2)
    assert not np.array_equal(np.stack(a), np.stack(other))


def test_processes_read_disjoint_images(tmp_path):
    from PIL import Image
    for i, value in enumerate((10, 200)):
        Image.fromarray(np.full((30, 30, 3), value, np.uint8)).save(tmp_path / f"{i}.png")
    c = small_config(source="folders", train_dirs=(str(tmp_path),))
    c.train.batch_size = 2
    for process, value in enumerate((10, 200)):
        it = iter(pipeline.train_dataset(c, process_index=process, process_count=2))
        for _ in range(3):
            hr = next(it)["hr"]
            assert hr.shape == (1, 24, 24, 3)          # half of the global batch
            assert (hr == value).all()                 # only this process's image


class _StubTfds:
    """The part of `tfds.data_source`'s interface the reader uses (len + getitem dicts)."""

    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.items = [{"hr": rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)} for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_tfds_source_feeds_the_same_pipeline(monkeypatch):
    stub = _StubTfds(3)
    monkeypatch.setattr(tfds_source, "source_from_config",
                        lambda config: tfds_source.TfdsHRSource(stub, "hr", "stub"))
    c = small_config(source="tfds", augment=False)
    c.train.batch_size = 3
    hr = next(iter(pipeline.train_dataset(c)))["hr"]
    assert hr.shape == (3, 24, 24, 3) and hr.dtype == np.uint8
    # every crop is a window of one of the stub images
    def is_window(patch):
        for item in stub.items:
            img = item["hr"]
            for t in range(img.shape[0] - 23):
                rows = img[t:t + 24]
                for l in range(img.shape[1] - 23):
                    if np.array_equal(rows[:, l:l + 24], patch):
                        return True
        return False
    assert all(is_window(p) for p in hr)
