"""Entry point: `python -m jaxsr.main --config configs/X.py --workdir DIR [--mode ...]`.

  --mode train     train; resumes automatically from DIR when it has a checkpoint
  --mode evaluate  evaluate the latest checkpoint in DIR on config.eval.datasets
  --mode info      parameter counts and FLOPs per LR pixel -> DIR/info.json
Any config field can be overridden: `--config.train.num_steps=100`.
"""
import logging

from absl import app, flags
from ml_collections import config_flags

from jaxsr import config_util

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/X.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "info"], "What to do.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)   # Orbax's per-save INFO chatter
    from jaxsr import run
    run.run(_MODE.value, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    config_util.check_overrides()
    app.run(main)
