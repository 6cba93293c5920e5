"""`gather_rows`: the row permutations of the LSH attention (sort into chunk order, unsort,
merge the rounds, and their gradients) as a Pallas (Mosaic TPU) kernel.

    out[n, t] = sum_r w[n, r, t] * x[n, idx[n, r, t]]      (w = 1 when weights is None)

Why not XLA's gather: a TPU stores a table [S, D] in (8, 128) tiles, and XLA's cost
analysis counts a gather of single rows as reading a whole 8-row tile per row: gathering
the 9216 sorted rows of one NLSA item's [2304, 256] table counts 8x the rows' bytes
(experiments/hlo_bytes.py; 0.2 GB per gather per chip at the paper training input, 4 such
gathers per forward + backward). Here each row is read once:
  * an item's table that fits `VMEM_TABLE_BYTES` is one block, DMA'd to VMEM once per
    item (its block index does not change along the row axis), and rows are copied from
    it with dynamic sublane loads;
  * a larger table (the 512x512 evaluation) stays in HBM and each row is DMA'd alone.
The sum over r runs in float32 in VMEM, so the merge of the hashing rounds and the
gradient's sum over the rounds write one [T, D] output instead of R of them. With R = 1
and no weights the rows are copied unchanged (exact in any dtype).

The kernel's `pl.CostEstimate` counts what it moves: the table once (VMEM variant) or the
gathered rows (DMA variant), the output and the indices, at TPU tile-padded sizes. Neither
variant's speed was measured on hardware (the DMA variant issues one descriptor per row).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxsr.attention.kernels import chunk_attention

F32 = jnp.float32
ROWS_PER_STEP = 256                 # output rows per grid step (indices in SMEM)
VMEM_TABLE_BYTES = 4 * 1024 * 1024  # per-item table kept whole in VMEM up to this size
_VMEM_LIMIT = 16 * 1024 * 1024      # two 4 MiB table buffers + blocks; v4 allows at most 16 MiB


def _accumulate(read_row, idx_ref, w_ref, o_ref, n_rounds: int, rows: int):
    """o_ref[t] = sum_r w[r, t] * read_row(r, idx[r, t]) for the step's rows (float32;
    rows copied unchanged when R == 1 and there are no weights)."""
    plain = w_ref is None and n_rounds == 1

    def row(t, carry):
        acc = None
        for r in range(n_rounds):
            value = read_row(r, t, idx_ref[r, 0, t])
            if not plain:
                value = value.astype(F32)
                if w_ref is not None:
                    value = value * w_ref[r, 0, t]
            acc = value if acc is None else acc + value
        o_ref[pl.ds(t, 1), :] = acc.astype(o_ref.dtype)
        return carry
    jax.lax.fori_loop(0, rows, row, 0)


def _vmem_kernel(idx_ref, *refs, n_rounds: int, rows: int, weighted: bool):
    w_ref, (x_ref, o_ref) = (refs[0], refs[1:]) if weighted else (None, refs)
    _accumulate(lambda r, t, i: x_ref[pl.ds(i, 1), :], idx_ref, w_ref, o_ref, n_rounds, rows)


def _dma_kernel(idx_ref, *refs, n_rounds: int, rows: int, weighted: bool):
    """Rows DMA'd from the HBM table into a [R * rows, D] VMEM buffer, then summed."""
    w_ref, (x_hbm, o_ref, buf, sem) = (refs[0], refs[1:]) if weighted else (None, refs)
    item = pl.program_id(0)

    def copy(k):
        r, t = k // rows, k % rows
        return pltpu.make_async_copy(x_hbm.at[item, pl.ds(idx_ref[r, 0, t], 1)],
                                     buf.at[pl.ds(k, 1)], sem.at[0])

    def start(k, carry):
        copy(k).start()
        return carry

    def wait(k, carry):
        copy(k).wait()
        return carry
    jax.lax.fori_loop(0, n_rounds * rows, start, 0)
    jax.lax.fori_loop(0, n_rounds * rows, wait, 0)
    _accumulate(lambda r, t, i: buf[pl.ds(r * rows + t, 1), :], idx_ref, w_ref, o_ref,
                n_rounds, rows)


def _cost(x, idx, out_shape, in_vmem: bool) -> pl.CostEstimate:
    n, n_rounds, t = idx.shape
    d = x.shape[-1]
    moved = chunk_attention._padded_bytes(x.shape, x.dtype) if in_vmem else \
        n * n_rounds * t * chunk_attention._padded_bytes((1, d), x.dtype) // 8
    moved += chunk_attention._padded_bytes(out_shape.shape, out_shape.dtype)
    moved += 2 * idx.size * 4                         # indices (and weights), SMEM
    return pl.CostEstimate(flops=2 * n * n_rounds * t * d, transcendentals=0,
                           bytes_accessed=int(moved))


def supports(x) -> bool:
    """Whether `gather_rows` takes this table (32-bit dtypes)."""
    return jnp.dtype(x.dtype).itemsize == 4


