"""Scanned repeated blocks (config.model.scan_blocks, jaxsr.models.scan): the scanned model
is the unrolled one (outputs and gradients for the same params and rotations), keeps each
layer's evaluation rotations, matches the PyTorch references, and params/checkpoints/PyTorch
keys move between layouts.

Cost: every case runs the model jitted, and what several tests look at (the params, the
evaluation outputs and rotations, the rotations drawn in training) is computed once per
model (`functools.cache`); the configs are the smallest with >= 2 iterations per scan."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import config_base
from jaxsr.attention import lsh
from jaxsr.models import build_model, scan

TINY = {   # model name -> (config.model fields, LR side); >= 2 iterations per scan
    "nlsn": (dict(n_resblocks=5, n_feats=8, res_scale=0.1, chunk_size=16, n_hashes=2,
                  attn_every=2), 8),          # 2 segments + 1 tail ResBlock
    "dlsn": (dict(n_resgroups=2, n_resblocks=2, n_feats=8, res_scale=0.1, chunk_size=16,
                  n_hashes=2), 8),
    "edsr": (dict(n_resblocks=2, n_feats=4, res_scale=0.1), 4),
    "rcan": (dict(n_resgroups=2, n_resblocks=2, n_feats=8, reduction=4), 4),
    "nlcunet": (dict(nf=16, blocks=(2, 0, 0, 0, 0, 0), chunk_size=4, n_hashes=2), 8),
}
LSH_MODELS = ("nlsn", "dlsn", "nlcunet")


def tiny_config(name: str, scanned, remat: str = "none"):
    c = config_base.base_config()
    c.model.name = name
    fields, _ = TINY[name]
    for k, v in fields.items():
        c.model[k] = v
    c.model.scan_blocks = str(scanned).lower()
    c.train.remat = remat
    return c


def rel_err(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))


def max_tree_err(a, b) -> float:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return max(rel_err(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_rel_err(a, b) -> float:
    """|a - b| / |a| over the whole tree (L2). Per tensor, the GLA's conv_match gradients
    of DLSN differ by up to 1e-5 of their own size between two float32 orderings of the
    same sum (the unrolled model eager vs jitted: 6.5e-6), so the bound is on the tree."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    return (num / sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(a))) ** 0.5


@functools.cache
def both_models(name):
    """(unrolled model, scanned model, unrolled params, input, the scanned layout's stacks)."""
    unrolled = build_model(tiny_config(name, False))
    scanned = build_model(tiny_config(name, True))
    side = TINY[name][1]
    x = jax.random.uniform(jax.random.key(1), (2, side, side, 3))
    params = jax.jit(unrolled.init)(jax.random.key(0), x)["params"]
    return unrolled, scanned, params, x, scanned.param_stacks()


def sown_apply(model, variables, x, **kw):
    """(output, the 'intermediates' the call sowed: the rotations each attention used)."""
    run = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"], **kw))
    y, state = run(variables, x)
    return y, state.get("intermediates", {})


@functools.cache
def eval_runs(name):
    """Evaluation (no 'lsh' rng: each layer's fixed rotations) in both layouts:
    (unrolled output, its rotations, scanned output, its rotations in the unrolled layout)."""
    unrolled, scanned, params, x, stacks = both_models(name)
    y, sown = sown_apply(unrolled, {"params": params}, x)
    y_scan, sown_scan = sown_apply(scanned, {"params": scan.to_scanned(params, stacks)}, x)
    return y, sown, y_scan, scan.to_unrolled(sown_scan, stacks)


@functools.cache
def training_rotations(name):
    """The rotations one scanned training call draws (an 'lsh' rng: split per iteration),
    in the scanned layout."""
    _, scanned, params, x, stacks = both_models(name)
    _, sown = sown_apply(scanned, {"params": scan.to_scanned(params, stacks)}, x, train=True,
                         rngs={"lsh": jax.random.key(7)})
    return sown


