"""`sorted_chunk_attention`, `gather_rows` and `gather_scalars`: check the tables, pick interpret or compiled
mode for the platform being traced for, and partition the kernels over the data axis.

Mosaic kernels are custom calls that XLA's SPMD partitioner does not split: in a jit whose
inputs are sharded over the ('data',) mesh, an unwrapped kernel call would gather the whole
batch's tables onto every chip. So when the trace runs under a mesh with a 'data' axis
(`jax.sharding.use_abstract_mesh`, as jaxsr.train's step does) the call is wrapped in
`jax.shard_map` over the group axis: each chip runs the kernels on its own groups (groups =
items x rounds, the items sharded), which needs no communication, as chunks never cross
groups.
"""
import logging

import jax
from jax.sharding import PartitionSpec as P

from jaxsr import target_platform
from jaxsr.attention.kernels import chunk_attention, gather

DATA_AXIS = "data"


def _check(q, k, v, key_bias, self_keys: bool) -> None:
    if q.ndim != 4 or (k is not None and k.shape != q.shape) or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"sorted_chunk_attention: q {q.shape}, k {k.shape}, v {v.shape}: "
                         "expected q, k [G, M, K, Cq] and v [G, M, K, C]")
    if key_bias is not None and key_bias.shape != q.shape[:3] + (q.shape[2],):
        raise ValueError(f"sorted_chunk_attention: key_bias {key_bias.shape}, expected "
                         f"{q.shape[:3] + (q.shape[2],)} ([G, M, K, K])")
    if self_keys and key_bias is not None:
        raise ValueError("self_keys=True needs key_bias=None: the learned score term can "
                         "exceed the |q| bound on the row maximum")


def _use_interpret(interpret: bool | None) -> bool:
    platform = target_platform.current()
    if interpret is None:
        interpret = platform == "cpu"
    if not interpret and platform != "tpu":
        raise ValueError(f"the Pallas chunk-attention kernels are Mosaic (TPU) kernels and do "
                         f"not compile for {platform!r}: use config.model.attention_impl="
                         "'xla' there (or interpret=True)")
    return interpret


def _data_axis_size() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[DATA_AXIS]


def sorted_chunk_attention(q, k, v, key_bias=None, *, self_keys: bool,
                           interpret: bool | None = None):
    """Chunk attention on sorted tables (chunk_attention module doc).

    q [G, M, K, Cq] raw queries, k [G, M, K, Cq] keys (normalised; None: the kernels
    normalise q's chunks themselves, no key table, dk folded into dq), v [G, M, K, C],
    key_bias [G, M, K, K] or None. self_keys: k = normalize(q) and no bias (the softmax
    shift is then |q_i|). Returns o [G, M, K, C] and lse [G, M, K], float32, with a
    custom_vjp. interpret None: Pallas interpret mode when tracing for the CPU, Mosaic
    when tracing for a TPU (`jaxsr.target_platform`)."""
    _check(q, k, v, key_bias, self_keys)
    interpret = _use_interpret(interpret)

    def local(q, k, v, key_bias):
        o, lse = chunk_attention.attention(q, k, v, key_bias, self_keys, interpret)
        return o, lse.reshape(lse.shape[:2] + lse.shape[3:])
    return _partitioned(local, (q, k, v, key_bias), 2)(q, k, v, key_bias)


def attention_forward(q, v, key_bias=None, *, self_keys: bool,
                      interpret: bool | None = None):
    """The forward kernel alone, keys normalize(q) (k None in `sorted_chunk_attention`):
    o [G, M, K, C], lse [G, M, K], float32, no custom_vjp (`attention_backward`)."""
    _check(q, None, v, key_bias, self_keys)
    interpret = _use_interpret(interpret)

    def local(q, v, key_bias):
        o, lse = chunk_attention._forward(q, None, v, key_bias, self_keys, interpret)
        return o, lse.reshape(lse.shape[:2] + lse.shape[3:])
    return _partitioned(local, (q, v, key_bias), 2)(q, v, key_bias)


def attention_backward(q, v, key_bias, lse, do, delta, *, interpret: bool | None = None):
    """dq, dv, dkey_bias (None without key_bias) of `attention_forward` from the output's
    cotangent do [G, M, K, C] and delta = <do, o> - dlse [G, M, K] (float32)."""
    interpret = _use_interpret(interpret)

    def local(q, v, key_bias, lse, do, delta):
        row = lambda x: x.reshape(x.shape[:2] + (1, x.shape[2]))  # noqa: E731
        dq, _, dv, db = chunk_attention.backward_from_delta(
            q, None, v, key_bias, row(lse), do, row(delta), interpret)
        return dq, dv, db
    args = (q, v, key_bias, lse, do, delta)
    if key_bias is None:     # shard_map's outputs: no None
        return _partitioned(lambda *a: local(*a)[:2], args, 2)(*args) + (None,)
    return _partitioned(local, args, 3)(*args)


def gather_rows(x, idx, weights=None, *, interpret: bool | None = None):
    """`gather.gather_rows` (out[n, t] = sum_r w[n, r, t] x[n, idx[n, r, t]]) on each
    chip's items. 32-bit tables only (`gather.supports`)."""
    if not gather.supports(x):
        raise ValueError(f"gather_rows: table dtype {x.dtype}: the row-gather kernel takes "
                         "32-bit tables (use sorted_chunks.xla_gather_rows)")
    interpret = _use_interpret(interpret)

    def local(x, idx, weights):
        return gather.gather_rows(x, idx, weights, interpret=interpret)
    return _partitioned(local, (x, idx, weights), 1)(x, idx, weights)


def gather_scalars(x, idx, *, interpret: bool | None = None):
    """`gather.gather_scalars` (x[n, idx[n, t]], float32 tables fitting VMEM) per chip."""
    if not gather.scalars_supported(x):
        raise ValueError(f"gather_scalars: table {x.dtype}{list(x.shape)}: the kernel takes "
                         "float32 [N, S] tables of at most "
                         f"{gather.VMEM_TABLE_BYTES // 4} entries per item")
    interpret = _use_interpret(interpret)

    def local(x, idx):
        return gather.gather_scalars(x, idx, interpret=interpret)
    return _partitioned(local, (x, idx), 1)(x, idx)


def _partitioned(local, args, n_out: int):
    """`local` wrapped in shard_map over the leading (group or item) axis of `args` (None
    entries: unsharded) when tracing under a mesh with a data axis that divides it."""
    shards, lead = _data_axis_size(), args[0].shape[0]
    if shards > 1 and lead % shards == 0:
        spec = P(DATA_AXIS)
        out_specs = (spec,) * n_out if n_out > 1 else spec
        return jax.shard_map(local, in_specs=tuple(None if a is None else spec for a in args),
                             out_specs=out_specs, check_vma=False)
    if shards > 1:
        # Correct but slow: XLA runs the unsplit kernels on every chip.
        logging.warning("%s: %d groups do not split over the %d-way data axis; the kernels "
                        "run unpartitioned (whole batch per chip)", local.__qualname__,
                        lead, shards)
    return local
