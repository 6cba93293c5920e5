"""Blind SR: KENet's kernel estimate fed to USRNet ('kenet_usrnet'), or USRNet with the true
kernel ('gt_usrnet', the paper's upper bound, arg `gt`).

  # 1. KENet: train it (configs/kenet.py). 2. USRNet: convert KAIR's usrnet.pth (at the
  #    scale you evaluate: checkpoints record it; x2 needs its own workdir with :usrnet_only)
  python -m jaxsr.convert from-torch --config configs/kenet_usrnet.py:x4,usrnet_only \
      --input usrnet.pth --workdir workdirs/usrnet
  # 3. put both together and evaluate on blurred sets and DIV2KRK
  python -m jaxsr.models.blind --config configs/kenet_usrnet.py:x4 \
      --kenet_workdir workdirs/kenet_x4 --usrnet_workdir workdirs/usrnet --workdir workdirs/blind_x4
  python -m jaxsr.main --config configs/kenet_usrnet.py:x4 --workdir workdirs/blind_x4 --mode evaluate
  # USRNet with the true kernels (reads the 'usrnet' checkpoint: same parameters)
  python -m jaxsr.main --config configs/kenet_usrnet.py:x4,gt --workdir workdirs/usrnet --mode evaluate
  # optional: fine-tune KENet inside the pipeline (USRNet frozen), objective 'kernel'
  python -m jaxsr.main --config configs/kenet_usrnet.py:x4 --workdir workdirs/blind_ft \
      --config.init_from=workdirs/blind_x4
Evaluation reports image PSNR/SSIM (Y, crop = scale, as the paper) and kernel PSNR. The
test sets carry their kernels (`jaxsr.data.blind_sets`); USRNet gets noise level
`model.sigma` (0: the sets are noise-free apart from 8-bit rounding). Sets made by blur +
MATLAB bicubic (Gaussian8, BD) give USRNet their effective kernel (docs/lnln_kenet.md).
Args (comma-separated): x2 (default) | x4; gt; tiny (KAIR's usrnet_tiny weights); small
(2-core CPU: tiny KENet and a 2-iteration 8-16-32-32 USRNet); usrnet_only (the plain
'usrnet' model, for converting KAIR weights); train_usrnet (train USRNet itself, non-blind,
objective 'nonblind': `python -m jaxsr.main --config configs/kenet_usrnet.py:x2,train_usrnet
--workdir workdirs/usrnet_x2`).
"""
from jaxsr.config_base import parse_args, sibling_config


def get_config(arg=None):
    known = ("x2", "x4", "gt", "tiny", "small", "usrnet_only", "train_usrnet")
    tokens = parse_args(arg, known, "configs/kenet_usrnet.py")
    kenet_args = ",".join(t for t in tokens if t in ("x2", "x4", "small"))
    c = sibling_config(__file__, "kenet.py").get_config(kenet_args)
    c.model.name = "gt_usrnet" if "gt" in tokens else "kenet_usrnet"
    if "usrnet_only" in tokens:
        c.model.name = "usrnet"
    c.model.variant = "usrnet_tiny" if "tiny" in tokens else "usrnet"
    c.model.sigma = 0.0
    c.eval.datasets = ("Set5_kenet", "Set14_kenet", "B100_kenet", "Urban100_kenet", "DIV2KRK")
    c.eval.use_lr_files = True
    c.eval.chop = False            # USRNet's data step is global (FFT): no tiling
    c.train.num_steps = 100_000    # fine-tuning KENet inside the pipeline
    c.train.lr = 1e-4
    c.train.lr_milestones = ()
    if "train_usrnet" in tokens:
        # USRNet itself, non-blind, as KAIR's train_usrnet.json: HR patch 96, batch 48,
        # Adam 1e-4 halved at 100k/200k/300k/400k, L1, on KAIR's classical degradation
        # (25x25 motion or Gaussian kernels, noise 0-24); --config.degradation.name=kenet
        # trains on KENet's kernel distribution (no noise) instead.
        c.model.name = "usrnet"
        c.degradation.name = "kair"
        c.train.objective = "nonblind"
        c.train.patch_size, c.train.batch_size = 96, 48
        c.train.num_steps = 500_000
        c.train.lr_milestones = (100_000, 200_000, 300_000, 400_000)
    if "small" in tokens:
        c.model.n_iter, c.model.h_nc, c.model.nc, c.model.nb = 2, 8, (8, 16, 32, 32), 1
        c.train.num_steps = 200
        c.eval.datasets = ("Set5_kenet",)
        if "train_usrnet" in tokens:
            c.train.patch_size, c.train.batch_size, c.train.num_steps = 48, 4, 100
    return c
