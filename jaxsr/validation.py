"""Validation during training and the kept best checkpoint (config.train.eval_every > 0).

Every `eval_every` steps and at the last step, train.py hands the state to `Validator.run`,
which scores `config.train.eval_datasets` with the functions of `--mode evaluate`
(jaxsr.evaluate: same protocol, same LR sources, the config's eval settings) on the EMA
params when the state has them (and config.eval.use_ema), else on the params. It logs
`val/<set>/psnr_y`, `val/<set>/ssim_y`, their mean `val/psnr_y` and `val/seconds` to
metrics.jsonl and TensorBoard, plus LR / SR / HR crops of each set's first image.

The best step by mean validation PSNR is kept in DIR/best, a params workdir of its own that
`keep_checkpoints` never touches (`--step best` reads it; checkpoint.BEST_DIR):
  DIR/best/checkpoints/<step>   {'params', ['params_ema']} of that step (Orbax, atomic)
  DIR/best/best.json            {'step', 'val_psnr_y', 'sets', 'weights', 'eval_datasets'}
  DIR/best/config.json          the run's config (so upscale/export read DIR/best alone)
A new best is written completely first (Orbax commits a step by renaming it), then
best.json names it, and only then is the previous best removed: a crash at any point
leaves a complete best that best.json (or, before it is rewritten, the latest step) names.

Validation reads the state between steps and changes nothing in it, the data iterator or
the RNG, so a run with validation trains exactly as one without. In a multi-process run
the images are spread over every device of every process (jaxsr.eval_engine: each image
alone on one device, with the replicated weights) and the per-image scores gathered to
every process, so the numbers are those of a one-process evaluation of the step, bit for
bit (tests/test_pod_eval.py, tests/test_pod_faults.py). The gather is the evaluation's
one collective; a lost peer is caught by jaxsr.faults as during training. Process 0's
verdict on whether the step is the new best is broadcast, so all processes join the same
(collective) Orbax save, and only process 0 makes the previews and writes metrics,
TensorBoard images, best.json and config.json.
"""
import logging
import math
import time

import jax
import numpy as np

from jaxsr import checkpoint, distributed, evaluate, fileio, metrics, paths

PREVIEW_SIZE = 48        # LR side of the TensorBoard crops


def enabled(config) -> bool:
    every = int(config.train.get("eval_every", 0) or 0)
    if every < 0:
        raise ValueError(f"config.train.eval_every={every}: must be >= 0 (0: no validation)")
    if every and not tuple(config.train.get("eval_datasets", ())):
        raise ValueError("config.train.eval_datasets is empty: name the sets to validate on "
                         "(e.g. ('Set5',)) or set config.train.eval_every=0")
    return every > 0


def host_copy(tree):
    """NumPy copies of replicated arrays (this process's first shard: every shard is whole)."""
    return jax.tree.map(lambda x: np.array(x.addressable_data(0)), tree)


