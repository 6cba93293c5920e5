"""KENet (Cao et al., ICASSP): kernel estimation for blind SR, trained on its own.

  python -m jaxsr.main --config configs/kenet.py --workdir workdirs/kenet_x2
  python -m jaxsr.main --config configs/kenet.py:x4 --workdir workdirs/kenet_x4
  python -m jaxsr.main --config configs/kenet.py:small --workdir workdirs/kenet_small  # 2-core CPU
Paper (section 3.1): DIV2K + Flickr2K HR; LR synthesised with anisotropic Gaussian kernels
(sigma_1, sigma_2 in [0.2, 4.0], theta in [0, pi]; 11x11 at x2, 21x21 at x4), LR patches
96x96 with rotation/flip augmentation, batch 64, Adam lr 1e-2 decayed x0.1 every 200k of
600k iterations, adaptive attention loss (lambda 0.01/0.1, rho 0.01/0.1/1). Adam's betas
are not given (PyTorch defaults 0.9/0.999 here). The degradation is the 'kenet' preset of
jaxsr.data.degradations (true convolution, upper-left decimation: USRNet's model, since the
kernels feed USRNet; 8-bit LR) with reflect instead of circular padding, because the
crops are patches of larger images (wrap-around would paste the opposite border in).
Metric: kernel PSNR (logged each step). Super-resolve with configs/kenet_usrnet.py.
Args (comma-separated): x2 (default) | x4, small, l1 (the paper's L1 ablation, Table 2).
"""
import math

from jaxsr.config_base import base_config, parse_args, scale_arg, small_cpu_training

LR_PATCH = 96


def get_config(arg=None):
    tokens = parse_args(arg, ("x2", "x4", "small", "l1"), "configs/kenet.py")
    c = base_config()
    c.scale = scale_arg(tokens)
    c.model.name = "kenet"
    c.model.init = "torch"       # PyTorch defaults (no official code)
    c.model.kernel_size = {2: 11, 4: 21}[c.scale]
    c.model.features = 64
    c.model.n_stages = 3
    c.model.fc_features = 1024
    set_kernel_degradation(c)
    c.data.train_dirs = ("data/DIV2K/DIV2K_train_HR", "data/Flickr2K/Flickr2K_HR")
    c.data.augment = True
    c.train.objective = "kernel"
    c.train.kernel_loss = "l1" if "l1" in tokens else "attention"
    c.train.batch_size = 64
    c.train.patch_size = c.scale * LR_PATCH
    c.train.num_steps = 600_000
    c.train.lr = 1e-2
    c.train.lr_milestones = (200_000, 400_000)
    c.train.lr_gamma = 0.1
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    c.eval.datasets = ()           # KENet alone outputs kernels; evaluate kenet_usrnet
    if "small" in tokens:
        shrink_kenet(c.model)
        small_cpu_training(c, lr_patch=32, num_steps=600, lr=1e-3, milestones=(400,),
                           checkpoint_every=200, log_every=20, datasets=None)
    return c


def set_kernel_degradation(c):
    """The 'kenet' preset at the model's kernel size, reflect-padded for patch training."""
    c.degradation.name = "kenet"
    c.degradation.kernel_size = c.model.kernel_size
    c.degradation.sigma_min, c.degradation.sigma_max = 0.2, 4.0
    c.degradation.theta_min, c.degradation.theta_max = 0.0, math.pi
    c.degradation.blur_padding = "reflect"


def shrink_kenet(m):
    """16 base channels and 64-wide FC layers: trains on 2 CPU cores in minutes."""
    m.features = 16
    m.fc_features = 64
