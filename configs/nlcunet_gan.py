"""NLCUnetGAN: the GAN stage of NLCUnet, initialised from a PSNR-stage checkpoint.

  python -m jaxsr.main --config configs/nlcunet_gan.py --workdir workdirs/nlcunet_gan_iso \
      --config.init_from=workdirs/nlcunet_iso_x4 \
      --config.loss.vgg19_weights=/abs/path/vgg19-dcbb9e9d.pth
  python -m jaxsr.main --config configs/nlcunet_gan.py:small --workdir workdirs/nlcunet_gan_small \
      --config.init_from=workdirs/nlcunet_small --config.loss.vgg19_weights=/abs/path/vgg19.npz

Args: as configs/nlcunet.py (iso | aniso, x2 | x3 | x4, small).
Generator loss = 1 * L1 + 1 * perceptual + 0.1 * vanilla GAN (BCE with logits); the
perceptual loss is VGG19 features before ReLU at conv1_2, conv2_2, conv3_4, conv4_4,
conv5_4 (weights 0.1, 0.1, 1, 1, 1), L1 per layer, ImageNet normalisation. Discriminator:
Real-ESRGAN's U-Net with spectral normalisation (64 features, skips), trained every step
with its own Adam (1e-4, betas 0.9/0.99); the official code instead re-created it with
random weights at every step (a bug, not reproduced). Constant lr 1e-4 for both, 600k
steps (the official NLCUnet-gan yml; the paper's text says 6e6). Both networks and their
optimizer states are one Orbax checkpoint, so `--workdir` resume is exact.

VGG19 weights: torchvision's `vgg19-dcbb9e9d.pth` (https://download.pytorch.org/models/
vgg19-dcbb9e9d.pth) cannot be downloaded here; copy it in and set
`config.loss.vgg19_weights` (see `jaxsr/models/vgg.py` to convert it to a torch-free .npz).
Without it the run stops at once. `config.loss.vgg19_random=True` is for tests only.
"""
import ml_collections

from jaxsr.config_base import sibling_config


def get_config(arg=None):
    c = sibling_config(__file__, "nlcunet.py").get_config(arg)   # the PSNR stage
    c.init_from = ""                       # the PSNR-stage workdir (required in practice)
    c.train.objective = "gan"
    c.train.lr = 1e-4
    c.train.lr_milestones = ()
    c.train.num_steps = 600_000
    if "small" in (arg or ""):
        c.train.num_steps = 200
        c.train.lr = 1e-4

    c.loss = ml_collections.ConfigDict()
    c.loss.pixel_weight = 1.0
    c.loss.perceptual_weight = 1.0
    c.loss.gan_weight = 0.1
    c.loss.layer_weights = ml_collections.ConfigDict(
        {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0})
    c.loss.vgg19_weights = ""             # torchvision vgg19 state_dict (.pth) or .npz
    c.loss.vgg19_random = False           # tests only: random VGG (logged loudly)

    c.discriminator = ml_collections.ConfigDict()
    c.discriminator.num_feat = 16 if "small" in (arg or "") else 64
    c.discriminator.skip_connection = True
    c.discriminator.lr = 1e-4
    c.discriminator.b1 = 0.9
    c.discriminator.b2 = 0.99
    return c
