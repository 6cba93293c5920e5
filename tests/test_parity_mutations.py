"""Network parity with teeth: NLSN and DLSN against the torch references (tests/torch_refs)
in a regime where the attention details matter, and mutation checks that the same parity
check fails for plausible bugs in jaxsr.attention.

Why: with weights of 0.5/sqrt(fan_in) (test_torch_parity's `random_params`) the chunk
scores are ~0.1, every softmax and the merge of hash rounds nearly uniform: a plain-mean
merge stayed within 5e-7 of torch on its L = 36 NLSN case; and its L <= 5K means every
query sees nearly every key. Here:
* peaked: the head and conv_match weights are scaled up so that the chunk scores spread
  over several units (measured on the torch side and asserted, so the regime cannot
  silently go flat again);
* many chunks: LR 9x8, K = 5 -> L = 72 = 14.4 K, M = 15 chunks per round, 3 padded tail
  copies, 14 buckets: chunk locality and the wrap-around look-around act at network level.

Each mutation replaces one function of jaxsr.attention for the duration of one test (the
source files are untouched) and must push the error far above the tolerance that the
unmutated code meets.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxsr import convert, models  # noqa: E402
from jaxsr.attention import chunked, lsh  # noqa: E402
from jaxsr.convert import core  # noqa: E402
from tests.fast_compile import FAST_COMPILE  # noqa: E402
from test_torch_parity import (TOL, inject_rotations, make_config, peaked_params,  # noqa: E402
                               to_torch_sd)
from torch_refs import lsh as torch_lsh  # noqa: E402
from torch_refs.dlsn import DLSN  # noqa: E402
from torch_refs.nlsn import NLSN  # noqa: E402

HW, K = (9, 8), 5                 # L = 72: M = 15 chunks, padding p = 3, nb = 14
MIN_SPREAD = 3.0                  # median over queries of max - min chunk score
MIN_TOP_P = 0.15                  # mean largest softmax weight (uniform: 1/15 = 0.067)
MUTANT_MIN_ERR = 100 * TOL        # "a clear margin" above the tolerance
# FAST_COMPILE (ten compiles here): the unmutated parity below holds under the same options.

# Two attention layers each; NLSN with one ResBlock between its NLSAs (attn_every=1) and
# DLSN with two one-LFFB groups keep the compile small.
NETS = {
    "nlsn": (dict(n_resblocks=1, n_feats=16, res_scale=0.1, chunk_size=K, n_hashes=2),
             dict(reduction=4, attn_every=1), lambda kw: NLSN(2, attn_every=1, **kw)),
    "dlsn": (dict(n_resgroups=2, n_resblocks=1, n_feats=16, res_scale=0.1, chunk_size=K,
                  n_hashes=2), dict(reduction=4), lambda kw: DLSN(2, **kw)),
}


def jax_forward_fresh(config, params, x, seed=0):
    """Like test_torch_parity.jax_forward but traced anew (that one is cached per config,
    so it would not see a monkeypatched function)."""
    model = models.build_model(config)
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False,
                                          rngs={"lsh": jax.random.key(seed)},
                                          mutable=["intermediates"]))
    x = jnp.asarray(x)
    y, state = fn.lower(params, x).compile(compiler_options=FAST_COMPILE)(params, x)
    rots = {path.rsplit("/", 1)[0]: np.asarray(v[-1] if isinstance(v, tuple) else v)
            for path, v in core.flatten(state["intermediates"]).items()
            if path.rsplit("/", 1)[-1].startswith("rotations")}
    return np.asarray(y), rots


@pytest.fixture(scope="module", params=sorted(NETS))
def reference(request):
    """(name, config, params, x, clean JAX output, its rotations, torch output, scores)."""
    name = request.param
    kw, extra, factory = NETS[name]
    config = make_config(name, 2, **kw, **extra)
    params = peaked_params(config)
    x = np.random.default_rng(1).random((2, *HW, 3), dtype=np.float32)   # 2: per-item rows
    y_jax, rots = jax_forward_fresh(config, params, x)
    ref = factory(kw).eval()
    ref.load_state_dict(to_torch_sd(convert.params_to_state_dict(params, config)), strict=True)
    assert inject_rotations(config, ref, rots) == 2
    scores = []
    torch_lsh.score_observers.append(lambda s: scores.append(s.detach().numpy().copy()))
    try:
        with torch.no_grad():
            y_t = ref(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    finally:
        torch_lsh.score_observers.clear()
    return name, config, params, x, y_jax, rots, y_t.numpy().transpose(0, 2, 3, 1), scores


def test_peaked_many_chunk_network_parity(reference):
    name, config, _, x, y_jax, rots, y_torch, scores = reference
    assert len(scores) == 2
    for s in scores:                               # [N, R, M, K, 3K] per attention layer
        assert s.shape == (2, 2, 15, K, 3 * K), s.shape
        spread = np.median(s.max(-1) - s.min(-1))
        p = np.exp(s - s.max(-1, keepdims=True))
        top_p = (p.max(-1) / p.sum(-1)).mean()
        print(f"{name}: median score spread {spread:.2f}, mean top softmax weight {top_p:.2f}")
        assert spread >= MIN_SPREAD and top_p >= MIN_TOP_P, (name, spread, top_p)
    err = np.abs(y_torch - y_jax).max()
    assert err <= TOL, err


# ------------------------------------------------------------------ plausible bugs

def mean_merge(o, lse, undo, order=None):
    """Round merge as a plain mean over rounds instead of softmax_r(lse_r) weights."""
    del lse
    order = jnp.argsort(undo, axis=-1).astype(undo.dtype) if order is None else order
    return jnp.mean(lsh._unsort(o, undo, order), axis=0)


def own_chunk_only(x):
    """Look-around dropped: a chunk attends to itself only (tripled, so shapes and the
    softmax over distinct keys are those of own-chunk attention)."""
    return jnp.concatenate([x, x, x], axis=2)


def zero_padding(order, chunk_size):
    """jnp.pad's default: the padding indexes position 0 instead of the tail copy."""
    pad = (-order.shape[1]) % chunk_size
    return jnp.pad(order, ((0, 0), (0, pad))).reshape(order.shape[0], -1, chunk_size)