def gather_rows(x, idx, weights=None, *, interpret: bool = False):
    """x [N, S, D], idx [N, R, T] int32 in [0, S), weights [N, R, T] or None -> [N, T, D]
    in x's dtype (module doc). One device's items: call inside shard_map on a mesh.

    32-bit tables only: Mosaic loads (and DMAs) single rows of 32-bit types, not of a
    16-bit table's packed 16-row tiles (`supports`)."""
    n, s, d = x.shape
    n_rounds, t = idx.shape[1:]
    rows = min(ROWS_PER_STEP, -(-t // 8) * 8)
    padded_t = -(-t // rows) * rows
    if padded_t != t:        # extra rows read row 0 and are cut off below
        pad = ((0, 0), (0, 0), (0, padded_t - t))
        idx = jnp.pad(idx, pad)
        weights = None if weights is None else jnp.pad(weights, pad)
    blocks = lambda a: a.reshape(n, n_rounds, padded_t // rows, 1, rows)  # noqa: E731
    small = pl.BlockSpec((None, n_rounds, None, 1, rows), lambda a, b: (a, 0, b, 0, 0),
                         memory_space=pltpu.SMEM)
    in_vmem = chunk_attention._padded_bytes((s, d), x.dtype) <= VMEM_TABLE_BYTES
    kw = dict(n_rounds=n_rounds, rows=rows, weighted=weights is not None)
    out_shape = jax.ShapeDtypeStruct((n, padded_t, d), x.dtype)
    if in_vmem:
        kernel, table, scratch = functools.partial(_vmem_kernel, **kw), \
            pl.BlockSpec((None, s, d), lambda a, b: (a, 0, 0)), []
    else:
        kernel, table = functools.partial(_dma_kernel, **kw), pl.BlockSpec(memory_space=pl.ANY)
        scratch = [pltpu.VMEM((n_rounds * rows, d), x.dtype), pltpu.SemaphoreType.DMA((1,))]
    out = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(n, padded_t // rows),
        in_specs=[small] + ([small] if weights is not None else []) + [table],
        out_specs=pl.BlockSpec((None, rows, d), lambda a, b: (a, b, 0)),
        scratch_shapes=scratch, name="lsh_gather_rows", interpret=interpret,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"),
                                             vmem_limit_bytes=_VMEM_LIMIT),
        cost_estimate=_cost(x, idx, out_shape, in_vmem),
    )(blocks(idx.astype(jnp.int32)),
      *([blocks(weights.astype(F32))] if weights is not None else []), x)
    return out[:, :t] if padded_t != t else out


# --------------------------------------------------------------------------- scalars

SCALARS_PER_STEP = 1024       # outputs per grid step: an [8, 128] block


def _scalar_kernel(idx_ref, x_ref, o_ref, *, rows: int):
    """o[t] = x[idx[t]], x and o lane-dense ([., 128]): the row holding x[i] is loaded and
    its lane i % 128 picked by a masked lane sum; 128 outputs fill one output row."""
    lane = jax.lax.broadcasted_iota(jnp.int32, (1, 128), 1)

    def out_row(g, carry):
        def one(j, vec):
            i = idx_ref[0, g * 128 + j]
            row = x_ref[pl.ds(i // 128, 1), :]
            value = jnp.sum(jnp.where(lane == i % 128, row, 0.0), axis=1, keepdims=True)
            return jnp.where(lane == j, value, vec)
        o_ref[pl.ds(g, 1), :] = jax.lax.fori_loop(0, 128, one, jnp.zeros((1, 128), F32))
        return carry
    jax.lax.fori_loop(0, rows // 128, out_row, 0)


def scalars_supported(x) -> bool:
    """Whether `gather_scalars` takes this [N, S] table (float32, S fitting VMEM)."""
    return x.dtype == F32 and x.shape[-1] * 4 <= VMEM_TABLE_BYTES


def gather_scalars(x, idx, *, interpret: bool = False):
    """x [N, S] float32, idx [N, T] int32 in [0, S) -> x[n, idx[n, t]], [N, T]. XLA counts
    a gather of single elements as one (8, 128) tile read per element (4 KB for 4 bytes);
    here each item's table is read into VMEM once, lane-dense."""
    n, s = x.shape
    t = idx.shape[1]
    rows = SCALARS_PER_STEP
    padded_s, padded_t = -(-s // 128) * 128, -(-t // rows) * rows
    x = jnp.pad(x, ((0, 0), (0, padded_s - s))).reshape(n, padded_s // 128, 128)
    idx = jnp.pad(idx.astype(jnp.int32), ((0, 0), (0, padded_t - t)))
    moved = n * (padded_s + 2 * padded_t) * 4
    out = pl.pallas_call(
        functools.partial(_scalar_kernel, rows=rows),
        out_shape=jax.ShapeDtypeStruct((n, padded_t // 128, 128), F32),
        grid=(n, padded_t // rows),
        in_specs=[pl.BlockSpec((None, None, 1, rows), lambda a, b: (a, b, 0, 0),
                               memory_space=pltpu.SMEM),
                  pl.BlockSpec((None, padded_s // 128, 128), lambda a, b: (a, 0, 0))],
        out_specs=pl.BlockSpec((None, rows // 128, 128), lambda a, b: (a, b, 0)),
        name="lsh_gather_scalars", interpret=interpret,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"),
                                             vmem_limit_bytes=_VMEM_LIMIT),
        cost_estimate=pl.CostEstimate(flops=0, transcendentals=0, bytes_accessed=moved),
    )(idx.reshape(n, padded_t // rows, 1, rows), x)
    return out.reshape(n, padded_t)[:, :t]
