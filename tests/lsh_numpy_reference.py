"""A literal NumPy (float64) transcription of the official NLSA / GLA forward passes.

Written from the PyTorch code as described in /work/shared/spec/architectures.md 2.3 and
3.3, independently of `jaxsr.attention`: batched NCHW-style flow, one global sort over the
round-offset codes of length R*L, the tail-copy padding, `add_adjacent_buckets`, and an
explicit Python loop over batch items, rounds and chunks. The only addition is the L < K
case (the official code crashes there): the chunk becomes L, i.e. dense attention.

Parameters use the Flax layouts (conv kernels HWIO, dense kernels [in, out]).
"""
import numpy as np

EPS = 5e-5


def conv2d(x, kernel, bias):
    """Stride-1 conv with zero padding k//2 (PyTorch default_conv), NHWC / HWIO."""
    kh, kw = kernel.shape[:2]
    ph, pw = kh // 2, kw // 2
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w], kernel[i, j])
    return out + bias


def _logsumexp(s, axis):
    m = np.max(s, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(s - m), axis=axis, keepdims=True))).squeeze(axis)


def lsh_attention(x_embed, y_embed, rotations, chunk_size, superbit, fc_embed=None,
                  fc=None):
    """x_embed [N,L,Cq] (match), y_embed [N,L,C] (assembly), rotations [Cq,R,B].
    fc_embed [N,L,C] and fc = (w0, b0, w2, b2) for GLA's learnable score. -> [N,L,C]."""
    x_embed = np.asarray(x_embed, np.float64)
    y_embed = np.asarray(y_embed, np.float64)
    n, length, cq = x_embed.shape
    c = y_embed.shape[-1]
    n_hashes = rotations.shape[1]
    chunk = chunk_size
    hash_buckets = min(length // chunk + (length // chunk) % 2, 128)
    if length < chunk:                        # extension: one bucket, one chunk of size L
        chunk, hash_buckets = length, 1

    # LSH / SB-LSH
    if hash_buckets == 1:
        codes = np.zeros((n, n_hashes, length), np.int64)
    else:
        rotated = np.einsum("btf,fhi->bhti", x_embed, np.asarray(rotations, np.float64))
        if not superbit:
            rotated = np.concatenate([rotated, -rotated], axis=-1)
        codes = np.argmax(rotated, axis=-1)
    codes = codes + (np.arange(n_hashes) * hash_buckets).reshape(1, -1, 1)
    codes = codes.reshape(n, -1)

    indices = np.argsort(codes, axis=-1, kind="stable")
    undo_sort = np.argsort(indices, axis=-1, kind="stable")
    mod_indices = indices % length
    gather = lambda t: np.take_along_axis(t, mod_indices[..., None], axis=1)
    x_sorted, y_sorted = gather(x_embed), gather(y_embed)
    f_sorted = gather(np.asarray(fc_embed, np.float64)) if fc is not None else None

    padding = chunk - length % chunk if length % chunk != 0 else 0

    def bucketize(t):
        t = t.reshape(n, n_hashes, length, t.shape[-1])
        if padding:
            t = np.concatenate([t, t[:, :, -padding:, :].copy()], axis=2)
        return t.reshape(n, n_hashes, -1, chunk, t.shape[-1])

    x_b, y_b = bucketize(x_sorted), bucketize(y_sorted)
    f_b = bucketize(f_sorted) if fc is not None else None
    norm = np.sqrt(np.sum(x_b ** 2, axis=-1, keepdims=True))
    x_match = x_b / np.maximum(norm, EPS)
    n_chunks = x_b.shape[2]

    ret = np.zeros((n, n_hashes, n_chunks, chunk, c))
    bucket_score = np.zeros((n, n_hashes, n_chunks, chunk))
    for b in range(n):
        for h in range(n_hashes):
            for m in range(n_chunks):
                adj = [m, (m - 1) % n_chunks, (m + 1) % n_chunks]   # self, back, forward
                keys = np.concatenate([x_match[b, h, a] for a in adj], axis=0)   # [3K, Cq]
                vals = np.concatenate([y_b[b, h, a] for a in adj], axis=0)       # [3K, C]
                raw = x_b[b, h, m] @ keys.T                                      # [K, 3K]
                if fc is not None:
                    w0, b0, w2, b2 = fc
                    f3 = np.concatenate([f_b[b, h, a] for a in adj], axis=0)     # [3K, C]
                    g = np.maximum(f3 @ w0 + b0, 0.0) @ w2 + b2                  # [3K, Kfc]
                    raw = raw + g[:, :chunk].T
                lse = _logsumexp(raw, axis=-1)
                ret[b, h, m] = np.exp(raw - lse[:, None]) @ vals
                bucket_score[b, h, m] = lse

    ret = ret.reshape(n, n_hashes, -1, c)
    bucket_score = bucket_score.reshape(n, n_hashes, -1)
    if padding:
        ret, bucket_score = ret[:, :, :-padding], bucket_score[:, :, :-padding]
    ret = np.take_along_axis(ret.reshape(n, -1, c), undo_sort[..., None], axis=1)
    bucket_score = np.take_along_axis(bucket_score.reshape(n, -1), undo_sort, axis=1)
    ret = ret.reshape(n, n_hashes, length, c)
    bucket_score = bucket_score.reshape(n, n_hashes, length, 1)
    probs = np.exp(bucket_score - bucket_score.max(axis=1, keepdims=True))
    probs = probs / probs.sum(axis=1, keepdims=True)
    return np.sum(ret * probs, axis=1)


def _p(params, name):
    return np.asarray(params[name]["kernel"], np.float64), np.asarray(params[name]["bias"],
                                                                      np.float64)


def nlsa(x, params, rotations, chunk_size, res_scale):
    """NonLocalSparseAttention forward on NHWC x with Flax params."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    x_embed = conv2d(x, *_p(params, "conv_match")).reshape(n, h * w, -1)
    y_embed = conv2d(x, *_p(params, "conv_assembly")).reshape(n, h * w, c)
    ret = lsh_attention(x_embed, y_embed, rotations, chunk_size, superbit=False)
    return ret.reshape(n, h, w, c) * res_scale + x


def gla(x, params, rotations, chunk_size, res_scale):
    """GLA forward on NHWC x with Flax params."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    relu = lambda t: np.maximum(t, 0.0)
    x_embed = relu(conv2d(x, *_p(params, "conv_match"))).reshape(n, h * w, -1)
    y_embed = relu(conv2d(x, *_p(params, "conv_assembly"))).reshape(n, h * w, c)
    f_embed = relu(conv2d(x, *_p(params, "conv_assembly_fc"))).reshape(n, h * w, c)
    fc = (*_p(params, "fc_0"), *_p(params, "fc_2"))
    ret = lsh_attention(x_embed, y_embed, rotations, chunk_size, superbit=True,
                        fc_embed=f_embed, fc=fc)
    return ret.reshape(n, h, w, c) * res_scale + x