@pytest.mark.parametrize("name", sorted(TINY))
def test_scanned_equals_unrolled(name):
    unrolled, scanned, params, x, stacks = both_models(name)
    assert stacks and unrolled.param_stacks() == stacks
    stacked = scan.to_scanned(params, stacks)
    own = jax.eval_shape(scanned.init, jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(lambda a: a.shape, own)
    assert max_tree_err(scan.to_unrolled(stacked, stacks), params) == 0.0
    y, _, y_scan, _ = eval_runs(name)
    assert rel_err(y, y_scan) <= 1e-6
    # Training: the rotations one scanned training call drew, injected in both layouts.
    scanned_vars, unrolled_vars = {}, {}
    if name in LSH_MODELS:
        scanned_vars["lsh_rotations"] = training_rotations(name)
        unrolled_vars["lsh_rotations"] = scan.to_unrolled(training_rotations(name), stacks)

    def grads(model, variables, p):
        loss = lambda p: jnp.mean(model.apply(dict(variables, params=p), x, train=True) ** 2)
        return jax.jit(jax.grad(loss))(p)

    want = grads(unrolled, unrolled_vars, params)
    got = scan.to_unrolled(grads(scanned, scanned_vars, stacked), stacks)
    assert tree_rel_err(want, got) <= 1e-6


@pytest.mark.parametrize("name,kind,paths", [
    ("nlsn", lsh.CROSS_POLYTOPE, ["body_3", "body_6"]),
    ("dlsn", lsh.SUPERBIT, ["body_0/body_2", "body_1/body_2"])])
def test_eval_rotations_are_the_unrolled_layers(name, kind, paths):
    """The scanned model evaluates with lsh.fixed_rotations of each layer's unrolled name."""
    x = both_models(name)[3]
    _, sown, _, per_layer = eval_runs(name)
    c = TINY[name][0]
    nb = lsh.num_buckets(x.shape[1] * x.shape[2], c["chunk_size"])
    for path in paths:
        node = per_layer
        for part in path.split("/"):
            node = node[part]
        want = lsh.fixed_rotations(0, path, kind, c["n_feats"] // 4, c["n_hashes"], nb)
        np.testing.assert_array_equal(node["rotations"][0], want)
    # ... which are those the unrolled model draws, layer for layer.
    assert max_tree_err(sown, per_layer) == 0.0


def test_training_rotations_are_drawn_per_layer():
    """With an 'lsh' rng each scan iteration draws its own rotations (split_rngs): one per
    layer, none of them the evaluation ones."""
    segments = training_rotations("nlsn")["scan_body"]["block"]["nlsa"]["rotations"][0]
    assert segments.shape[0] == 2 and not np.allclose(segments[0], segments[1])
    fixed = scan.to_scanned(eval_runs("nlsn")[3], both_models("nlsn")[4])
    assert not np.allclose(segments, fixed["scan_body"]["block"]["nlsa"]["rotations"][0])


@pytest.mark.parametrize("scanned", [False, True])
def test_remat_keeps_the_gradients(scanned):
    base = build_model(tiny_config("edsr", scanned))
    x = jax.random.uniform(jax.random.key(1), (1, 4, 4, 3))
    params = jax.jit(base.init)(jax.random.key(0), x)["params"]

    def grads(remat):
        model = build_model(tiny_config("edsr", scanned, remat))
        return jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, x) ** 2)))(params)

    plain = grads("none")
    for remat in ("blocks", "dots_saveable"):
        assert tree_rel_err(plain, grads(remat)) <= 1e-6


def test_config_values_are_validated():
    for remat in scan.REMAT_CHOICES:
        assert build_model(tiny_config("edsr", True, remat)).remat == remat
    with pytest.raises(ValueError, match=r"config.train.remat='dots'.*nothing_saveable"):
        build_model(tiny_config("edsr", True, "dots"))
    with pytest.raises(ValueError, match=r"config.model.scan_blocks='sometimes'"):
        build_model(tiny_config("edsr", "sometimes"))
    assert build_model(tiny_config("edsr", "auto")).scan_blocks in (True, False)


@pytest.mark.parametrize("name", ["nlsn", "dlsn"])
def test_torch_parity_in_the_scanned_layout(name, monkeypatch):
    """tests/test_torch_parity.py's check (JAX -> torch and torch -> JAX through
    jaxsr.convert, against the independent PyTorch reference) on the scanned model: params
    in the scanned layout, the rotations each scan iteration used put on its torch layer."""
    pytest.importorskip("torch")
    import test_torch_parity as parity
    from jaxsr import models
    config = parity.make_config(name, 2, reduction=4, scan_blocks="true", **TINY[name][0])
    stacks = models.param_stacks(config)
    jitted = parity.jitted_apply

    def per_layer_rotations(config_json):        # the sown rotations, unstacked
        run = jitted(config_json)

        def apply(params, x, key):
            y, state = run(params, x, key)
            return y, {"intermediates": scan.to_unrolled(state["intermediates"], stacks)}
        return apply

    monkeypatch.setattr(parity, "jitted_apply", per_layer_rotations)
    reference = {"nlsn": parity.NLSN, "dlsn": parity.DLSN}[name]
    parity.check_both_directions(
        config, lambda: reference(2, **TINY[name][0]), (5, 4),
        n_attention={"nlsn": 3, "dlsn": 2}[name],
        params_fn=lambda c: scan.to_scanned(parity.peaked_params(c), stacks))


# ---------------------------------------------------------------------------------------
# Checkpoints, init_from and PyTorch keys in either layout.

