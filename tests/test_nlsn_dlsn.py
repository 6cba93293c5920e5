"""NLSN and DLSN networks: parameter counts and names vs the official models, configs,
evaluation-time hashing changes, one training step each (tiny)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsr.config_util import load_config_file
from jaxsr.models import build_model
from jaxsr.models.dlsn import DLSN
from jaxsr.models.nlsn import NLSN
from tests.fast_compile import jit as fast_jit

# architectures.md section 0 (official sum of numel), minus the 24 frozen MeanShift
# values (constants here) and, for DLSN, its unused scalar `a`.
OFFICIAL = {
    ("nlsn", 256, 2): 41_796_187, ("nlsn", 256, 3): 44_746_587, ("nlsn", 256, 4): 44_156_507,
    ("dlsn", 256, 2): 69_842_588, ("dlsn", 256, 3): 72_792_988, ("dlsn", 256, 4): 72_202_908,
    ("dlsn", 128, 2): 17_678_428, ("dlsn", 128, 3): 18_416_348, ("dlsn", 128, 4): 18_268_764,
}


def _param_shapes(model, size=12):
    x = jnp.zeros((1, size, size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"]


def _count(shapes):
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name,feats,scale", sorted(OFFICIAL))
def test_parameter_count_equals_official(name, feats, scale):
    model = NLSN(scale=scale) if name == "nlsn" else DLSN(scale=scale, n_feats=feats)
    frozen = 24 + (1 if name == "dlsn" else 0)
    assert _count(_param_shapes(model)) == OFFICIAL[(name, feats, scale)] - frozen


def _torch_key(path: str) -> str:
    """Flax path -> torch state_dict key by the naming rule of jaxsr.attention.modules."""
    parts = []
    for p in path.split("/")[:-1]:
        if p in ("conv_match", "conv_assembly", "conv_assembly_fc"):
            parts.append(f"{p}.0")
        elif p.startswith("layers_"):
            parts.append(p[len("layers_"):])
        else:
            parts.append(re.sub(r"_(\d+)$", r".\1", p))
    leaf = {"kernel": "weight", "bias": "bias"}[path.split("/")[-1]]
    return ".".join(parts + [leaf])


def _torch_shapes(shapes):
    out = {}
    for kp, s in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        path = "/".join(k.key for k in kp)
        shape = s.shape
        if len(shape) == 4:                       # HWIO -> OIHW
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:                     # Dense [in, out] -> Linear [out, in]
            shape = shape[::-1]
        out[_torch_key(path)] = shape
    return out


def test_nlsn_names_and_shapes_mirror_the_official_state_dict():
    """architectures.md 2.5: n_resblocks=8, n_feats=32, x4 (54 keys incl. 4 MeanShift)."""
    got = _torch_shapes(_param_shapes(NLSN(scale=4, n_resblocks=8, n_feats=32)))
    want = {"head.0.weight": (32, 3, 3, 3), "head.0.bias": (32,),
            "body.10.weight": (32, 32, 3, 3), "body.10.bias": (32,),
            "tail.0.0.weight": (128, 32, 3, 3), "tail.0.0.bias": (128,),
            "tail.0.2.weight": (128, 32, 3, 3), "tail.0.2.bias": (128,),
            "tail.1.weight": (3, 32, 3, 3), "tail.1.bias": (3,)}
    for i in (0, 9):
        want.update({f"body.{i}.conv_match.0.weight": (8, 32, 3, 3),
                     f"body.{i}.conv_match.0.bias": (8,),
                     f"body.{i}.conv_assembly.0.weight": (32, 32, 1, 1),
                     f"body.{i}.conv_assembly.0.bias": (32,)})
    for i in range(1, 9):
        for j in (0, 2):
            want[f"body.{i}.body.{j}.weight"] = (32, 32, 3, 3)
            want[f"body.{i}.body.{j}.bias"] = (32,)
    assert got == want
    assert _count(_param_shapes(NLSN(scale=4, n_resblocks=8, n_feats=32))) == 239_723 - 24


def test_dlsn_names_and_shapes_mirror_the_official_state_dict():
    """architectures.md 3.4: 2 GLAFFM x 2 LFFB, 32 ch, K=16, x2 (53 keys incl. a, MeanShift)."""
    model = DLSN(scale=2, n_resgroups=2, n_resblocks=2, n_feats=32, chunk_size=16)
    got = _torch_shapes(_param_shapes(model))
    want = {"head.0.weight": (32, 3, 3, 3), "head.0.bias": (32,),
            "body.2.weight": (32, 32, 3, 3), "body.2.bias": (32,),
            "tail.0.0.weight": (128, 32, 3, 3), "tail.0.0.bias": (128,),
            "tail.1.weight": (3, 32, 3, 3), "tail.1.bias": (3,)}
    for i in range(2):
        b = f"body.{i}.body"
        for j in range(2):
            for k in (0, 2):
                want[f"{b}.{j}.body.{k}.weight"] = (32, 32, 3, 3)
                want[f"{b}.{j}.body.{k}.bias"] = (32,)
        want.update({f"{b}.2.conv_match.0.weight": (8, 32, 3, 3), f"{b}.2.conv_match.0.bias": (8,),
                     f"{b}.2.conv_assembly.0.weight": (32, 32, 3, 3),
                     f"{b}.2.conv_assembly.0.bias": (32,),
                     f"{b}.2.conv_assembly_fc.0.weight": (32, 32, 3, 3),
                     f"{b}.2.conv_assembly_fc.0.bias": (32,),
                     f"{b}.2.fc.0.weight": (16, 32), f"{b}.2.fc.0.bias": (16,),
                     f"{b}.2.fc.2.weight": (16, 16), f"{b}.2.fc.2.bias": (16,),
                     f"{b}.3.weight": (32, 32, 3, 3), f"{b}.3.bias": (32,)})
    assert got == want


# ------------------------------------------------------------------ configs

def test_configs(repo_root):
    nlsn = load_config_file(str(repo_root / "configs/nlsn.py"))
    assert (nlsn.scale, nlsn.train.patch_size, nlsn.train.batch_size) == (2, 96, 16)
    assert (nlsn.model.chunk_size, nlsn.model.n_hashes, nlsn.model.res_scale) == (144, 4, 0.1)
    assert nlsn.train.lr == 1e-4 and (nlsn.train.b1, nlsn.train.b2) == (0.9, 0.999)
    nlsn.scale = 4                                   # as --config.scale=4 does
    assert nlsn.train.patch_size == 192              # LR patches stay 48x48
    dlsn3 = load_config_file(str(repo_root / "configs/dlsn.py:x3"))
    assert dlsn3.scale == 3 and dlsn3.init_from.endswith("dlsn_x2")
    assert dlsn3.train.patch_size == 144 and dlsn3.model.chunk_size == 128
    dlsn128 = load_config_file(str(repo_root / "configs/dlsn.py:x4,c128"))
    assert dlsn128.model.n_feats == 128 and dlsn128.init_from.endswith("dlsn128_x2")
    for spec in ("configs/nlsn.py:small", "configs/dlsn.py:small"):
        c = load_config_file(str(repo_root / spec))
        assert c.model.n_feats == 32 and c.train.patch_size == 48 and not c.init_from
        assert _count(_param_shapes(build_model(c))) < 400_000
    with pytest.raises(ValueError, match="unknown arg"):
        load_config_file(str(repo_root / "configs/dlsn.py:x5"))


# ------------------------------------------------------------------ training / evaluation

def _random_params(model, x, seed=0):
    """Parameters from eval_shape + NumPy draws (compiling flax's init costs ~15 s CPU)."""
    rng = np.random.default_rng(seed)

    def draw(s):
        std = 0.01 if len(s.shape) == 1 else 1.0 / np.sqrt(np.prod(s.shape[:-1]))
        return jnp.asarray(rng.normal(size=s.shape) * std, s.dtype)

    return jax.tree.map(draw, _param_shapes(model, x.shape[1]))


def _train_step(model, params, lr, hr):
    tx = optax.adam(1e-3)

    @fast_jit
    def step(params, opt_state, key):
        def loss_fn(p):
            sr = model.apply({"params": p}, lr, train=True, rngs={"lsh": key})
            return jnp.mean(jnp.abs(sr - hr))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    return step(params, tx.init(params), jax.random.PRNGKey(1))


TINY = {   # NLSN: NLSA at body_0 and body_2; DLSN: one GLAFFM (ResBlock, GLA, conv)
    "nlsn": lambda **kw: NLSN(scale=2, n_resblocks=1, attn_every=1, n_feats=16, **kw),
    "dlsn": lambda **kw: DLSN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, **kw),
}


