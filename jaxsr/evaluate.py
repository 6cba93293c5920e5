"""Evaluate mode: the latest checkpoint of a workdir on benchmark sets, BasicSR protocol.

Writes DIR/eval/results.json, one set at a time as soon as it is scored, merged with what
earlier evaluations wrote there:
  {"<Set>": {"<key>": {"psnr_y", "ssim_y", "bicubic_psnr_y", "images": {name: {...}},
                       "step", "model", "scale", "settings": {...}, "evaluated"}}}
`<key>` is "x<s>" for the default settings and names the settings that change the numbers
otherwise ("x2 chop self_ensemble", "x2 n_hashes=1"), so they sit side by side; an entry
of an older checkpoint step is kept as "<key> @step<N>". A results.json that cannot be
read is kept as results.json.corrupt (results.json.N.corrupt when that exists). Prints
the same as a table with the protocol.

The weights scored are the checkpoint's EMA weights when it has them and
config.eval.use_ema (default), else the raw params; every entry's settings say which
('weights': 'ema' | 'params'), and `--config.eval.use_ema=false` results of an EMA
checkpoint get their own key ("x2 use_ema=False"), beside the EMA ones. `step='best'`
scores DIR/best (jaxsr.validation). Training's validation (jaxsr.validation) scores with
the same functions (load_samples, score_samples).

Started on every host of a pod (one process each), the images of each set are spread over
every device of every process (jaxsr.eval_engine; the scores are bit-identical to one
device's) and gathered to all; process 0 alone writes results.json and prints the table.
The benchmarks must be the same for every process: one gs:// folder, or identical copies.
"""
import functools
import json
import logging
import math
import os
import time

import numpy as np

from jaxsr import checkpoint, distributed, errors, eval_engine, fileio, inference, metrics
from jaxsr import models, paths
from jaxsr.data import benchmarks

PROTOCOL = ("Protocol: PSNR/SSIM on the Y channel of BT.601 YCbCr (Y = 16 + (65.481 R + "
            "128.553 G + 24.966 B)/255, {y_round}), {crop} pixels cropped from every border, "
            "SR clamped to [0, 1] and rounded to uint8 before the metrics, SSIM with an 11x11 "
            "Gaussian window (sigma 1.5) as BasicSR; HR modcropped to the scale; LR from "
            "<Set>/LR_bicubic when present, else MATLAB-exact bicubic of the HR; blurred/noisy sets and DIV2KRK as named (jaxsr.data.blind_sets). "
            "Grayscale ground truths (Set14 bridge.png): {gray}.")
GRAY_TEXT = {"gray": "scored on their one channel against the luma of the SR output, as the "
                     "MATLAB scripts (config.eval.gray='gray')",
             "y": "replicated to RGB and scored on Y, as the EDSR-PyTorch and BasicSR "
                  "testers (config.eval.gray='y')"}


def load_model_params(config, workdir: str, step: int | str | None = None):
    """(model, params) for the config; params-free models (bicubic) need no checkpoint."""
    model, params, _ = load_checkpoint(config, workdir, step)
    return model, params


def load_checkpoint(config, workdir: str, step: int | str | None = None):
    """(model, params, meta) of the latest (or given, or 'best') step: the EMA weights when
    the checkpoint has them and config.eval.use_ema (meta['weights'] says which); meta
    {'step': None} for params-free models."""
    model = models.build_model(config)
    if not models.has_params(config):
        return model, {}, {"step": None, "model": config.model.name}
    params, meta, used_ema = checkpoint.load_eval_params(
        workdir, step, use_ema=bool(config.eval.get("use_ema", True)))
    checkpoint.check_meta(meta, config, workdir)
    return model, params, dict(meta, weights="ema" if used_ema else "params")


def make_apply_fn(model, params) -> inference.BoundApply:
    """LR batch (+ extras) -> SR batch, jitted with params as an argument (eval: no 'lsh'
    rng, deterministic); `.model` and `.params` serve models' extra_metrics hooks."""
    return inference.bind(model, params)


