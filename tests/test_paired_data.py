"""Paired LR/HR training data (config.data.train_lr_dirs, paired prepared folders).

Crops and augmentation are checked against a NumPy transcription of the official EDSR
framework's `common.get_patch` / `common.augment` (NLSN/DLSN train with it) on
coordinate-encoding images, whose pixels name their own (y, x): a patch then says where it
was cut and how it was flipped. A pair whose LR was made by our MATLAB bicubic gives the LR
the on-device synthesis makes of the same HR crop, away from the crop borders.
"""
import os

import numpy as np
import pytest

from jaxsr import config_util
from jaxsr.data import images, paired, pipeline, prepared
from jaxsr.ops.imresize import imresize_np
from jaxsr.tools import prepare as prepare_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = 2


# ---------------------------------------------------------------------------------------
# The reference: EDSR-PyTorch src/data/common.py, with `random` passed in (so the draws can
# be given), for one scale, input_large=False, multi=False (the NLSN/DLSN training call
# `common.get_patch(lr, hr, patch_size=args.patch_size, scale=scale)` then `augment`).

def official_get_patch(lr, hr, patch_size, scale, random):
    ih, iw = lr.shape[:2]
    tp = patch_size                      # p = 1 (multi=False), tp = p * patch_size
    ip = tp // scale
    ix = random.randrange(0, iw - ip + 1)
    iy = random.randrange(0, ih - ip + 1)
    tx, ty = scale * ix, scale * iy
    return lr[iy:iy + ip, ix:ix + ip, :], hr[ty:ty + tp, tx:tx + tp, :]


def official_augment(lr, hr, random, hflip=True, rot=True):
    hflip = hflip and random.random() < 0.5
    vflip = rot and random.random() < 0.5
    rot90 = rot and random.random() < 0.5

    def _augment(img):
        if hflip:
            img = img[:, ::-1, :]
        if vflip:
            img = img[::-1, :, :]
        if rot90:
            img = img.transpose(1, 0, 2)
        return img

    return [_augment(a) for a in (lr, hr)]


class GivenDraws:
    """Stands in for Python's `random`: returns the given positions and uniforms in order."""

    def __init__(self, ints, uniforms):
        self.ints, self.uniforms = list(ints), list(uniforms)

    def randrange(self, lo, hi):
        v = self.ints.pop(0)
        assert lo <= v < hi
        return v

    def random(self):
        return self.uniforms.pop(0)


def coord_image(h, w, tag):
    """uint8 image whose pixel (y, x) is (y, x, tag)."""
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([y, x, np.full_like(y, tag)], -1).astype(np.uint8)


def assert_aligned(hr, lr, scale=SCALE):
    """Every LR pixel (y, x) covers the HR block whose smallest coordinates are scale x
    (y, x), after any shared dihedral transform."""
    p = lr.shape[0]
    blocks = hr[..., :2].astype(int).reshape(p, scale, p, scale, 2).min(axis=(1, 3))
    np.testing.assert_array_equal(blocks, scale * lr[..., :2].astype(int))


