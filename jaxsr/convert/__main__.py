"""Convert checkpoints between jaxsr (Orbax, Flax) and PyTorch (official key names).

  python -m jaxsr.convert to-torch   --config configs/X.py --workdir DIR --output model.pth \
                                     [--format pth|safetensors] [--step N|best] [--overwrite]
  python -m jaxsr.convert from-torch --config configs/X.py --input model.pth --workdir DIR \
                                     [--param_key params_ema] [--rgb_range 255] [--force]

to-torch writes a state_dict that the official PyTorch class loads with strict=True
(--config may be left out when DIR has the config.json written by training); a checkpoint
with EMA weights gives BasicSR's {'params': ..., 'params_ema': ...} (.pth; a .safetensors
gets the EMA weights, or the raw ones with --config.eval.use_ema=false).
from-torch writes a params-only checkpoint into DIR that `python -m jaxsr.main --mode
evaluate` and `--mode train` (fine-tuning) pick up; a BasicSR file with both 'params' and
'params_ema' keeps both (the EMA ones as EMA weights). Both refuse anything that does not match
exactly, listing every missing, unexpected and mis-shaped key.

Nothing is ever lost: to-torch writes atomically and refuses an existing --output unless
--overwrite; from-torch checks everything before writing, refuses a DIR that already holds
a run (checkpoints or config.json) and, with --force, writes into a new subfolder
DIR/converted/<file stem> instead, leaving the run as it was.
Config fields can be overridden as in jaxsr.main: --config.scale=4.
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxsr import config_util

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/X.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "jaxsr workdir (checkpoints/ inside).")
_OUTPUT = flags.DEFINE_string("output", None, "to-torch: the .pth/.safetensors file to write.")
_INPUT = flags.DEFINE_string("input", None, "from-torch: the .pth/.pt/.safetensors to read.")
_FORMAT = flags.DEFINE_enum("format", None, ["pth", "safetensors"],
                            "to-torch file format (default: from the --output extension).")
_RGB_RANGE = flags.DEFINE_float(
    "rgb_range", None, "Pixel range of the PyTorch file when it differs from the config's "
    "(EDSR-PyTorch and RCAN release models: 255); EDSR/RCAN/FSRCNN tensors are rescaled "
    "exactly.")
_STEP = flags.DEFINE_string("step", None, "to-torch: the checkpoint step, or 'best' "
                            "(DIR/best, kept by validation; default: latest).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "to-torch: replace an existing --output.")
_FORCE = flags.DEFINE_boolean(
    "force", False, "from-torch into a DIR that holds a run: write into a new subfolder "
    "DIR/converted/<file stem> (never replaces or deletes anything).")
_PARAM_KEY = flags.DEFINE_string(
    "param_key", None, "from-torch: entry holding the state_dict (default: 'params_ema', "
    "'params', 'state_dict' or 'model' when present, else the file itself).")

COMMANDS = ("to-torch", "from-torch")


def _config(required: bool):
    if _CONFIG.value is not None:
        return _CONFIG.value
    if required:
        raise app.UsageError("--config is required")
    from jaxsr import checkpoint
    return checkpoint.load_config(_WORKDIR.value)


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m jaxsr.convert {{{'|'.join(COMMANDS)}}} "
                             f"--config ... (got {argv[1:]})")
    logging.getLogger().setLevel(logging.INFO)
    from jaxsr import convert
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    try:
        if argv[1] == "to-torch":
            if not _OUTPUT.value:
                raise app.UsageError("to-torch needs --output FILE.pth|FILE.safetensors")
            from jaxsr import checkpoint
            summary = convert.export_workdir(_config(False), _WORKDIR.value, _OUTPUT.value,
                                             _FORMAT.value, _RGB_RANGE.value,
                                             step=checkpoint.parse_step(_STEP.value),
                                             overwrite=_OVERWRITE.value)
            entries = f", entries {summary['entries']}" if summary.get("entries") else ""
            print(f"wrote {_OUTPUT.value}: {summary['keys']} tensors, {summary['params']:,} "
                  f"values ({summary['format']}, from step {summary['step']}{entries})")
        else:
            if not _INPUT.value:
                raise app.UsageError("from-torch needs --input FILE.pth")
            summary = convert.import_file(_config(True), _INPUT.value, _WORKDIR.value,
                                          _PARAM_KEY.value, _RGB_RANGE.value,
                                          force=_FORCE.value)
            ema = " (+ its EMA weights)" if summary.get("ema") else ""
            print(f"wrote {summary['checkpoint']}: {summary['keys']} tensors, "
                  f"{summary['params']:,} params{ema} from {_INPUT.value}")
    except (convert.ConversionError, ImportError, OSError, ValueError) as e:
        # OSError: missing or existing files, damaged checkpoints; ImportError: no torch
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    config_util.check_overrides()
    app.run(main)