def unstable_sort(codes, n_buckets, scatter_free=False):
    """A valid sort by bucket whose ties come out in another order (what an unstable
    sort such as torch.sort's default may return): descending positions within a bucket."""
    del n_buckets, scatter_free
    length = codes.shape[1]
    iota = jax.lax.broadcasted_iota(jnp.int32, codes.shape, 1)
    order = length - 1 - jnp.sort(codes * length + (length - 1 - iota), axis=-1) % length
    undo = jnp.argsort(order, axis=-1).astype(jnp.int32)
    return order, undo


MUTATIONS = {
    "mean_merge": (lsh, "unsort_and_merge", mean_merge),
    "no_look_around": (chunked, "look_around", own_chunk_only),
    "zero_padding": (lsh, "chunk_indices", zero_padding),
    "unstable_sort": (lsh, "sort_order", unstable_sort),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_parity_check_fails_for_mutation(reference, mutation, monkeypatch):
    name, config, params, x, y_jax, rots, y_torch, _ = reference
    assert np.abs(y_torch - y_jax).max() <= TOL          # the unmutated code passes
    module, attr, broken = MUTATIONS[mutation]
    monkeypatch.setattr(module, attr, broken)
    y_mut, rots_mut = jax_forward_fresh(config, params, x)
    for path, r in rots.items():                          # same hashing as the reference
        np.testing.assert_array_equal(rots_mut[path], r)
    err = np.abs(y_torch - y_mut).max()
    print(f"{name} {mutation}: max |torch - mutated jax| = {err:.3g}")
    assert err > MUTANT_MIN_ERR, (name, mutation, err)
