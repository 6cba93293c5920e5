"""Upscale your own images with a trained (or converted) model.

  python -m jaxsr.upscale --workdir DIR --input photo.png --output photo_x4.png
  python -m jaxsr.upscale --workdir DIR --input in_dir/ --output out_dir/ [--tile 256]
      [--tile_overlap 32] [--chop] [--self_ensemble] [--max_memory 4G]
      [--config.model.n_hashes=8 ...]

The model config comes from DIR/config.json (written by train mode and by the converter),
`--config.a.b=v` overrides apply on top of it (unknown keys fail, listing the valid ones),
the params from DIR's latest checkpoint. `--workdir bicubic` needs no checkpoint (MATLAB
bicubic; pick the scale with `--config.scale=4`). Any image mode is accepted (grayscale and
RGBA as in evaluation: `jaxsr.data.images.read_rgb`); outputs are RGB PNGs named like the
inputs.

Several processes (one per host of a pod, or loopback; the jax.distributed flags below, as
`jaxsr.main` takes them) split a folder: each image runs on one device of one process
(jaxsr.eval_engine: dealt by shape, as evaluation's) and is written by that
process, so --output must be a folder every
host sees (gs:// or a shared file system); process 0 checks at the end that it sees every
output. Inputs and outputs may be gs:// folders.

Nothing is lost: before any work, inputs whose outputs would collide (a.jpg and a.png)
get outputs named a_jpg.png and a_png.png, an output that would replace an input (or an
output folder that is the input folder) is refused, and existing outputs are refused unless
`--overwrite`. Each PNG is written atomically. An image that cannot be read, does not fit
in memory (the message names it, its size and the fix: --tile / --max_memory) or cannot be
written is reported and the rest of the folder goes on; the command then lists the failures
and exits with status 1.

From Python: `jaxsr.upscale.upscale(image_array, workdir)` -> SR array, or build an
`Upscaler` once and call it on many arrays.
"""
import ast
import functools
import os
import re
import sys
from typing import Optional, Sequence

import jax
import numpy as np
from absl import app, flags, logging

from jaxsr import config_util, distributed, eval_engine, inference, metrics, models, paths
from jaxsr.data import images

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with config.json and checkpoints, "
                               "or 'bicubic'.")
_INPUT = flags.DEFINE_string("input", None, "An image file or a folder of images.")
_OUTPUT = flags.DEFINE_string("output", None, "Output file (single image) or folder.")
_TILE = flags.DEFINE_integer("tile", None, "LR tile size (0: whole image, tiled "
                             "automatically when it does not fit); default config.eval.tile.")
_OVERLAP = flags.DEFINE_integer("tile_overlap", None, "LR pixels shared by neighbouring "
                                "tiles; default config.eval.tile_overlap.")
_CHOP = flags.DEFINE_boolean("chop", None, "EDSR/NLSN official forward_chop (quadrants, "
                             "shave 10); default config.eval.chop.")
_X8 = flags.DEFINE_boolean("self_ensemble", None, "x8 dihedral self-ensemble; default "
                           "config.eval.self_ensemble.")
_MAX_MEMORY = flags.DEFINE_string("max_memory", "", "Memory budget for one forward, e.g. "
                                  "'2G', '512M' or bytes (default: the device's free memory).")
_TILE_BATCH = flags.DEFINE_integer("tile_batch", 4, "Tiles (or chop patches) per forward.")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step, or 'best' (DIR/best, kept by "
                            "validation; default: latest).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace existing output files "
                                  "(inputs are never replaced).")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "jax.distributed start-up, as jaxsr.main's flag.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds without a heartbeat "
                                  "after which a process counts as lost.")

_OVERRIDES: list[str] = []


# ---------------------------------------------------------------------------------------
# Config overrides (--config.a.b=v on top of DIR/config.json)
# ---------------------------------------------------------------------------------------

def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(['a.b=v', ...], remaining argv); accepts `--config.a.b=v` and `--config.a.b v`."""
    overrides, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            item = a[len("--config."):]
            if "=" not in item:
                if i + 1 >= len(argv):
                    raise ValueError(f"{a} needs a value: {a}=VALUE")
                item, i = f"{item}={argv[i + 1]}", i + 1
            overrides.append(item)
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def _parse_value(text: str, old):
    if isinstance(old, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(old, int):
        return int(text)
    if isinstance(old, float):
        return float(text)
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


def apply_overrides(config, overrides: Sequence[str]):
    """Sets each 'a.b=v' on `config` (typed like the current value); unknown keys raise a
    ValueError that lists the valid keys."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} needs a value: --config.{item}=VALUE")
        if key not in set(config_util.flat_keys(config)):
            valid = "\n  ".join(sorted(config_util.flat_keys(config)))
            raise ValueError(f"unknown config key {key!r}; valid keys:\n  {valid}")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        try:
            with config.unlocked():
                node[leaf] = _parse_value(text, node[leaf])
        except (ValueError, TypeError) as e:
            raise ValueError(f"--config.{key}={text}: {e}") from None
    return config