@pytest.mark.parametrize("name", ["nlsn", "dlsn"])
def test_one_train_step(name):
    model = TINY[name](chunk_size=16, n_hashes=2)
    rng = np.random.default_rng(0)
    lr = jnp.asarray(rng.uniform(size=(2, 12, 12, 3)), jnp.float32)   # L=144: 9 chunks
    hr = jnp.asarray(rng.uniform(size=(2, 24, 24, 3)), jnp.float32)
    params = _random_params(model, lr)
    new, _, loss, grads = _train_step(model, params, lr, hr)
    assert np.isfinite(float(loss))
    attn = grads["body_0"] if name == "nlsn" else grads["body_0"]["body_1"]
    assert float(jnp.abs(attn["conv_match"]["kernel"]).max()) > 0   # through the scores
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new, params)
    assert all(jax.tree.leaves(changed))


def test_hashing_settings_can_change_at_evaluation():
    lr = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 12, 12, 3)), jnp.float32)
    nlsn = TINY["nlsn"](chunk_size=16, n_hashes=2)
    params = _random_params(nlsn, lr)
    y = fast_jit(nlsn.apply)({"params": params}, lr)
    y1 = fast_jit(TINY["nlsn"](chunk_size=32, n_hashes=1).apply)({"params": params}, lr)
    assert y1.shape == y.shape and float(jnp.abs(y1 - y).max()) > 0
    dlsn = TINY["dlsn"](chunk_size=16, n_hashes=2)
    dparams = jax.eval_shape(lambda: dlsn.init(jax.random.PRNGKey(0), lr))["params"]
    with pytest.raises(Exception, match="fc_0"):    # K is baked into the fc shapes
        jax.eval_shape(lambda p: TINY["dlsn"](chunk_size=32, n_hashes=1).apply(
            {"params": p}, lr), dparams)