def test_crops_and_augment_equal_official_get_patch_and_augment():
    hr_img, lr_img = coord_image(60, 80, 0), coord_image(30, 40, 255)
    patch = 16                                           # HR; LR patch 8
    reader = pipeline.ImageReader([paired.Pair(hr_img, lr_img)], cache=False, scale=SCALE)
    load = pipeline.LoadCrop(reader, patch, "random", 512, augment=True)
    seen_pos, seen_flags = set(), set()
    for seed in range(300):
        out = load.random_map(0, np.random.default_rng(seed))
        hr, lr = out["hr"], out["lr"]
        assert hr.shape == (16, 16, 3) and lr.shape == (8, 8, 3)
        assert (hr[..., 2] == 0).all() and (lr[..., 2] == 255).all()
        # The draws, in get_patch's order (x, then y, then the three flips).
        draw = np.random.default_rng(seed)
        ix, iy = int(draw.integers(0, 40 - 8 + 1)), int(draw.integers(0, 30 - 8 + 1))
        flags = tuple(bool(f) for f in draw.random(3) < 0.5)
        assert (int(lr[..., 1].min()), int(lr[..., 0].min())) == (ix, iy)
        ref_lr, ref_hr = official_get_patch(lr_img, hr_img, patch, SCALE,
                                            GivenDraws([ix, iy], []))
        ref_lr, ref_hr = official_augment(ref_lr, ref_hr,
                                          GivenDraws([], [0.25 if f else 0.75 for f in flags]))
        np.testing.assert_array_equal(lr, ref_lr)
        np.testing.assert_array_equal(hr, ref_hr)
        seen_pos.add((ix, iy))
        seen_flags.add(flags)
    # Every dihedral transform occurs and positions reach both ends of the range.
    assert len(seen_flags) == 8
    xs, ys = zip(*seen_pos)
    assert min(xs) == 0 and max(xs) == 32 and min(ys) == 0 and max(ys) == 22


def test_lr_side_ceil_of_an_odd_hr_side_crops_inside_both():
    # MATLAB imresize of a 61-row HR gives 31 LR rows; only 30 have all their HR rows.
    hr_img, lr_img = coord_image(61, 41, 0), coord_image(31, 21, 255)
    reader = pipeline.ImageReader([paired.Pair(hr_img, lr_img)], cache=False, scale=SCALE)
    load = pipeline.LoadCrop(reader, 40, "random", 512, augment=True)
    for seed in range(50):
        out = load.random_map(0, np.random.default_rng(seed))
        assert out["hr"].shape == (40, 40, 3)
        assert_aligned(out["hr"], out["lr"])


def test_center_random_crops_inside_the_central_lr_square():
    # LR 30x40, center_size 32 HR -> the central 16x16 LR square at (7, 12); LR patch 8.
    hr_img, lr_img = coord_image(60, 80, 0), coord_image(30, 40, 255)
    reader = pipeline.ImageReader([paired.Pair(hr_img, lr_img)], cache=False, scale=SCALE)
    load = pipeline.LoadCrop(reader, 16, "center_random", 32, augment=True)
    tops, lefts = set(), set()
    for seed in range(200):
        out = load.random_map(0, np.random.default_rng(seed))
        assert_aligned(out["hr"], out["lr"])
        tops.add(int(out["lr"][..., 0].min()))
        lefts.add(int(out["lr"][..., 1].min()))
    assert tops == set(range(7, 16)) and lefts == set(range(12, 21))


# ---------------------------------------------------------------------------------------
# Folders: name matching, errors, the stream's properties.