def bicubic_config():
    from jaxsr.config_base import base_config
    config = base_config()
    config.model.name = "bicubic"
    config.model.round_uint8 = True
    return config


# ---------------------------------------------------------------------------------------
# The Python API
# ---------------------------------------------------------------------------------------

class Upscaler:
    """A model + params + inference options; call it on image arrays."""

    def __init__(self, model, params, config, *, tile=None, tile_overlap=None, chop=None,
                 self_ensemble=None, max_memory=None, tile_batch: int = 4):
        ev = config.eval
        pick = lambda v, default: default if v is None else v
        self.config = config
        self.scale = int(config.scale)
        self.options = dict(
            tile=int(pick(tile, ev.tile)), tile_overlap=int(pick(tile_overlap, ev.tile_overlap)),
            chop=bool(pick(chop, ev.chop)), self_ensemble=bool(pick(self_ensemble, ev.self_ensemble)),
            max_memory=parse_bytes(max_memory), tile_batch=int(tile_batch),
            multiple=models.input_multiple(config), min_size=models.min_input_size(config))
        self.apply_fn = inference.bind(model, params)

    def on(self, device) -> "Upscaler":
        """This upscaler with its params on `device` (jaxsr.eval_engine)."""
        other = object.__new__(Upscaler)
        other.__dict__.update(self.__dict__)
        other.apply_fn = self.apply_fn.on(device)
        return other

    @classmethod
    def from_workdir(cls, workdir: str, overrides: Sequence[str] = (),
                     step: "Optional[int | str]" = None, **options) -> "Upscaler":
        from jaxsr import checkpoint
        if workdir == "bicubic":
            config = bicubic_config()
        else:
            config = checkpoint.load_config(workdir)
        config = apply_overrides(config, overrides)
        model = models.build_model(config)
        params = {}
        if models.has_params(config):
            if workdir == "bicubic":
                raise ValueError(f"model {config.model.name!r} needs a workdir with params")
            params, meta, _ = checkpoint.load_eval_params(
                workdir, checkpoint.parse_step(step),
                use_ema=bool(config.eval.get("use_ema", True)))
            checkpoint.check_meta(meta, config, workdir)
        return cls(model, params, config, **options)

    def upscale_float(self, lr: np.ndarray, *, progress: bool = False,
                      info: Optional[dict] = None) -> np.ndarray:
        """HxWx3 float32 in [0, 1] -> SR float32 (not clamped)."""
        return inference.super_resolve(self.apply_fn, lr, scale=self.scale, progress=progress,
                                       info=info, **self.options)

    def __call__(self, image: np.ndarray, *, progress: bool = False,
                 info: Optional[dict] = None) -> np.ndarray:
        """uint8 image of any mode -> HxWx3 uint8 SR; float in [0, 1] -> float32 SR."""
        image = np.asarray(image)
        if np.issubdtype(image.dtype, np.floating):
            return self.upscale_float(_rgb_float(image), progress=progress, info=info)
        rgb = images.to_rgb_uint8(image)
        sr = self.upscale_float(rgb.astype(np.float32) / 255.0, progress=progress, info=info)
        return metrics.quantize(sr)


def _rgb_float(image: np.ndarray) -> np.ndarray:
    """Float HxW / HxWx{1,2,3,4} -> HxWx3 float32, treating modes like `read_rgb`."""
    x = image if image.ndim == 3 else image[:, :, None]
    if image.ndim not in (2, 3) or x.shape[2] > 4:
        raise ValueError(f"expected an HxW or HxWxC (C <= 4) image, got shape {image.shape}")
    x = np.repeat(x[:, :, :1], 3, axis=2) if x.shape[2] <= 2 else x[:, :, :3]
    return x.astype(np.float32)


@functools.lru_cache(maxsize=2)
def _cached_upscaler(workdir, overrides, step, options) -> Upscaler:
    return Upscaler.from_workdir(workdir, overrides, step, **dict(options))


def upscale(image: np.ndarray, workdir: str, *, overrides: Sequence[str] = (),
            step: "Optional[int | str]" = None, **options) -> np.ndarray:
    """Super-resolves one image array with the model in `workdir` (loaded once and cached).
    Options: tile, tile_overlap, chop, self_ensemble, max_memory, tile_batch."""
    up = _cached_upscaler(workdir, tuple(overrides), step, tuple(sorted(options.items())))
    return up(image)


