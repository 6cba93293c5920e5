"""FSRCNN (Dong et al., ECCV 2016): d=56, s=12, m=4, PReLU, deconvolution tail, on Y.

  python -m jaxsr.main --config configs/fsrcnn.py --workdir workdirs/fsrcnn_x2
  python -m jaxsr.main --config configs/fsrcnn.py:gla --workdir workdirs/fsrcnn_gla_x2
  python -m jaxsr.main --config configs/fsrcnn.py:small --workdir workdirs/fsrcnn_small  # 2-core CPU
Args (comma-separated): x2 (default) | x3 | x4; gla (DLSN's GLA plug-in after the
expanding layer, `config.model.attention_positions` to move it); small.
The network sees only Y (CbCr are bicubic-upscaled, see `jaxsr.models.fsrcnn`). Training
deviates from the paper (91 images + General-100, SGD, 1e-3 / 1e-4 for the deconvolution)
on purpose: DIV2K patches, Adam 1e-3 with step decay, L1 on RGB, as the other models here.
"""
from jaxsr.config_base import (base_config, gla_plugin_fields, parse_args, scale_arg,
                               small_cpu_training)


def get_config(arg=None):
    tokens = parse_args(arg, ("x2", "x3", "x4", "gla", "small"), "configs/fsrcnn.py")
    c = base_config()
    c.scale = scale_arg(tokens)
    c.model.name = "fsrcnn"
    c.model.init = "torch"       # the official explicit normal inits (FSRCNN INIT_RULES)
    c.model.d, c.model.s, c.model.m = 56, 12, 4
    c.model.color = "y"                       # 'y' (paper) | 'rgb'
    gla_plugin_fields(c, "gla" in tokens)   # default GLA position: m + 2
    c.data.train_dirs = ("data/DIV2K/DIV2K_train_HR",)
    c.train.batch_size = 16
    c.train.patch_size = c.get_ref("scale") * 48
    c.train.num_steps = 300_000
    c.train.lr = 1e-3
    c.train.lr_halve_every = 100_000
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    if "small" in tokens:
        c.model.chunk_size = 64
        c.model.n_hashes = 2
        small_cpu_training(c, lr_patch=32, num_steps=600, lr=2e-3, milestones=(400,),
                           checkpoint_every=200, log_every=20)
    return c
