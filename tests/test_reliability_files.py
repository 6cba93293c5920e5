"""Nothing a user saved is lost: atomic, non-clobbering writes (jaxsr.fileio) and their use
by evaluate (results.json), upscale, convert, make_lr; and the blind-pipeline fixes
(gt_usrnet reads a converted 'usrnet' checkpoint, Gaussian8 sets get the effective kernel).
docs/reliability.md lists these faults and what is kept."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from jaxsr import checkpoint, config_util, errors, evaluate, fileio, run, upscale

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXSR_TRACEBACK": ""}


def _folder_names(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------------------------
# fileio

def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "results.json"
    fileio.write_json(str(path), {"kept": 1})
    with pytest.raises(OSError, match="No space left"):
        with fileio.atomic_path(str(path), overwrite=True) as tmp:
            with open(tmp, "w") as f:
                f.write('{"half": ')                  # a full disk in the middle of a write
            raise OSError(errno.ENOSPC, "No space left on device")
    assert json.load(open(path)) == {"kept": 1}
    assert _folder_names(tmp_path) == ["results.json"]


def test_existing_file_is_never_replaced_unless_asked(tmp_path):
    path = str(tmp_path / "a.txt")
    fileio.write_text(path, "first")
    with pytest.raises(fileio.OverwriteError, match="--overwrite"):
        fileio.write_text(path, "second")
    assert open(path).read() == "first"
    # A file that appears while ours is being written wins; ours is dropped.
    other = str(tmp_path / "b.txt")
    with pytest.raises(fileio.OverwriteError, match="appeared"):
        with fileio.atomic_path(other) as tmp:
            open(tmp, "w").write("ours")
            open(other, "w").write("theirs")
    assert open(other).read() == "theirs"
    fileio.write_text(path, "second", overwrite=True)
    assert open(path).read() == "second"
    assert _folder_names(tmp_path) == ["a.txt", "b.txt"]


# ---------------------------------------------------------------------------------------
# evaluate: results.json

def _entry(step, psnr):
    return {"psnr_y": psnr, "ssim_y": 0.9, "images": {}, "step": step}


def test_results_merge_keeps_sets_settings_and_older_steps(tmp_path):
    wd = str(tmp_path)
    evaluate.write_results(wd, {"Set5": {"x2": _entry(4, 30.0)}})
    evaluate.write_results(wd, {"Set14": {"x2": _entry(4, 28.0)}})
    evaluate.write_results(wd, {"Set5": {"x2 chop": _entry(4, 30.1)}})
    evaluate.write_results(wd, {"Set5": {"x2": _entry(8, 31.0)}})
    evaluate.write_results(wd, {"Set5": {"x2": _entry(8, 31.5)}})   # same step: replaced
    saved = json.load(open(tmp_path / "eval" / "results.json"))
    assert saved["Set14"]["x2"]["psnr_y"] == 28.0
    assert {k: v["psnr_y"] for k, v in saved["Set5"].items()} == {
        "x2": 31.5, "x2 @step4": 30.0, "x2 chop": 30.1}


def test_unreadable_results_json_is_kept_aside_never_clobbered(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"Set5": {"x2": ')          # truncated
    (out / "results.json.corrupt").write_text("an older damaged file")
    evaluate.write_results(str(tmp_path), {"Set14": {"x2": _entry(1, 27.0)}})
    assert json.load(open(out / "results.json"))["Set14"]["x2"]["psnr_y"] == 27.0
    assert (out / "results.json.corrupt").read_text() == "an older damaged file"
    assert (out / "results.json.1.corrupt").read_text() == '{"Set5": {"x2": '


def test_result_keys_name_the_settings_that_change_numbers():
    c = config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small"))
    assert evaluate.result_key(c, None) == "x2"
    c.eval.chop, c.eval.self_ensemble, c.eval.tile = True, True, 64
    assert evaluate.result_key(c, None) == "x2 chop self_ensemble tile=64"
    nlsn = config_util.load_config_file(os.path.join(REPO, "configs/nlsn.py:small"))
    trained = nlsn.copy_and_resolve_references()
    nlsn.model.n_hashes = 1
    assert evaluate.result_key(nlsn, trained) == f"x{nlsn.scale} n_hashes=1"
    settings = evaluate.settings_of(nlsn)
    assert settings["n_hashes"] == 1 and settings["chunk_size"] == nlsn.model.chunk_size


def _tiny_benchmark(root, names):
    from jaxsr.data import pipeline
    photos = pipeline.skimage_paths("val")[:1]
    for name in names:
        (root / name / "HR").mkdir(parents=True)
        img = np.asarray(Image.open(photos[0]).convert("RGB"))[:24, :32]
        Image.fromarray(img).save(root / name / "HR" / "a.png")


def test_each_set_is_written_when_scored_and_a_failing_set_keeps_the_others(tmp_path,
                                                                            monkeypatch):
    bench, wd = tmp_path / "bench", tmp_path / "wd"
    _tiny_benchmark(bench, ["One", "Two"])
    c = config_util.load_config_file(os.path.join(REPO, "configs/bicubic.py"))
    c.eval.benchmarks_dir, c.eval.datasets = str(bench), ("One", "Missing", "Two")
    results_path = wd / "eval" / "results.json"
    seen_before = {}
    scored = evaluate.evaluate_set

    def spy(config, apply_fn, name):     # what is on disk when each set starts
        seen_before[name] = (sorted(json.load(open(results_path)))
                             if results_path.exists() else [])
        return scored(config, apply_fn, name)

    monkeypatch.setattr(evaluate, "evaluate_set", spy)
    with pytest.raises(errors.PartialFailure, match="Missing"):
        evaluate.evaluate(c, str(wd))
    assert seen_before == {"One": [], "Missing": ["One"], "Two": ["One"]}
    saved = json.load(open(results_path))
    assert sorted(saved) == ["One", "Two"]
    entry = saved["Two"]["x2"]
    assert entry["model"] == "bicubic" and entry["scale"] == 2 and entry["step"] is None
    assert entry["settings"]["chop"] is False and entry["settings"]["tile"] == 0


# ---------------------------------------------------------------------------------------
# upscale

def _images(folder, names, side=12):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (side, side + 2, 3), np.uint8)).save(folder / n)


def test_upscale_collisions_inputs_and_existing_outputs_are_settled_before_work(tmp_path):
    src = tmp_path / "in"
    _images(src, ["a.jpg", "a.png", "b.png"])
    pairs = upscale.output_pairs(str(src), str(tmp_path / "out"))
    assert [os.path.basename(d) for _, d in pairs] == ["a_jpg.png", "a_png.png", "b.png"]
    with pytest.raises(ValueError, match="input folder"):
        upscale.output_pairs(str(src), str(src))
    with pytest.raises(ValueError, match="replace an input"):
        upscale.check_pairs(upscale.output_pairs(str(src / "b.png"), str(src / "b.png")))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.png").write_bytes(b"earlier result")
    with pytest.raises(FileExistsError, match="--overwrite"):
        upscale.check_pairs(pairs)
    upscale.check_pairs(pairs, overwrite=True)
    assert (tmp_path / "out" / "b.png").read_bytes() == b"earlier result"


def test_out_of_memory_and_write_errors_are_reported_and_the_folder_goes_on(tmp_path,
                                                                            monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, ["a.png", "big.png", "c.png"])
    up = upscale.Upscaler.from_workdir("bicubic", ["scale=2"])
    real_call, real_write = upscale.Upscaler.__call__, fileio.write_png

    def call(self, image, **kw):
        if image.shape[0] == 12 and call.count == 1:              # the second image
            call.count += 1
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB")
        call.count += 1
        return real_call(self, image, **kw)
    call.count = 0

    def write(path, img, **kw):
        if os.path.basename(path) == "c.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, img, **kw)

    monkeypatch.setattr(upscale.Upscaler, "__call__", call)
    monkeypatch.setattr(fileio, "write_png", write)
    failed = dict(upscale.upscale_files(up, upscale.output_pairs(str(src), str(out)),
                                        progress=False))
    assert sorted(os.path.basename(p) for p in failed) == ["big.png", "c.png"]
    oom = failed[str(src / "big.png")]
    assert "14x12" in oom and "--tile" in oom and "--max_memory" in oom
    assert "No space left" in failed[str(src / "c.png")] and "c.png" in failed[str(src / "c.png")]
    assert _folder_names(out) == ["a.png"]
    assert np.asarray(Image.open(out / "a.png")).shape == (24, 28, 3)


UPSCALE_OOM_DRIVER = textwrap.dedent('''
    import sys
    from absl import app
    from jaxsr import upscale
    real = upscale.Upscaler.__call__
    def call(self, image, **kw):
        if image.shape[1] == 20:
            raise MemoryError("Unable to allocate 9.0 GiB")
        return real(self, image, **kw)
    upscale.Upscaler.__call__ = call
    sys.argv = ["upscale"] + sys.argv[1:]
    app.run(upscale.main, flags_parser=upscale._parse_flags)
''')


def test_upscale_cli_exits_1_listing_failures_after_the_rest(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, ["a.png", "c.png"])
    _images(src, ["wide.png"], side=18)                 # 20 pixels wide: "out of memory"
    res = subprocess.run([sys.executable, "-c", UPSCALE_OOM_DRIVER, "--workdir=bicubic",
                          f"--input={src}", f"--output={out}", "--config.scale=2"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "2 of 3" in res.stdout
    assert "wide.png (20x18 -> 40x36) does not fit in memory" in res.stderr
    assert "Traceback" not in res.stderr
    assert _folder_names(out) == ["a.png", "c.png"]


# ---------------------------------------------------------------------------------------
# convert, make_lr

def _edsr_workdir(tmp_path):
    from jaxsr import convert
    from jaxsr.config_base import base_config
    c = base_config()
    c.model.name, c.model.n_resblocks, c.model.n_feats, c.model.res_scale = "edsr", 1, 4, 1.0
    rng = np.random.default_rng(0)        # random values of the model's shapes, no compile
    params = convert.core.unflatten({p: rng.normal(size=s.shape).astype(np.float32)
                                     for p, s in convert.abstract_params(c).items()})
    wd = tmp_path / "wd"
    checkpoint.save_params(str(wd), params, c)
    return c, wd


def test_to_torch_never_replaces_an_existing_file(tmp_path):
    from jaxsr import convert
    c, wd = _edsr_workdir(tmp_path)
    out = tmp_path / "model.pth"
    out.write_bytes(b"someone's weights")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert.export_workdir(c, str(wd), str(out))
    assert out.read_bytes() == b"someone's weights"
    convert.export_workdir(c, str(wd), str(out), overwrite=True)
    assert sorted(convert.load_state_dict(str(out))) == sorted(
        convert.params_to_state_dict(checkpoint.load_params(str(wd))[0], c))
    assert _folder_names(tmp_path) == ["model.pth", "wd"]


def test_convert_without_torch_is_one_clear_line(tmp_path):
    c, wd = _edsr_workdir(tmp_path)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from absl import app\nfrom jaxsr.convert import __main__ as cli\n"
            "sys.argv = ['convert'] + sys.argv[1:]\napp.run(cli.main)\n")
    res = subprocess.run([sys.executable, "-c", code, "to-torch", f"--workdir={wd}",
                          f"--output={tmp_path / 'm.pth'}"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "error: PyTorch checkpoint conversion needs torch" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "m.pth").exists()


def test_save_params_refuses_a_different_config_json_before_writing(tmp_path):
    c, wd = _edsr_workdir(tmp_path)
    before = (wd / "config.json").read_text()
    other = c.copy_and_resolve_references()
    other.scale = 3
    with pytest.raises(FileExistsError, match="config.json"):
        checkpoint.save_params(str(wd), checkpoint.load_params(str(wd))[0], other, step=5)
    assert (wd / "config.json").read_text() == before
    assert checkpoint.latest_step(str(wd)) == 0


def test_make_lr_refuses_existing_outputs_before_writing(tmp_path):
    from jaxsr.tools import make_lr
    hr = tmp_path / "hr"
    _images(hr, ["a.png", "b.png"], side=16)
    make_lr.make_lr(str(hr), str(tmp_path / "lr"), [2], verbose=False)
    first = (tmp_path / "lr" / "X2" / "ax2.png").read_bytes()
    (tmp_path / "lr" / "X2" / "bx2.png").write_bytes(b"edited by hand")
    with pytest.raises(FileExistsError, match="ax2.png already exists"):
        make_lr.make_lr(str(hr), str(tmp_path / "lr"), [2], verbose=False)
    assert (tmp_path / "lr" / "X2" / "bx2.png").read_bytes() == b"edited by hand"
    assert make_lr.main(["--hr", str(hr), "--out", str(tmp_path / "lr"), "--scale", "2"]) == 2
    make_lr.make_lr(str(hr), str(tmp_path / "lr"), [2], verbose=False, overwrite=True)
    assert (tmp_path / "lr" / "X2" / "ax2.png").read_bytes() == first
    assert _folder_names(tmp_path / "lr" / "X2") == ["ax2.png", "bx2.png"]


# ---------------------------------------------------------------------------------------
# blind pipeline

def test_gt_usrnet_reads_a_converted_usrnet_checkpoint():
    for arg, ok in (("x4,gt", True), ("x4,usrnet_only", True), ("x4", False)):
        c = config_util.load_config_file(os.path.join(REPO, f"configs/kenet_usrnet.py:{arg}"))
        meta = {"model": "usrnet", "scale": 4}
        if ok:
            checkpoint.check_meta(meta, c, "workdirs/usrnet")
        else:
            with pytest.raises(checkpoint.CheckpointMismatchError, match="kenet_usrnet"):
                checkpoint.check_meta(meta, c, "workdirs/usrnet")


def _usrnet_forward_model_np(hr, kernel, s):
    """USRNet's degradation model, LR = (HR conv k)[0::s, 0::s], by scipy (reflect)."""
    from scipy import ndimage
    k = np.asarray(kernel, np.float64)
    blurred = np.stack([ndimage.convolve(hr[..., c].astype(np.float64), k, mode="reflect")
                        for c in range(3)], -1)
    return blurred[0::s, 0::s]


def test_gaussian8_gives_usrnet_the_effective_kernel_of_blur_and_bicubic(shared_data):
    from jaxsr.data import blind_sets
    from jaxsr.models import blind
    c = config_util.load_config_file(os.path.join(REPO, "configs/kenet_usrnet.py:x4,gt"))
    ds = blind_sets.load_set(str(shared_data / "benchmarks"), "Set5_gaussian8", 4,
                             max_images=1)
    border = 12        # LR pixels away from the image edge (padding differs there)
    for i in (0, 7):   # the narrowest and the widest kernel
        _, hr, lr, extra = ds[i]
        given = blind.prepare_extras(c, extra)["kernel"]
        assert given.shape[0] % 2 == 1 and abs(float(given.sum()) - 1) < 1e-6
        for kernel, worst in ((given, 0.5 + 1e-6), (extra["kernel"], None)):
            err = np.abs(_usrnet_forward_model_np(hr, kernel, 4) - lr)[border:-border,
                                                                       border:-border]
            if worst is not None:
                assert err.max() <= worst            # only the 8-bit rounding is left
            else:
                assert err.max() > 10                # the blur kernel alone is far off