def random_params(config) -> dict:
    """Random values in the unrolled layout of `config`'s model (no init, no compile)."""
    from jaxsr import convert
    rng = np.random.default_rng(0)
    return convert.core.unflatten({p: rng.standard_normal(s.shape).astype(np.float32)
                                   for p, s in convert.abstract_params(config).items()})


def adam_state(params):
    import optax
    return {"params": params, "opt_state": optax.adam(1e-3).init(params),
            "params_ema": jax.tree.map(lambda p: p * 0.5, params)}


@pytest.mark.parametrize("saved_scanned", [False, True])
def test_checkpoint_restores_into_the_other_layout(tmp_path, saved_scanned):
    from jaxsr import checkpoint
    from jaxsr.models import param_stacks
    cfg = tiny_config("dlsn", saved_scanned)
    stacks = param_stacks(tiny_config("dlsn", True))
    # the optimizer state after one update, so mu/nu are not all zeros
    unrolled_state = adam_state(random_params(cfg))
    unrolled_state["opt_state"] = jax.tree.map(lambda a: a + 1, unrolled_state["opt_state"])
    states = {False: unrolled_state,
              True: scan.convert_state(unrolled_state, stacks, "scanned",
                                       scan.top_level_names(stacks))}
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 3, states[saved_scanned], cfg)
        mngr.wait_until_finished()
    want = states[not saved_scanned]
    repl = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                            want)
    with checkpoint.manager(str(tmp_path), read_only=True) as mngr:
        got = checkpoint.restore(mngr, 3, abstract, stacks=stacks)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_merges_the_other_layout():
    from jaxsr import checkpoint
    from jaxsr.models import param_stacks
    params = random_params(tiny_config("nlsn", False))
    stacks = param_stacks(tiny_config("nlsn", True))
    init = jax.tree.map(np.zeros_like, scan.to_scanned(params, stacks))   # a fresh model
    merged, report = checkpoint.merge_params(init, params, stacks)
    assert not report["missing"] and not report["unexpected"] and not report["skipped_shape"]
    assert max_tree_err(merged, scan.to_scanned(params, stacks)) == 0.0
    back, report = checkpoint.merge_params(params, scan.to_scanned(params, stacks), stacks)
    assert not report["missing"] and max_tree_err(back, params) == 0.0

@pytest.mark.parametrize("name", ["nlsn", "dlsn", "rcan"])
def test_torch_keys_are_the_same_in_both_layouts(name):
    torch = pytest.importorskip("torch")  # noqa: F841 (the converter's file formats)
    from jaxsr import convert
    unrolled_cfg, scanned_cfg = tiny_config(name, False), tiny_config(name, True)
    rng = np.random.default_rng(0)
    params = {p: rng.standard_normal(s.shape).astype(np.float32)
              for p, s in convert.abstract_params(scanned_cfg).items()}
    params = convert.core.unflatten(params)
    stacks = build_model(scanned_cfg).param_stacks()
    sd = convert.params_to_state_dict(params, unrolled_cfg)
    sd_scanned = convert.params_to_state_dict(scan.to_scanned(params, stacks), scanned_cfg)
    assert list(sd) == list(sd_scanned)
    assert all(np.array_equal(sd[k], sd_scanned[k]) for k in sd)
    back, _ = convert.state_dict_to_params(sd, scanned_cfg)
    assert scan.layout_of(back, stacks) == "scanned"
    assert max_tree_err(back, scan.to_scanned(params, stacks)) == 0.0
    convert.check_params(back, scanned_cfg)       # either layout is accepted
    convert.check_params(params, scanned_cfg)


def test_training_resumes_across_layouts(tmp_path):
    """A workdir trained unrolled resumes scanned and back (params, Adam state, EMA)."""
    from test_train_e2e import tiny_config as e2e_config
    from jaxsr import checkpoint, models, train
    workdir = str(tmp_path / "run")

    def config(steps, scanned):
        c = e2e_config(tmp_path, steps)
        c.model.scan_blocks = str(scanned).lower()
        c.train.checkpoint_every = c.train.log_every = 1
        c.train.ema_decay = 0.9
        return c

    def run(steps, scanned):
        train.train(config(steps, scanned), workdir)
        return checkpoint.load_weights(workdir)[0]["params"]

    stacks = models.param_stacks(config(1, True))
    first = run(1, False)
    second = run(2, True)                                  # unrolled -> scanned
    third = run(3, False)                                  # scanned -> unrolled
    assert [scan.layout_of(p, stacks) for p in (first, second, third)] == \
        ["unrolled", "scanned", "unrolled"]
    assert checkpoint.latest_step(workdir) == 3
    # every step trained on: each leaf moved between consecutive checkpoints
    second = scan.to_unrolled(second, stacks)
    for before, after in ((first, second), (second, third)):
        assert all(np.abs(a - b).max() > 0 for a, b in
                   zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
