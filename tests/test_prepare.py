"""`python -m jaxsr.tools.prepare` and the 'array_record' training source: the BasicSR
sub-image recipe (checked against a NumPy transcription), record pixels, the manifest,
no-op reruns, interrupted runs, refusals, and training from the prepared folder."""
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxsr import checkpoint, config_util, train
from jaxsr.data import images, pipeline, prepared
from jaxsr.tools import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP, STEP, THRESH = 16, 10, 3
SIZES = {"a": (37, 50), "b": (16, 29), "c": (44, 44)}     # name -> (h, w)


def basicsr_origins(h, w, crop, step, thresh):
    """extract_subimages' loops, transcribed: np.arange spaces plus the tail position."""
    def space(n):
        s = np.arange(0, n - crop + 1, step)
        if n - (s[-1] + crop) > thresh:
            s = np.append(s, n - crop)
        return s
    return [(int(x), int(y)) for x in space(h) for y in space(w)]


def reference_rgb(path):
    """PIL's own conversion: gray repeated, alpha dropped."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def sources(tmp_path):
    d = tmp_path / "hr"
    d.mkdir()
    rng = np.random.default_rng(0)
    modes = {"a": 3, "b": 1, "c": 4}                       # RGB, gray, RGBA
    for name, (h, w) in SIZES.items():
        shape = (h, w) if modes[name] == 1 else (h, w, modes[name])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{name}.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((8, 40, 3), np.uint8)).save(d / "tiny.png")
    return d


def run(sources, out, **kw):
    kw = {"crop": CROP, "step": STEP, "thresh_size": THRESH, "records_per_shard": 7,
          "progress": False, **kw}
    return prepare.prepare([str(sources)], str(out), **kw)


def all_records(out):
    src = prepared.PreparedSource([str(out)])
    return [src.record(i) for i in range(len(src))]


def record_tuples(out):
    return [(r.name, r.top, r.left, r.pixels.tobytes()) for r in all_records(out)]


def mtimes(folder):
    return {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder)}


def test_recipe_counts_origins_and_pixels(sources, tmp_path):
    out = tmp_path / "out"
    manifest = run(sources, out)
    expected = {n: basicsr_origins(h, w, CROP, STEP, THRESH) for n, (h, w) in SIZES.items()}
    assert {i["name"]: i["records"] for i in manifest["images"]} == {
        n: len(o) for n, o in expected.items()}
    assert manifest["total_records"] == sum(len(o) for o in expected.values())
    assert sorted(os.path.basename(s["path"]) for s in manifest["skipped"]) == [
        "corrupt.png", "tiny.png"]
    assert manifest["settings"]["crop"] == CROP and manifest["record_shape"] == [CROP, CROP, 3]
    records = all_records(out)
    assert [(r.name, r.top, r.left) for r in records] == [
        (n, t, l) for n in sorted(SIZES) for t, l in expected[n]]
    for r in records:
        ref = reference_rgb(sources / f"{r.name}.png")
        np.testing.assert_array_equal(r.pixels, ref[r.top:r.top + CROP, r.left:r.left + CROP])
    # Shards hold whole images and close once they reach records_per_shard.
    assert [s["records"] for s in manifest["shards"]] == [len(expected["a"]),
                                                        len(expected["b"]) + len(expected["c"])]
    assert sorted(os.listdir(out)) == ["manifest.json", "shard-00000.array_record",
                                       "shard-00001.array_record"]
    run(sources, tmp_path / "parallel", workers=2)          # decoding processes, same output
    assert record_tuples(tmp_path / "parallel") == record_tuples(out)


def test_rerun_is_a_noop_and_other_data_is_refused(sources, tmp_path, capsys):
    out = tmp_path / "out"
    first = run(sources, out)
    before = mtimes(out)
    assert run(sources, out) == first
    assert "already complete" in capsys.readouterr().out
    assert mtimes(out) == before
    with pytest.raises(prepare.PrepareError, match="another settings"):
        run(sources, out, step=STEP + 1)
    os.utime(sources / "a.png", ns=(1, 1))                 # same names, a changed file
    with pytest.raises(prepare.PrepareError, match="source listing"):
        run(sources, out)
    assert mtimes(out) == before                            # nothing was touched
    assert run(sources, out, overwrite=True)["total_records"] == first["total_records"]


def test_interrupted_run_resumes_keeping_complete_shards(sources, tmp_path, monkeypatch):
    run(sources, tmp_path / "ref")
    reference = record_tuples(tmp_path / "ref")
    out = tmp_path / "out"
    real_write = prepare.write_shard
    calls = []

    def crash_on_second_shard(out_dir, shard, results, options, bar):
        calls.append(shard["file"])
        if len(calls) == 2:
            open(os.path.join(out_dir, shard["file"] + ".tmp"), "wb").write(b"half")
            raise KeyboardInterrupt
        real_write(out_dir, shard, results, options, bar)

    monkeypatch.setattr(prepare, "write_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run(sources, out)
    assert not (out / "manifest.json").exists() and (out / "plan.json").exists()
    with pytest.raises(prepared.PreparedDataError, match="no manifest.json"):
        prepared.PreparedSource([str(out)])
    kept = os.stat(out / "shard-00000.array_record")
    monkeypatch.setattr(prepare, "write_shard", real_write)
    with pytest.raises(prepare.PrepareError, match="partial prepare"):
        run(sources, out, crop=CROP + 2)                    # other settings: refused
    run(sources, out)                                       # same plan: resumed
    again = os.stat(out / "shard-00000.array_record")
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert record_tuples(out) == reference
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "ref"))


def test_damaged_folder_and_cli_errors_name_the_problem(sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare.main(["--hr", str(sources), "--out", str(out), "--crop", "16",
                         "--no_progress"]) == 0
    assert "corrupt.png" in capsys.readouterr().err
    shard = out / "shard-00000.array_record"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(prepared.PreparedDataError, match="shard-00000.array_record has 100"):
        prepared.PreparedSource([str(out)])
    record = prepared.encode_record(np.zeros((4, 5, 3), np.uint8), "x", 1, 2)
    assert prepared.decode_record(record, "here").pixels.shape == (4, 5, 3)
    with pytest.raises(images.ImageReadError, match="here: record has 60 bytes"):
        prepared.decode_record(record[:60], "here")
    with pytest.raises(images.ImageReadError, match="here: not a jaxsr record"):
        prepared.decode_record(b"PNG!" + record[4:], "here")
    assert prepare.main(["--hr", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err


def config_for(source, **data):
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    c.model.n_resblocks, c.model.n_feats = 1, 8
    c.data.source = source
    c.train.batch_size, c.train.patch_size = 3, 16
    c.data.update(data)
    return c


def take(config, n):
    it = iter(pipeline.train_dataset(config))
    return np.stack([next(it)["hr"] for _ in range(n)])


def whole_image_records(tmp_path):
    """Five random 24x24 PNGs in tmp_path/hr, prepared with crop = image size into
    tmp_path/prep (every sub-image a whole image). Returns the image folder."""
    d = tmp_path / "hr"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    prepare.prepare([str(d)], str(tmp_path / "prep"), crop=24, step=24, progress=False)
    return d


def test_batches_equal_the_folder_source_of_the_same_images(tmp_path):
    """With crop = image size every sub-image is a whole image, so the two sources index
    the same arrays and the seeded crops and flips must agree batch for batch."""
    d = whole_image_records(tmp_path)
    folders = take(config_for("folders", train_dirs=(str(d),)), 4)
    records = take(config_for("array_record", prepared_dirs=(str(tmp_path / "prep"),)), 4)
    assert records.shape == (4, 3, 16, 16, 3)
    np.testing.assert_array_equal(records, folders)


def test_reader_pickles_and_rejects_a_bigger_patch(sources, tmp_path):
    run(sources, tmp_path / "out")
    reader = pipeline.make_reader(config_for("array_record", prepared_dirs=(str(tmp_path / "out"),)))
    first = reader(0)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.source._records is None                   # reopened in the new process
    np.testing.assert_array_equal(clone(0), first)
    c = config_for("array_record", prepared_dirs=(str(tmp_path / "out"),))
    c.train.patch_size = CROP + 8
    with pytest.raises(prepared.PreparedDataError, match="larger --crop"):
        pipeline.make_reader(c)


def test_short_training_run_from_prepared_data_in_worker_processes(sources, tmp_path):
    """Also the fix of `jaxsr.main ... --config.data.num_workers=2`, which used to end in
    a PicklingError: the reader travels to the workers, which open the shards there."""
    run(sources, tmp_path / "out")
    c = config_for("array_record", prepared_dirs=(str(tmp_path / "out"),), num_workers=2)
    c.train.update(dict(num_steps=2, checkpoint_every=2, log_every=1, async_checkpoints=False))
    train.train(c, str(tmp_path / "w"))
    assert checkpoint.latest_step(str(tmp_path / "w")) == 2
    with open(tmp_path / "w" / "metrics.jsonl") as f:
        losses = [json.loads(line).get("loss") for line in f]
    assert all(np.isfinite(x) for x in losses if x is not None) and any(losses)


def test_throughput_experiment_runs(sources, tmp_path):
    """Smoke run of experiments/data_throughput.py on the tiny images (threads only)."""
    from experiments import data_throughput
    out = tmp_path / "rows.json"
    assert data_throughput.main(["--hr", str(sources), "--quick", "--crop", "16", "--step",
                                 "16", "--patch", "16", "--workers", "0", "--png_repeats",
                                 "22", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["source"] for r in rows] == ["array_record", "png"]
    assert all(r["samples_per_s"] > 0 and r["per_cpu_s"] > 0 for r in rows)
