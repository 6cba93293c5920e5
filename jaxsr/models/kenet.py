"""KENet: kernel estimation network for blind SR (Cao, Shen, Zhang, Luo, Wang, ICASSP).

No public code exists (architectures.md section 8); this is built from the paper
(/work/shared/papers/kenet-icassp.txt, section 2.2):

    f0 = ResBlock(ReLU(Conv(LR)))                                   64 channels
    f_s = ResBlock(ReLU(Conv(MaxPool(f_{s-1})))),  s = 1, 2, 3      64 (s + 1) channels
    k = Softmax(FC(ReLU(FC(ReLU(FC(GAP(f3))))))),  FC widths 1024, 1024, l * l

so the estimate is non-negative and sums to 1 by construction.

Call: `model.apply({'params': p}, lr, train=False)` on NHWC LR in [0, 1] ->
[N, l, l] kernels. KENet is not an SR model: pair it with USRNet through
`config.model.name = 'kenet_usrnet'` (jaxsr.models.blind).

Choices the paper leaves open, and why:
* Conv widths: "64s output channels, where s represents the s-th Conv", read as the s-th
  of the four plain convs (64, 128, 192, 256); each ResBlock keeps its input width.
* Convs are 3x3, stride 1, zero padding 1, with bias (PyTorch defaults); ResBlock is
  EDSR's conv-ReLU-conv + identity with res_scale 1 (the paper: two 3x3 convs and a ReLU
  in between); no batch norm, no mean shift (none is mentioned).
* Max pooling 2x2, stride 2, floor on odd sizes (PyTorch `MaxPool2d(2)`), so the LR
  input must be at least 8x8 (`min_input_size`).
* Softmax over the l*l logits of each image; the kernel is read back in row-major order
  (rows = image H axis), the layout of `jaxsr.data.kernels`.
* Parameter count: 4,389,561 for l = 11 (x2), 4,717,561 for l = 21 (x4); 4,265,536 of
  them before the last FC layer.

Loss (section 2.3), `attention_loss`: with p_max the largest tap of the true kernel,
k*_lambda takes the estimate where k_gt > lambda p_max and the true kernel elsewhere;
L = rho0 |k* - k_gt| + rho1 |k*_l1 - k_gt| + rho2 |k*_l2 - k_gt| with lambda = (0.01, 0.1),
rho = (0.01, 0.1, 1). Open choices: the L1 norms are means over taps and batch (PyTorch
`L1Loss`; a sum would only rescale the loss, which Adam ignores up to eps), p_max is per
kernel, and "> lambda p_max" is strict.

Kernel PSNR, `kernel_psnr`: 10 log10(1 / MSE over taps), peak 1 (FKP / DIPFKP's
`calculate_psnr(..., is_kernel=True)`, the metric of the paper's Tables 2 and 3).
Kernels of different sizes are compared after zero-padding the smaller one (centred).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.models import common

HAS_PARAMS = True
LAMBDAS = (0.01, 0.1)
RHOS = (0.01, 0.1, 1.0)


class KENet(nn.Module):
    kernel_size: int = 21
    features: int = 64
    n_stages: int = 3
    fc_features: int = 1024

    @nn.compact
    def __call__(self, lr, train: bool = False):
        del train
        if min(lr.shape[1:3]) < 2 ** self.n_stages:
            raise ValueError(f"KENet needs an LR input of at least {2 ** self.n_stages} px per "
                             f"side ({self.n_stages} 2x2 max-pools), got {lr.shape[1:3]}")
        x = nn.relu(common.conv(self.features, name="conv_0")(lr))
        x = common.ResBlock(self.features, name="rb_0")(x)
        for s in range(1, self.n_stages + 1):
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            width = self.features * (s + 1)
            x = nn.relu(common.conv(width, name=f"conv_{s}")(x))
            x = common.ResBlock(width, name=f"rb_{s}")(x)
        x = jnp.mean(x, axis=(1, 2))                       # global average pooling
        x = nn.relu(nn.Dense(self.fc_features, name="fc_0")(x))
        x = nn.relu(nn.Dense(self.fc_features, name="fc_1")(x))
        logits = nn.Dense(self.kernel_size ** 2, name="fc_2")(x)
        k = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return k.reshape(-1, self.kernel_size, self.kernel_size)


def from_model_config(m, scale: int) -> KENet:
    size = m.get("kernel_size", None) or default_kernel_size(scale)
    return KENet(kernel_size=int(size), features=int(m.get("features", 64)),
                 n_stages=int(m.get("n_stages", 3)),
                 fc_features=int(m.get("fc_features", 1024)))


def default_kernel_size(scale: int) -> int:
    """The paper's sizes: 11x11 for x2, 21x21 for x4 (x3: 15x15, our interpolation)."""
    sizes = {2: 11, 3: 15, 4: 21}
    if int(scale) not in sizes:
        raise ValueError(f"no default KENet kernel size for scale {scale}: set "
                         "config.model.kernel_size (odd)")
    return sizes[int(scale)]


def build(config):
    return from_model_config(config.model, config.scale)


def min_input_size(config) -> int:
    return 2 ** int(config.model.get("n_stages", 3))


# ---------------------------------------------------------------------------------------
# Loss and metric.

def attention_loss(k_est, k_gt, lambdas=LAMBDAS, rhos=RHOS):
    """The adaptive attention loss (eq. 7-8) on [..., l, l] kernels; a scalar."""
    if len(rhos) != len(lambdas) + 1:
        raise ValueError(f"attention loss: need len(rhos) == len(lambdas) + 1, got "
                         f"{len(rhos)} and {len(lambdas)}")
    p_max = jnp.max(k_gt, axis=(-2, -1), keepdims=True)
    loss = rhos[0] * jnp.mean(jnp.abs(k_est - k_gt))
    for lam, rho in zip(lambdas, rhos[1:]):
        k_lam = jnp.where(k_gt > lam * p_max, k_est, k_gt)
        loss = loss + rho * jnp.mean(jnp.abs(k_lam - k_gt))
    return loss


def pad_to(k, size: int):
    """Zero-pads [..., l, l] kernels (centred) to size x size; sizes must share parity."""
    l = k.shape[-1]
    if l > size or (size - l) % 2:
        raise ValueError(f"cannot centre a {l}x{l} kernel in {size}x{size}")
    p = (size - l) // 2
    xp = jnp if isinstance(k, jax.Array) else np
    return xp.pad(k, [(0, 0)] * (k.ndim - 2) + [(p, p), (p, p)])


def kernel_psnr(k_est, k_true):
    """PSNR of kernel estimates, peak 1 (FKP convention); [..., l, l] -> [...] (jnp or np).

    Different odd sizes are compared after centring the smaller kernel in the larger.
    """
    size = max(k_est.shape[-1], k_true.shape[-1])
    a, b = pad_to(k_est, size), pad_to(k_true, size)
    xp = jnp if isinstance(a, jax.Array) or isinstance(b, jax.Array) else np
    dtype = jnp.float32 if xp is jnp else np.float64
    mse = xp.mean(xp.square(xp.asarray(a, dtype) - xp.asarray(b, dtype)), axis=(-2, -1))
    if xp is np:
        with np.errstate(divide="ignore"):          # identical kernels: inf, as FKP
            return 10.0 * np.log10(1.0 / mse)
    return 10.0 * jnp.log10(1.0 / mse)