def pad_multiple(config) -> int:
    """The LR side multiple images are reflect-padded to: the model's, and config.eval.pad_to
    (> 0: fewer distinct shapes, so fewer compiles, at the price of border pixels that
    differ from an unpadded run's; the key of the results says so)."""
    pad_to = int(config.eval.get("pad_to", 0) or 0)
    if pad_to < 0:
        raise ValueError(f"config.eval.pad_to={pad_to}: must be >= 0 (0: each image at its "
                         "own size)")
    return math.lcm(models.input_multiple(config), pad_to or 1)


def padded_lr_shape(config, lr_shape) -> tuple[int, int]:
    """The (H, W) an LR image of (H, W) `lr_shape` runs at: the engine deals images by it
    (jaxsr.eval_engine)."""
    m, low = pad_multiple(config), models.min_input_size(config)
    return tuple(inference.padded_size(int(n), m, low) for n in lr_shape[:2])


def super_resolve(config, apply_fn, lr_uint8: np.ndarray, extras=None) -> np.ndarray:
    fn = apply_fn if not extras else functools.partial(apply_fn, **extras)
    ev = config.eval
    return inference.super_resolve(
        fn, lr_uint8.astype(np.float32) / 255.0, scale=config.scale,
        multiple=pad_multiple(config), min_size=models.min_input_size(config),
        tile=ev.tile, tile_overlap=ev.tile_overlap, chop=ev.chop,
        self_ensemble=ev.self_ensemble)


def score(config, sr_uint8: np.ndarray, hr_uint8: np.ndarray) -> dict:
    ev = config.eval
    crop = config.scale if ev.crop_border < 0 else ev.crop_border
    kw = dict(crop_border=crop, test_y_channel=ev.test_y_channel)
    if ev.round_y:
        kw["round_y"] = True
    return {"psnr_y": float(metrics.calculate_psnr(sr_uint8, hr_uint8, **kw)),
            "ssim_y": float(metrics.calculate_ssim(sr_uint8, hr_uint8, **kw))}


def bicubic_upscale(lr_uint8: np.ndarray, scale: int) -> np.ndarray:
    from jaxsr.ops.imresize import imresize_np
    return imresize_np(lr_uint8, float(scale))


def list_samples(config, name: str) -> list:
    """The images of set `name` as config.eval says (LR files, max_images, ...), not read
    yet where they are files (jaxsr.data.benchmarks.list_set: `.load()` reads one)."""
    ev = config.eval
    return benchmarks.list_set(ev.benchmarks_dir, name, config.scale,
                               use_lr_files=ev.use_lr_files, max_images=ev.max_images,
                               generated_dir=ev.blind_sets_dir, gray=ev.get("gray", "gray"))


def load_samples(config, name: str) -> list:
    """The (HR, LR) pairs of set `name`, all read (validation keeps them for the run)."""
    return [s.load() for s in list_samples(config, name)]


def evaluate_set(config, apply_fn, name: str) -> dict:
    """Scores set `name`; each process reads only the images dealt to it."""
    return score_samples(config, apply_fn, name, list_samples(config, name))


def score_sample(config, apply_fn, sample) -> dict:
    """The row of one (HR, LR) sample: PSNR/SSIM (+ bicubic, + the model's extra metrics)."""
    t0 = time.perf_counter()
    wanted = models.eval_extras(config)
    prepare = models.prepare_extras_fn(config)
    more_metrics = models.extra_metrics_fn(config)
    extras = {k: v for k, v in prepare(config, sample.extras).items() if k in wanted}
    sr = metrics.quantize(super_resolve(config, apply_fn, sample.lr, extras))
    row = score(config, sr, sample.hr)
    if more_metrics is not None:
        row.update(more_metrics(config, apply_fn.model, apply_fn.params, sample.lr,
                                sample.extras))
    if config.eval.get("compare_bicubic", True) and models.has_params(config):
        row["bicubic_psnr_y"] = score(config, bicubic_upscale(sample.lr, config.scale),
                                      sample.hr)["psnr_y"]
    row["seconds"] = time.perf_counter() - t0
    return row


