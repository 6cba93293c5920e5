"""Dense (quadratic) attention: the reference point for the sparse modules.

`NonLocalAttention` is the embedded-Gaussian non-local block of Wang et al. (2018) as
coded in NLSN's `attention.py` (class `NonLocalAttention`, from CSNLN): three 1x1 convs
each followed by a PReLU, softmax(theta(x) phi(x)^T) g(x), and the residual
`out + res_scale * x` (note: in that code res_scale multiplies the *input*).

Torch key -> Flax path: `conv_match1.0.weight` -> `conv_match1_0/kernel`,
`conv_match1.1.weight` (PReLU, shape (1,)) -> `conv_match1_1/negative_slope` (scalar);
same for `conv_match2` and `conv_assembly`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsr.models import common


def dense_attention(q, k, v):
    """softmax(q k^T) v over the whole sequence; q [..., L, D], k [..., L, D],
    v [..., L, C]. Scores and softmax in float32. Memory O(L^2)."""
    s = jnp.einsum("...id,...jd->...ij", q, k, preferred_element_type=jnp.float32)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("...ij,...jc->...ic", p.astype(v.dtype), v,
                      preferred_element_type=jnp.float32).astype(v.dtype)


class NonLocalAttention(nn.Module):
    """Dense non-local attention on NHWC features (channels inferred from the input).

    Attributes:
      reduction: theta/phi width is C // reduction (official default 2).
      res_scale: multiplies the input in the residual (official: `out + res_scale * x`).
    """
    reduction: int = 2
    res_scale: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        n, h, w, c = x.shape
        cm = c // self.reduction
        theta = nn.PReLU(negative_slope_init=0.25, name="conv_match1_1")(
            common.conv(cm, 1, name="conv_match1_0")(x))
        phi = nn.PReLU(negative_slope_init=0.25, name="conv_match2_1")(
            common.conv(cm, 1, name="conv_match2_0")(x))
        g = nn.PReLU(negative_slope_init=0.25, name="conv_assembly_1")(
            common.conv(c, 1, name="conv_assembly_0")(x))
        out = dense_attention(theta.reshape(n, h * w, cm), phi.reshape(n, h * w, cm),
                              g.reshape(n, h * w, c))
        return out.reshape(n, h, w, c) + self.res_scale * x