def write_pairs(root, names, hr_hw=(48, 64), lr_name="{}x{s}", lr_sub="X{s}", lr_hw=None):
    """Coordinate-encoding HR files and their LR files (DIV2K layout by default), each
    image tagged by its index in channel 2."""
    hr_dir, lr_dir = root / "HR", root / "LR" / lr_sub.format(s=SCALE)
    for i, n in enumerate(names):
        h, w = hr_hw
        lh, lw = lr_hw or (h // SCALE, w // SCALE)
        images.write_png(str(hr_dir / f"{n}.png"), coord_image(h, w, i))
        images.write_png(str(lr_dir / f"{lr_name.format(n, s=SCALE)}.png"),
                         coord_image(lh, lw, 100 + i))
    return str(hr_dir), str(root / "LR" / lr_sub.replace("{s}", "{scale}"))


def config_for(train_dirs, lr_dirs, batch=4, patch=16, **data):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.scale = SCALE
    c.data.train_dirs, c.data.train_lr_dirs = train_dirs, lr_dirs
    c.train.batch_size, c.train.patch_size = batch, patch
    for k, v in data.items():
        c.data[k] = v
    return c


def take(it, n):
    batches = [next(it) for _ in range(n)]
    return {k: np.concatenate([b[k] for b in batches]) for k in ("hr", "lr")}


def check_pairs(b):
    for hr, lr in zip(b["hr"], b["lr"]):
        assert_aligned(hr, lr)
        assert (lr[..., 2] == 100 + hr[0, 0, 2]).all()      # the same image's LR
        assert (hr[..., 2] == hr[0, 0, 2]).all()


LAYOUTS = {"div2k": ({}, "{}x2"), "basicsr": (dict(lr_name="{}", lr_sub="lq"), "{}"),
           "template": (dict(lr_name="{}_LR{s}", lr_sub="lq"), "{}_LR2")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_names_match_in_both_layouts_or_a_template(tmp_path, layout):
    kw, lr_name = LAYOUTS[layout]
    hr_dir, lr_dir = write_pairs(tmp_path, ["0001", "0002", "0003"], **kw)
    c = config_for((hr_dir,), (lr_dir,))
    if layout == "template":
        with pytest.raises(paired.PairError, match=r"looked for 0001x2\.\* .* and 0001\.\*"):
            pipeline.make_reader(c)
        c.data.lr_name_template = "{}_LR{scale}"
    assert pipeline.make_reader(c).source == [
        (os.path.join(hr_dir, f"000{i}.png"),
         os.path.join(lr_dir.replace("{scale}", "2"), lr_name.format(f"000{i}") + ".png"))
        for i in (1, 2, 3)]
    b = take(iter(pipeline.train_dataset(c)), 3)
    assert b["hr"].shape == (12, 16, 16, 3) and b["lr"].shape == (12, 8, 8, 3)
    check_pairs(b)


def test_unmatched_and_wrongly_sized_pairs_fail_naming_both(tmp_path):
    hr_dir, lr_dir = write_pairs(tmp_path / "a", ["0001", "0002"])
    os.remove(os.path.join(lr_dir.format(scale=2), "0002x2.png"))
    with pytest.raises(paired.PairError, match=r"no LR file for the HR file .*0002\.png.*"
                       r"0002x2\.\* \(DIV2K/EDSR\) and 0002\.\*"):
        pipeline.train_dataset(config_for((hr_dir,), (lr_dir,)))
    # Both names present: ambiguous.
    hr_dir, lr_dir = write_pairs(tmp_path / "b", ["0001"])
    images.write_png(os.path.join(lr_dir.format(scale=2), "0001.png"), coord_image(24, 32, 0))
    with pytest.raises(paired.PairError, match=r"2 LR files .*0001x2\.png.*0001\.png"):
        pipeline.train_dataset(config_for((hr_dir,), (lr_dir,)))
    # Wrong size (an x3 LR in the x2 folder): names both files.
    hr_dir, lr_dir = write_pairs(tmp_path / "c", ["0001"], lr_hw=(16, 22))
    with pytest.raises(paired.PairError, match=r"LR .*0001x2\.png is 22x16 .*HR .*0001\.png "
                       r"is 64x48: at scale 2 the LR must be 32x24"):
        pipeline.train_dataset(config_for((hr_dir,), (lr_dir,)))
    with pytest.raises(ValueError, match=r"train_lr_dirs has 1 folder\(s\) and "
                       r"config.data.train_dirs 2"):
        pipeline.train_dataset(config_for((hr_dir, hr_dir), (lr_dir,)))


def test_weighted_sharded_workers_and_resume_give_the_same_pairs(tmp_path):
    a = write_pairs(tmp_path / "a", ["0001", "0002"])
    b = write_pairs(tmp_path / "b", ["0001", "0002", "0003", "0004"])
    c0 = config_for(((a[0], 1), (b[0], 3)), (a[1], b[1]), num_shards=2)
    it = iter(pipeline.train_dataset(c0))
    first = take(it, 2)
    state = it.get_state()
    after = take(it, 3)
    check_pairs(first)
    check_pairs(after)
    # Set a's images (tags 0, 1 in a; b's are 0..3 with other LR folders) both appear.
    assert len({int(t) for t in first["hr"][:, 0, 0, 2]}) > 1
    # Resume mid-stream from the iterator state.
    resumed = iter(pipeline.train_dataset(c0))
    resumed.set_state(state)
    again = take(resumed, 3)
    for k in ("hr", "lr"):
        np.testing.assert_array_equal(again[k], after[k])
    # Two processes, one shard each, together give the single process's batches.
    parts = [iter(pipeline.train_dataset(c0, process_index=p, process_count=2))
             for p in range(2)]
    for step in range(2):
        local = [next(p) for p in parts]
        for k in ("hr", "lr"):
            np.testing.assert_array_equal(np.concatenate([b[k] for b in local]),
                                          first[k][4 * step:4 * step + 4])
    # Worker processes give what threads give.
    c2 = config_for(((a[0], 1), (b[0], 3)), (a[1], b[1]), num_shards=2, num_workers=2)
    workers = iter(pipeline.train_dataset(c2))
    try:
        got = take(workers, 2)
    finally:
        workers.close()
    for k in ("hr", "lr"):
        np.testing.assert_array_equal(got[k], first[k])


# ---------------------------------------------------------------------------------------
# Prepared ArrayRecord folders with pairs.

def test_prepare_pairs_round_trip(tmp_path):
    hr_dir, lr_dir = write_pairs(tmp_path, ["0001", "0002"], hr_hw=(96, 120))
    out = str(tmp_path / "prep")
    manifest = prepare_tool.prepare([hr_dir], out, crop=48, step=32, records_per_shard=4,
                                    progress=False, lr_dirs=[lr_dir.format(scale=2)],
                                    scale=SCALE)
    assert manifest["scale"] == 2 and manifest["lr_record_shape"] == [24, 24, 3]
    # LR grid: crop 24, step 16 over 48 x 60 -> rows 0, 16, 24; columns 0, 16, 32, 36.
    assert manifest["total_records"] == 2 * 3 * 4
    source = prepared.PreparedSource(out)
    assert source.scale() == 2
    for i in range(len(source)):
        rec = source.record(i)
        tag = int(rec.pixels[0, 0, 2])
        np.testing.assert_array_equal(
            rec.pixels, coord_image(96, 120, tag)[rec.top:rec.top + 48, rec.left:rec.left + 48])
        lt, ll = rec.top // 2, rec.left // 2
        np.testing.assert_array_equal(
            rec.lr, coord_image(48, 60, 100 + tag)[lt:lt + 24, ll:ll + 24])
    assert {(source.record(i).top, source.record(i).left) for i in range(12)} == {
        (2 * t, 2 * l) for t in (0, 16, 24) for l in (0, 16, 32, 36)}
    c = config_for((), (), source="array_record", prepared_dirs=(out,))
    b = take(iter(pipeline.train_dataset(c)), 3)
    assert b["lr"].shape == (12, 8, 8, 3)
    check_pairs(b)
    c.scale = 4
    with pytest.raises(prepared.PreparedDataError, match=r"x2 LR/HR pairs, but config.scale=4"):
        pipeline.train_dataset(c)
    # A wrongly sized pair stops prepare with both names.
    bad_hr, bad_lr = write_pairs(tmp_path / "bad", ["0001"], lr_hw=(10, 10))
    assert prepare_tool.main(["--hr", bad_hr, "--lr", bad_lr.format(scale=2), "--scale", "2",
                              "--out", str(tmp_path / "p2"), "--crop", "16", "--step", "16",
                              "--no_progress"]) == 2


# ---------------------------------------------------------------------------------------
# Real DIV2K pixels: LR files made by our MATLAB bicubic against the on-device synthesis.

@pytest.fixture(scope="module")
def div2k_pair(shared_data, tmp_path_factory):
    """A 200x240 part of a DIV2K HR image and its MATLAB-bicubic x2 LR, DIV2K layout."""
    root = tmp_path_factory.mktemp("div2k")
    hr = images.read_rgb(str(shared_data / "train/DIV2K_valid_HR_subset/im_2.png"))
    hr = hr[400:600, 600:840]
    images.write_png(str(root / "HR/0002.png"), hr)
    images.write_png(str(root / "LR/X2/0002x2.png"), imresize_np(hr, 1 / SCALE))
    return str(root / "HR"), str(root / "LR/X{scale}")


def both_lrs(config, batch):
    """(LR of the batch, LR synthesised on the device from its HR), 0-255 floats."""
    import jax
    from jaxsr.objectives import sr
    objective = sr.SRObjective(config, model=None)
    _, given = objective.synthesize(batch, jax.random.PRNGKey(0))
    _, made = objective.synthesize(batch["hr"], jax.random.PRNGKey(0))
    return np.asarray(given) * 255, np.round(np.asarray(made) * 255)


def test_matlab_pair_equals_device_synthesis_away_from_borders(div2k_pair):
    c = config_for((div2k_pair[0],), (div2k_pair[1],), batch=8, patch=48, augment=False)
    batch = next(iter(pipeline.train_dataset(c)))
    given, made = both_lrs(c, batch)
    np.testing.assert_array_equal(given, batch["lr"])        # the step reads the file's LR
    m = 2                    # the x2 antialiased cubic reaches 2 LR pixels (4 HR) across
    np.testing.assert_array_equal(given[:, m:-m, m:-m], made[:, m:-m, m:-m])
    assert (given != made).any()             # the crop border: mirrored HR vs the image's
    # Augmented: a transposed crop is resized columns first on the device, while the file
    # was made rows first from the upright image; with MATLAB's uint8 rounding between the
    # passes that moves interior pixels by at most one level.
    c.data.augment = True
    batch = next(iter(pipeline.train_dataset(c)))
    given, made = both_lrs(c, batch)
    assert np.abs(given[:, m:-m, m:-m] - made[:, m:-m, m:-m]).max() <= 1


def test_the_jitted_step_trains_on_the_batch_lr(div2k_pair):
    """The loop's path: device_batches puts {'hr', 'lr'} on the devices and the step's L1
    is that of the model on the batch's LR, not on a synthesised one."""
    import jax
    from jaxsr import train
    from jaxsr.models import build_model
    from test_train_e2e import TINY
    c = config_for((div2k_pair[0],), (div2k_pair[1],), batch=4, patch=32)
    c.model.n_resblocks, c.model.n_feats = TINY["n_resblocks"], TINY["n_feats"]
    _, state, step_fn, repl, data_sharding = train.step_setup(c)
    params = jax.device_get(state["params"])
    batch, _ = next(train.device_batches(iter(pipeline.train_dataset(c)), data_sharding))
    assert sorted(batch) == ["hr", "lr"] and batch["lr"].shape == (4, 16, 16, 3)
    # The step must read this LR: the pair's LR inverted and its columns reversed.
    wrong = 255 - np.asarray(batch["lr"])[:, :, ::-1]
    batch = dict(batch, lr=jax.make_array_from_process_local_data(data_sharding, wrong))
    _, metrics, flag = step_fn(state, batch, jax.device_put(np.zeros((), np.int32), repl))
    assert int(flag) == 0
    model, hr = build_model(c), np.asarray(batch["hr"]) / 255.0
    l1 = jax.jit(lambda lr: jax.numpy.mean(jax.numpy.abs(
        model.apply({"params": params}, lr, train=True) - hr)))
    loss = float(metrics["loss"])
    np.testing.assert_allclose(loss, l1(wrong / 255.0), rtol=1e-5)
    # ... and not an LR synthesised from the HR: the loss is far closer to the first
    # (scale-free, whatever the initialisation makes of the input).
    _, made = both_lrs(c, jax.device_get(batch))
    assert abs(loss - float(l1(wrong / 255.0))) < abs(loss - float(l1(made / 255.0))) / 10