def score_samples(config, apply_fn, name: str, samples, devices=None) -> dict:
    """{'psnr_y', 'ssim_y', ... (means), 'images': {name: row}} of the samples of one set
    (Samples, or benchmarks.SampleFile: read where they are dealt), spread over every
    device of every process (jaxsr.eval_engine; `devices`: this process's, default all it
    evaluates on); the same on every process, and bit-identical to a one-device run."""
    fns = eval_engine.per_device(apply_fn, devices)
    shapes = [padded_lr_shape(config, s.lr_shape) for s in samples]

    def work(device, i):
        row = score_sample(config, fns[device], samples[i].load())
        logging.info("%s/%s: %s", name, samples[i].name, row)
        return row

    rows = eval_engine.run([h * w for h, w in shapes], shapes, work, what=name,
                           names=[s.name for s in samples], devices=devices)
    per_image = {s.name: row for s, row in zip(samples, rows)}
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "seconds"}
    return {**summary, "images": per_image}


# Settings that change the numbers: every entry records them, and results of different
# settings get different keys in results.json instead of replacing each other.
EVAL_SETTINGS = ("chop", "self_ensemble", "tile", "tile_overlap", "max_images", "use_lr_files",
                 "use_ema", "crop_border", "round_y", "test_y_channel", "gray", "pad_to")
MODEL_SETTINGS = ("n_hashes", "chunk_size", "sigma")


def settings_of(config) -> dict:
    ev = config.eval
    out = {k: ev.get(k) for k in EVAL_SETTINGS if k in ev}
    out.update({k: config.model.get(k) for k in MODEL_SETTINGS if k in config.model})
    out["blind_seed"] = int(ev.get("blind_seed", 0))   # the seed blind sets are drawn with
    return out


def result_key(config, reference, has_ema: bool = True) -> str:
    """'x2' for the default settings, else e.g. 'x2 chop self_ensemble n_hashes=1': the
    eval settings that differ from jaxsr's defaults and the model settings that differ from
    `reference` (the workdir's training config, when it has one). `use_ema` counts only
    for a checkpoint that has EMA weights (`has_ema`): without them it changes nothing."""
    from jaxsr import config_base
    defaults = settings_of(config_base.base_config())
    ref_model = reference.model if reference is not None else config.model
    tags = []
    for k, v in settings_of(config).items():
        base = ref_model.get(k) if k in MODEL_SETTINGS else defaults.get(k)
        if k == "tile_overlap" and not config.eval.tile:
            continue                      # the overlap means nothing without tiles
        if k == "use_ema" and not has_ema:
            continue
        if v == base:
            continue
        tags.append(k if v is True else f"{k}={v}")
    return " ".join([f"x{config.scale}"] + tags)


def _training_config(workdir: str):
    try:
        return checkpoint.load_config(workdir)
    except (FileNotFoundError, ValueError):
        return None


def make_entry(config, set_result: dict, meta: dict) -> dict:
    settings = settings_of(config)
    if "weights" in meta:           # which weights were scored: 'ema' | 'params'
        settings["weights"] = meta["weights"]
    return {**set_result, "step": meta.get("step"), "model": config.model.name,
            "scale": int(config.scale), "settings": settings,
            "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def evaluate(config, workdir: str, step: int | str | None = None) -> dict:
    """Scores the checkpoint (latest, `step`, or 'best') on every set, writing each set's entry into
    DIR/eval/results.json as soon as it is scored. A set that fails is reported and the
    others still run; the command then fails listing them (errors.PartialFailure)."""
    paths.check_workdir(workdir, write=True)
    model, params, meta = load_checkpoint(config, workdir, step)
    apply_fn = make_apply_fn(model, params)
    key = result_key(config, _training_config(workdir), has_ema="ema_decay" in meta)
    results, failed = {}, []
    path = paths.join(workdir, "eval", "results.json")
    for name in config.eval.datasets:
        try:
            entry = make_entry(config, evaluate_set(config, apply_fn, name), meta)
        except Exception as e:  # noqa: BLE001 - reported, the other sets still run
            if not errors.is_recoverable(e):
                raise
            logging.error("evaluation of %s failed: %s", name, fileio.describe_error(e, 1000))
            failed.append(f"{name}: {fileio.describe_error(e, 1000)}")
            continue
        results[name] = {key: entry}
        if distributed.is_primary():       # every process has every score: one writer
            path = write_results(workdir, {name: {key: entry}})
            logging.info("%s %s: written to %s", name, key, path)
    if results and distributed.is_primary():
        print(format_table(results, config))
        print(f"results (step {meta.get('step')}, key {key!r}): {path}")
    if failed:
        raise errors.PartialFailure(f"{len(failed)} of {len(config.eval.datasets)} set(s) failed "
                                 "(the others are in DIR/eval/results.json):\n  "
                                 + "\n  ".join(failed))
    return results


def read_results(path: str) -> dict:
    """results.json, or {} when absent; a damaged file is kept aside (never deleted)."""
    if not paths.isfile(path):
        return {}
    raw = paths.read_bytes(path)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"top level is a {type(data).__name__}, not an object")
        return data
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        kept = fileio.free_name(path + ".corrupt")
        if paths.is_remote(path):       # no rename on an object store: a copy, kept first
            with fileio.atomic_path(kept) as tmp, open(tmp, "wb") as f:
                f.write(raw)
        else:
            os.replace(path, kept)
        logging.warning("%s could not be read (%s); kept it as %s and started a new one",
                        path, e, kept)
        return {}