def parse_bytes(text) -> Optional[int]:
    """'2G', '512M', '1.5GiB', '1000000' -> bytes; None/'' -> None."""
    if text is None or text == "" or text == 0:
        return None
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"--max_memory={text!r}: use bytes or a size like 512M, 2G")
    unit = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * unit)


# ---------------------------------------------------------------------------------------
# Files and folders
# ---------------------------------------------------------------------------------------

def _png_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] + ".png"


def _real(path: str) -> str:
    """What two names of one file share: the resolved path, or the URL (gs://)."""
    return path.rstrip("/") if paths.is_remote(path) else os.path.realpath(path)


def output_pairs(inp: str, out: str) -> list[tuple[str, str]]:
    """(input, output) paths: a folder maps to a folder of <name>.png (<name>_<ext>.png for
    inputs that share a name); a file to `out`, or to out/<name>.png when `out` is a folder
    (existing, ending in '/', or without an extension). Either may be gs://."""
    if paths.isdir(inp):
        files = images.list_images(inp)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(images.IMAGE_EXTENSIONS)}) in {inp}")
        if _real(out) == _real(inp):
            raise ValueError(f"--output {out} is the input folder: the results would replace "
                             "or mix with the originals; choose another --output folder")
        names = [_png_name(f) for f in files]
        counts = {n: names.count(n) for n in names}
        names = [n if counts[n] == 1 else
                 f"{n[:-4]}_{os.path.splitext(f)[1][1:].lower()}.png"
                 for f, n in zip(files, names)]
        return [(f, paths.join(out, n)) for f, n in zip(files, names)]
    if not paths.exists(inp):
        raise FileNotFoundError(f"--input {inp} does not exist")
    as_dir = (out.endswith(("/", os.sep)) or not os.path.splitext(out)[1]
              or paths.isdir(out))
    return [(inp, paths.join(out, _png_name(inp)) if as_dir else out)]


def check_pairs(pairs, overwrite: bool = False) -> None:
    """Refuses, before any work, outputs that collide, replace an input or (without
    `overwrite`) an existing file."""
    real = _real
    inputs = {real(src) for src, _ in pairs}
    seen, problems, existing = {}, [], []
    for src, dst in pairs:
        if real(dst) in inputs:
            problems.append(f"{dst} would replace an input image")
        elif real(dst) in seen:
            problems.append(f"{src} and {seen[real(dst)]} would both be written to {dst}")
        elif paths.exists(dst):
            existing.append(dst)
        seen[real(dst)] = src
    if problems:
        raise ValueError("refusing to start (inputs are never overwritten; pick another "
                         "--output):\n  " + "\n  ".join(problems[:20]))
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} output file(s) exist already, e.g. "
                              f"{', '.join(existing[:5])}; pass --overwrite to replace them "
                              "or choose another --output")


def _oom_message(src: str, lr: np.ndarray, up: Upscaler, error: BaseException) -> str:
    from jaxsr import fileio
    (h, w), s = lr.shape[:2], up.scale
    return (f"{src} ({w}x{h} -> {w * s}x{h * s}) does not fit in memory "
            f"({fileio.describe_error(error, 200)}). Upscale it in tiles with a smaller "
            "--tile (e.g. --tile 128) or a lower --max_memory (e.g. --max_memory 1G)")


def upscale_one(up: Upscaler, src: str, dst: str, overwrite: bool, progress: bool) -> None:
    """Reads, upscales and atomically writes one image (errors propagate)."""
    from tqdm import tqdm
    from jaxsr import fileio
    lr = images.read_rgb(src)
    info = {}
    try:
        sr = up(lr, progress=progress, info=info)
    except Exception as e:  # noqa: BLE001 - only out-of-memory is turned into advice
        from jaxsr import errors
        if errors.is_out_of_memory(e):
            raise MemoryError(_oom_message(src, lr, up, e)) from e
        raise
    if info.get("mode") == "auto-tiled":
        tqdm.write(f"{src}: {lr.shape[1]}x{lr.shape[0]} does not fit in memory "
                   f"(~{info['estimated_bytes'] / 2**20:.0f} MiB > "
                   f"{info['budget_bytes'] / 2**20:.0f} MiB): tiled {info['tile']}px")
    try:
        fileio.write_png(dst, sr, overwrite=overwrite)
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise
        raise OSError(e.errno, f"could not write {dst}: {e.strerror or e}") from e