def validation_config(config):
    """The config evaluation runs with, minus the bicubic column (not needed per step)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.eval.compare_bicubic = False
    return c


def preview_images(config, apply_fn, sample, set_name: str) -> dict:
    """LR (nearest-upsampled to the SR size) / SR / HR crops of one sample, HxWx3 uint8."""
    s, size = config.scale, PREVIEW_SIZE
    h, w = sample.lr.shape[:2]
    y, x = max((h - size) // 2, 0), max((w - size) // 2, 0)
    lr = sample.lr[y:y + size, x:x + size]
    sr = metrics.quantize(evaluate.super_resolve(config, apply_fn, lr))
    hr = sample.hr[y * s:(y + lr.shape[0]) * s, x * s:(x + lr.shape[1]) * s]
    rgb = lambda img: np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    return {f"val/{set_name}/lr": np.repeat(np.repeat(lr, s, axis=0), s, axis=1),
            f"val/{set_name}/sr": rgb(sr), f"val/{set_name}/hr": rgb(hr)}


def flat_metrics(results: dict) -> dict:
    out = {}
    for name, r in results.items():
        out[f"val/{name}/psnr_y"], out[f"val/{name}/ssim_y"] = r["psnr_y"], r["ssim_y"]
    out["val/psnr_y"] = float(np.mean([r["psnr_y"] for r in results.values()]))
    return out


class Validator:
    """Scores the state on config.train.eval_datasets and keeps the best checkpoint."""

    def __init__(self, config, workdir: str, model, writer):
        self.train_config = config
        self.config = validation_config(config)
        self.workdir, self.model, self.writer = workdir, model, writer
        self.every = int(config.train.eval_every)
        self.num_steps = int(config.train.num_steps)
        self.set_names = tuple(config.train.eval_datasets)
        # Loaded once, before training: a missing set fails now, not after hours.
        self.samples = {n: evaluate.load_samples(self.config, n) for n in self.set_names}
        self.best_psnr = self._previous_best()

    def _previous_best(self) -> float:
        record = checkpoint.read_best(self.workdir)
        if record is None:
            return -math.inf
        if tuple(record.get("eval_datasets", ())) != self.set_names:
            logging.warning("the best checkpoint in %s was chosen on %s, this run validates "
                            "on %s: the next validation replaces it",
                            checkpoint.best_dir(self.workdir), record.get("eval_datasets"),
                            self.set_names)
            return -math.inf
        return float(record["val_psnr_y"])

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.num_steps

    def weights(self, state) -> tuple[dict, bool]:
        """(params to score as NumPy, whether they are the EMA ones)."""
        use_ema = bool(self.config.eval.get("use_ema", True)) and checkpoint.EMA_KEY in state
        return host_copy(state[checkpoint.EMA_KEY if use_ema else "params"]), use_ema

    def run(self, step: int, state) -> dict:
        t0 = time.perf_counter()
        params, used_ema = self.weights(state)
        apply_fn = evaluate.make_apply_fn(self.model, params)
        results = {n: evaluate.score_samples(self.config, apply_fn, n, samples)
                   for n, samples in self.samples.items()}
        images = {}
        if distributed.is_primary():      # the previews are process 0's alone to write
            for n, samples in self.samples.items():
                images.update(preview_images(self.config, apply_fn, samples[0], n))
        scalars = {**flat_metrics(results), "val/seconds": time.perf_counter() - t0}
        self.writer.write(step, scalars)
        self.writer.write_images(step, images)
        logging.info("validation at step %d (%s weights): %s", step,
                     "EMA" if used_ema else "raw",
                     ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
        if self.is_best(scalars["val/psnr_y"]):
            self.save_best(step, state, results, scalars["val/psnr_y"], used_ema)
        return scalars

    def is_best(self, psnr: float) -> bool:
        """Process 0's verdict on every process: the best save is collective, and hosts
        of other CPU types might round the last digit of a PSNR differently."""
        better = psnr > self.best_psnr
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            better = bool(multihost_utils.broadcast_one_to_all(np.asarray(better)))
        return better

    def save_best(self, step: int, state, results: dict, psnr: float, used_ema: bool) -> None:
        where = checkpoint.best_dir(self.workdir)
        weights = {k: state[k] for k in ("params", checkpoint.EMA_KEY) if k in state}
        record = {"step": int(step), "val_psnr_y": psnr, "eval_datasets": list(self.set_names),
                  "weights": "ema" if used_ema else "params",
                  "sets": {n: {"psnr_y": r["psnr_y"], "ssim_y": r["ssim_y"]}
                           for n, r in results.items()}}
        with checkpoint.manager(where, keep=None) as mngr:
            if step not in mngr.all_steps():          # a resumed run may reach it again
                checkpoint.save(mngr, step, weights, self.train_config, kind="params",
                                extra_meta={"best": record})
                mngr.wait_until_finished()
        if distributed.is_primary():
            checkpoint.save_config(where, self.train_config)
            fileio.write_json(paths.join(where, checkpoint.BEST_JSON), record,
                              overwrite=True, indent=2)
            remove_other_steps(where, keep=step)
        self.best_psnr = psnr
        logging.info("new best validation PSNR %.4f at step %d: kept in %s", psnr, step, where)


def remove_other_steps(where: str, keep: int) -> None:
    """Removes the earlier bests once the new one and best.json are complete."""
    folder = checkpoint.checkpoint_dir(where)
    for name in paths.listdir(folder):
        if name.isdigit() and int(name) != keep:
            paths.rmtree(paths.join(folder, name))