def merge_entry(by_key: dict, key: str, entry: dict) -> None:
    """Puts `entry` under `key`; an entry there of another checkpoint step moves to
    '<key> @step<N>' (kept), one of the same step is replaced (the same measurement)."""
    old = by_key.get(key)
    if old is not None and old.get("step") != entry.get("step"):
        by_key[f"{key} @step{old.get('step')}"] = old
    by_key[key] = entry


def write_results(workdir: str, results: dict) -> str:
    """Merges {set: {key: entry}} into DIR/eval/results.json, atomically and under a lock
    (two evaluations of one workdir do not lose each other's sets). A gs:// workdir has
    no lock: evaluate it one run at a time."""
    if paths.is_remote(workdir):
        return _merge_into(paths.join(workdir, "eval", "results.json"), results)
    import fcntl
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    with open(os.path.join(out_dir, ".results.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _merge_into(path, results)


def _merge_into(path: str, results: dict) -> str:
    merged = read_results(path)
    for set_name, by_key in results.items():
        for key, entry in by_key.items():
            merge_entry(merged.setdefault(set_name, {}), key, entry)
    fileio.write_json(path, merged, overwrite=True, sort_keys=True)
    return path


STANDARD_KEYS = ("psnr_y", "ssim_y", "bicubic_psnr_y", "images", "step", "model", "scale",
                 "settings", "evaluated")


def weights_note(rows) -> str:
    """' (EMA weights)' / ' (raw weights)' / ' (EMA weights, raw weights)' or ''."""
    what = {"ema": "EMA weights", "params": "raw weights"}
    used = sorted({r.get("settings", {}).get("weights") for r in rows} & set(what))
    return f" ({', '.join(what[w] for w in used)})" if used else ""


def format_table(results: dict, config) -> str:
    rows = [r for s in results.values() for r in s.values()]
    has_bic = any("bicubic_psnr_y" in r for r in rows)
    more = sorted({k for r in rows for k in r if k not in STANDARD_KEYS})   # e.g. kernel_psnr
    head = f"{'set':<14}{'scale':>6}{'images':>8}{'PSNR_Y':>9}{'SSIM_Y':>9}"
    head += f"{'bicubic':>9}{'gain':>8}" if has_bic else ""
    head += "".join(f"{k:>14}" for k in more)
    lines = [f"model: {config.model.name}{weights_note(rows)}", head, "-" * len(head)]
    for set_name, by_key in results.items():
        for key, r in by_key.items():       # the key may name settings: keep columns aligned
            scale = f"x{r['scale']}" if "scale" in r else key
            line = (f"{set_name:<14}{scale:>6}{len(r['images']):>8}"
                    f"{r['psnr_y']:>9.2f}{r['ssim_y']:>9.4f}")
            if has_bic and "bicubic_psnr_y" in r:
                line += f"{r['bicubic_psnr_y']:>9.2f}{r['psnr_y'] - r['bicubic_psnr_y']:>+8.2f}"
            line += "".join(f"{r[k]:>14.3f}" if k in r else f"{'-':>14}" for k in more)
            lines.append(line)
    crop = config.scale if config.eval.crop_border < 0 else config.eval.crop_border
    y_round = "Y rounded" if config.eval.round_y else "Y not rounded, as BasicSR/EDSR"
    lines.append(PROTOCOL.format(crop=crop, y_round=y_round,
                                 gray=GRAY_TEXT[config.eval.get("gray", "gray")]))
    return "\n".join(lines)
