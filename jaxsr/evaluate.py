"""Evaluate mode: the latest checkpoint of a workdir on benchmark sets, BasicSR protocol.

Writes DIR/eval/results.json (merged with what an earlier evaluation wrote there):
  {"<Set>": {"x<s>": {"psnr_y", "ssim_y", "bicubic_psnr_y", "images": {name: {...}}}}}
and prints the same as a table with the protocol under it.
"""
import functools
import json
import logging
import os
import time

import numpy as np

from jaxsr import checkpoint, inference, metrics, models
from jaxsr.data import benchmarks

PROTOCOL = ("Protocol: PSNR/SSIM on the Y channel of BT.601 YCbCr (Y = 16 + (65.481 R + "
            "128.553 G + 24.966 B)/255, {y_round}), {crop} pixels cropped from every border, "
            "SR clamped to [0, 1] and rounded to uint8 before the metrics, SSIM with an 11x11 "
            "Gaussian window (sigma 1.5) as BasicSR; HR modcropped to the scale; LR from "
            "<Set>/LR_bicubic when present, else MATLAB-exact bicubic of the HR; blurred/noisy sets and DIV2KRK as named (jaxsr.data.blind_sets).")


def load_model_params(config, workdir: str):
    """(model, params) for the config; params-free models (bicubic) need no checkpoint."""
    model = models.build_model(config)
    if not models.has_params(config):
        return model, {}
    params, meta = checkpoint.load_params(workdir)
    checkpoint.check_meta(meta, config, workdir)
    return model, params


def make_apply_fn(model, params) -> inference.BoundApply:
    """LR batch (+ extras) -> SR batch, jitted with params as an argument (eval: no 'lsh'
    rng, deterministic); `.model` and `.params` serve models' extra_metrics hooks."""
    return inference.bind(model, params)


def super_resolve(config, apply_fn, lr_uint8: np.ndarray, extras=None) -> np.ndarray:
    fn = apply_fn if not extras else functools.partial(apply_fn, **extras)
    ev = config.eval
    return inference.super_resolve(
        fn, lr_uint8.astype(np.float32) / 255.0, scale=config.scale,
        multiple=models.input_multiple(config), min_size=models.min_input_size(config),
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


def evaluate_set(config, apply_fn, name: str) -> dict:
    ev = config.eval
    samples = benchmarks.load_set(ev.benchmarks_dir, name, config.scale,
                                  use_lr_files=ev.use_lr_files, max_images=ev.max_images,
                                  generated_dir=ev.blind_sets_dir)
    per_image = {}
    wanted = models.eval_extras(config)
    prepare = models.prepare_extras_fn(config)
    more_metrics = models.extra_metrics_fn(config)
    for s in samples:
        t0 = time.perf_counter()
        extras = {k: v for k, v in prepare(config, s.extras).items() if k in wanted}
        sr = metrics.quantize(super_resolve(config, apply_fn, s.lr, extras))
        row = score(config, sr, s.hr)
        if more_metrics is not None:
            row.update(more_metrics(config, apply_fn.model, apply_fn.params, s.lr, s.extras))
        if ev.get("compare_bicubic", True) and models.has_params(config):
            row["bicubic_psnr_y"] = score(config, bicubic_upscale(s.lr, config.scale), s.hr)["psnr_y"]
        row["seconds"] = time.perf_counter() - t0
        per_image[s.name] = row
        logging.info("%s/%s: %s", name, s.name, row)
    summary = {k: float(np.mean([r[k] for r in per_image.values()]))
               for k in next(iter(per_image.values())) if k != "seconds"}
    return {**summary, "images": per_image}


def evaluate(config, workdir: str) -> dict:
    model, params = load_model_params(config, workdir)
    apply_fn = make_apply_fn(model, params)
    results = {}
    for name in config.eval.datasets:
        results.setdefault(name, {})[f"x{config.scale}"] = evaluate_set(config, apply_fn, name)
    path = write_results(workdir, results)
    print(format_table(results, config))
    print(f"results: {path}")
    return results


def write_results(workdir: str, results: dict) -> str:
    """Merges into DIR/eval/results.json (other sets/scales already there are kept)."""
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    merged = {}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                merged = json.load(f)
        except json.JSONDecodeError:
            os.replace(path, path + ".corrupt")
            logging.warning("%s was not valid JSON; kept as %s.corrupt", path, path)
    for set_name, by_scale in results.items():
        merged.setdefault(set_name, {}).update(by_scale)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


STANDARD_KEYS = ("psnr_y", "ssim_y", "bicubic_psnr_y", "images")


def format_table(results: dict, config) -> str:
    rows = [r for s in results.values() for r in s.values()]
    has_bic = any("bicubic_psnr_y" in r for r in rows)
    more = sorted({k for r in rows for k in r if k not in STANDARD_KEYS})   # e.g. kernel_psnr
    head = f"{'set':<14}{'scale':>6}{'images':>8}{'PSNR_Y':>9}{'SSIM_Y':>9}"
    head += f"{'bicubic':>9}{'gain':>8}" if has_bic else ""
    head += "".join(f"{k:>14}" for k in more)
    lines = [f"model: {config.model.name}", head, "-" * len(head)]
    for set_name, by_scale in results.items():
        for scale, r in by_scale.items():
            line = (f"{set_name:<14}{scale:>6}{len(r['images']):>8}"
                    f"{r['psnr_y']:>9.2f}{r['ssim_y']:>9.4f}")
            if has_bic and "bicubic_psnr_y" in r:
                line += f"{r['bicubic_psnr_y']:>9.2f}{r['psnr_y'] - r['bicubic_psnr_y']:>+8.2f}"
            line += "".join(f"{r[k]:>14.3f}" if k in r else f"{'-':>14}" for k in more)
            lines.append(line)
    crop = config.scale if config.eval.crop_border < 0 else config.eval.crop_border
    y_round = "Y rounded" if config.eval.round_y else "Y not rounded, as BasicSR/EDSR"
    lines.append(PROTOCOL.format(crop=crop, y_round=y_round))
    return "\n".join(lines)
