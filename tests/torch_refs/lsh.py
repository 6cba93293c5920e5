"""Hash-bucketed sparse attention of NLSN (NLSA, spec 2.3) and DLSN (GLA, spec 3.3), NCHW.

Deviations from the official code, both required for parity (spec section 10):
* the bucket sort is stable (`torch.sort(stable=True)`); `module.stable_sort = False`
  restores the official unstable `torch.sort` (for timing: everything else that costs
  time is the official code's, op by op: shapes, op order, einsum layouts, the
  tail-copy padding, the look-around concatenations, the N-expanded rotation einsum);
* `module.rotations` may hold an injected rotation tensor, used instead of a fresh random
  draw: NLSA [Cq, R, nb/2] (Gaussian), GLA [Cq, R, nb] (orthogonal per round).
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import common


# Callables given each chunk score tensor [N, R, M, K, 3K] (after the learned term) as it
# is computed, so a test can measure how peaked its attention is; empty by default.
score_observers = []


def n_buckets(length, chunk_size):
    """nb = min(L//K + (L//K) % 2, 128): rounded up to even, capped (spec 2.3)."""
    n = length // chunk_size
    return min(n + n % 2, 128)


def sort_gather(x, src, n_hashes):
    """x [N, L, D], src [N, R*L] -> [N, R, L, D]."""
    n, length, d = x.shape
    out = x.gather(1, src.unsqueeze(-1).expand(-1, -1, d))
    return out.view(n, n_hashes, length, d)


def pad_chunks(x, chunk_size):
    """[N, R, L, D] -> [N, R, M, K, D], padding each round with a copy of its last p items."""
    n, r, length, d = x.shape
    p = (chunk_size - length % chunk_size) % chunk_size
    if p:
        x = torch.cat([x, x[:, :, -p:].clone()], dim=2)
    return x.view(n, r, -1, chunk_size, d)


def look_around(x):
    """[N, R, M, K, D] -> [N, R, M, 3K, D]: own chunk, previous, next (wrapping)."""
    back = torch.cat([x[:, :, -1:], x[:, :, :-1]], dim=2)
    fwd = torch.cat([x[:, :, 1:], x[:, :, :1]], dim=2)
    return torch.cat([x, back, fwd], dim=3)


def hash_codes(q, rotations, n_hashes, nb, negate):
    """Cross-polytope (negate, NLSN) or Super-Bit argmax codes with round offsets -> [N, R*L]."""
    n, length, _ = q.shape
    # the official layout: rotations expanded over the batch, one batched einsum
    proj = torch.einsum("btf,bfhi->bhti", q, rotations.unsqueeze(0).expand(n, -1, -1, -1))
    if negate:
        proj = torch.cat([proj, -proj], dim=-1)
    codes = proj.argmax(dim=-1) + (torch.arange(n_hashes) * nb).view(1, -1, 1)
    return codes.reshape(n, n_hashes * length)


def attend(q, v, codes, n_hashes, chunk_size, extra=None, stable=True):
    """Chunked attention in hash order and the round merge; q [N,L,Cq], v [N,L,C] -> [N,L,C].

    `extra(src)`: optional callable that, given the sorted source positions [N, R*L],
    returns a score term [N, R, M, K, 3K] (DLSN's learnable similarity).
    """
    n, length, c = v.shape
    order = codes.sort(dim=-1, stable=True).indices if stable else codes.sort(dim=-1).indices
    undo = order.sort(dim=-1).indices
    src = order % length
    qs = pad_chunks(sort_gather(q, src, n_hashes), chunk_size)
    vs = pad_chunks(sort_gather(v, src, n_hashes), chunk_size)
    k3 = look_around(F.normalize(qs, p=2, dim=-1, eps=5e-5))
    v3 = look_around(vs)
    scores = torch.einsum("nrmkd,nrmjd->nrmkj", qs, k3)
    if extra is not None:
        scores = scores + extra(src)
    for observe in score_observers:
        observe(scores)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.einsum("nrmkj,nrmjc->nrmkc", torch.exp(scores - lse), v3)
    out = out.reshape(n, n_hashes, -1, c)[:, :, :length].reshape(n, n_hashes * length, c)
    lse = lse.reshape(n, n_hashes, -1)[:, :, :length].reshape(n, n_hashes * length)
    out = out.gather(1, undo.unsqueeze(-1).expand(-1, -1, c)).view(n, n_hashes, length, c)
    lse = lse.gather(1, undo).view(n, n_hashes, length, 1)
    weights = torch.softmax(lse, dim=1)
    return (out * weights).sum(dim=1)


def _flat(x):
    """NCHW -> [N, H*W, C] in raster order."""
    return x.flatten(2).transpose(1, 2)


class NonLocalSparseAttention(nn.Module):
    """NLSN's NLSA: conv_match conv3 C->C/r (linear), conv_assembly conv1 C->C (linear)."""

    def __init__(self, n_hashes=4, channels=64, k_size=3, reduction=4, chunk_size=144,
                 conv=common.default_conv, res_scale=1.0):
        super().__init__()
        self.chunk_size, self.n_hashes, self.res_scale = chunk_size, n_hashes, res_scale
        self.conv_match = common.BasicBlock(conv, channels, channels // reduction, k_size)
        self.conv_assembly = common.BasicBlock(conv, channels, channels, 1)
        self.rotations = None
        self.stable_sort = True

    def forward(self, x):
        n, c, h, w = x.shape
        q, v = _flat(self.conv_match(x)), _flat(self.conv_assembly(x))
        nb = n_buckets(h * w, self.chunk_size)
        rot = self.rotations
        if rot is None:
            rot = torch.randn(q.shape[-1], self.n_hashes, nb // 2, dtype=x.dtype)
        codes = hash_codes(q, rot, self.n_hashes, nb, negate=True)
        out = attend(q, v, codes, self.n_hashes, self.chunk_size, stable=self.stable_sort)
        return out.permute(0, 2, 1).reshape(n, c, h, w).contiguous() * self.res_scale + x


def orthogonal_rotations(cq, n_hashes, nb):
    """DLSN's Super-Bit rotations: one `orthogonal_` [Cq, nb] per round -> [Cq, R, nb]."""
    mats = [nn.init.orthogonal_(torch.empty(cq, nb)) for _ in range(n_hashes)]
    return torch.cat(mats, dim=-1).view(cq, n_hashes, nb)


class GLA(nn.Module):
    """DLSN's Global Learnable Attention: ReLU embeddings, Super-Bit LSH, learnable score."""

    def __init__(self, n_hashes=4, channels=64, k_size=3, reduction=4, chunk_size=144,
                 conv=common.default_conv, res_scale=1.0):
        super().__init__()
        self.chunk_size, self.n_hashes, self.res_scale = chunk_size, n_hashes, res_scale
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.conv_match = common.BasicBlock(conv, channels, channels // reduction, k_size, act=relu())
        self.conv_assembly = common.BasicBlock(conv, channels, channels, k_size, act=relu())
        self.conv_assembly_fc = common.BasicBlock(conv, channels, channels, k_size, act=relu())
        self.fc = nn.Sequential(nn.Linear(channels, chunk_size), nn.ReLU(inplace=True),
                                nn.Linear(chunk_size, chunk_size))
        self.rotations = None
        self.stable_sort = True

    def forward(self, x):
        n, c, h, w = x.shape
        q, v = _flat(self.conv_match(x)), _flat(self.conv_assembly(x))
        f = _flat(self.conv_assembly_fc(x))
        nb = n_buckets(h * w, self.chunk_size)
        rot = self.rotations
        if rot is None:
            rot = orthogonal_rotations(q.shape[-1], self.n_hashes, nb)
        codes = hash_codes(q, rot, self.n_hashes, nb, negate=False)

        def learned_score(src):
            f3 = look_around(pad_chunks(sort_gather(f, src, self.n_hashes), self.chunk_size))
            return self.fc(f3).transpose(-1, -2)          # g[j][i] -> [.., K (query), 3K]

        out = attend(q, v, codes, self.n_hashes, self.chunk_size, extra=learned_score,
                     stable=self.stable_sort)
        return out.permute(0, 2, 1).reshape(n, c, h, w).contiguous() * self.res_scale + x