def run_shape(up: Upscaler, src: str) -> tuple[int, int]:
    """The padded (H, W) an input runs at, from its header (jaxsr.data.images.image_size):
    the engine deals the images by it, as evaluation does, so a device compiles few
    shapes; (0, 0) for a file that cannot be read (its work reports it)."""
    try:
        width, height = images.image_size(src)
    except images.ImageReadError:
        return (0, 0)
    o = up.options
    return tuple(inference.padded_size(n, o["multiple"], o["min_size"]) for n in (height, width))


def upscale_files(up: Upscaler, pairs, progress: bool = True, overwrite: bool = False,
                  devices=None) -> list[tuple[str, str]]:
    """Upscales each (input, output) pair, spread over `devices` (default: all that
    evaluation uses) of every process (jaxsr.eval_engine), each output written by the
    process that made it; an image that cannot be read, does not fit in memory or cannot be
    written is skipped and returned as (path, reason), on every process, after the others
    are done."""
    ups = {d: up.on(d) for d in (devices or eval_engine.eval_devices())}
    alone = len(ups) == 1 and jax.process_count() == 1   # tile bars only then

    def work(device, i):
        src, dst = pairs[i]
        try:
            upscale_one(ups[device], src, dst, overwrite, progress and alone)
        except (images.ImageReadError, MemoryError, OSError) as e:
            logging.error("%s", e)
            return {"failed": str(e)}
        return {}

    shapes = [run_shape(up, src) for src, _ in pairs]
    rows = eval_engine.run([max(1, h * w) for h, w in shapes], shapes, work, what="images",
                           names=[src for src, _ in pairs], bar=progress,
                           devices=list(ups))
    return [(src, r["failed"]) for (src, _), r in zip(pairs, rows) if "failed" in r]


def missing_outputs(pairs, failed) -> list[str]:
    """Outputs of a multi-process run this process cannot see (another host wrote them to
    a folder that is not shared)."""
    skipped = {src for src, _ in failed}
    return [dst for src, dst in pairs if src not in skipped and not paths.exists(dst)]


def upscale_all(up: Upscaler, pairs) -> tuple[list, list]:
    """(failed, outputs process 0 cannot see) of the command's folder, every process."""
    if jax.process_count() > 1:               # every process checked before any writes
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxsr.upscale: outputs checked")
    failed = upscale_files(up, pairs, overwrite=_OVERWRITE.value)
    unseen = missing_outputs(pairs, failed) if jax.process_count() > 1 else []
    distributed.mark_finished()
    return failed, unseen


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)   # no backend-probing INFO lines
    from jaxsr import exit_bound, faults
    try:                 # multi-process: supervised, a lost peer gives one message (faults)
        faults.start("upscale", _WORKDIR.value, _DISTRIBUTED.value, _COORDINATOR.value,
                     _NUM_PROCESSES.value, _PROCESS_ID.value,
                     heartbeat_timeout_s=_HEARTBEAT.value)
        pairs = output_pairs(_INPUT.value, _OUTPUT.value)
        check_pairs(pairs, _OVERWRITE.value)
        up = Upscaler.from_workdir(
            _WORKDIR.value, _OVERRIDES, _STEP.value, tile=_TILE.value,
            tile_overlap=_OVERLAP.value, chop=_CHOP.value, self_ensemble=_X8.value,
            max_memory=_MAX_MEMORY.value, tile_batch=_TILE_BATCH.value)
    except (ValueError, OSError) as e:        # OSError: missing/existing/damaged files
        sys.exit(f"error: {e}")
    with exit_bound.bound():          # ends with its status whatever threads remain
        with faults.guard():
            failed, unseen = upscale_all(up, pairs)
        report(up, pairs, failed, unseen)


def report(up: Upscaler, pairs, failed, unseen) -> None:
    """Process 0's summary; exits 1 (every process) when an image failed."""
    if distributed.is_primary():
        print(f"upscaled {len(pairs) - len(failed)} of {len(pairs)} image(s) x{up.scale} "
              f"-> {_OUTPUT.value}")
    if unseen and distributed.is_primary():
        sys.exit(f"error: {len(unseen)} output(s) written by other processes are not in "
                 f"{_OUTPUT.value} as process 0 sees it (e.g. {unseen[0]}): give --output a "
                 "folder all hosts share (gs:// or a shared file system)")
    if failed:
        sys.exit(f"failed ({len(failed)}):\n  " + "\n  ".join(f"{p}: {r}" for p, r in failed))


def _parse_flags(argv):
    global _OVERRIDES
    try:
        _OVERRIDES, rest = split_overrides(argv[1:])
    except ValueError as e:
        sys.exit(f"error: {e}")
    return flags.FLAGS([argv[0]] + rest)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "input", "output"])
    app.run(main, flags_parser=_parse_flags)
