"""jaxsr.convert: strictness, config checks, file handling, CLI, generic tables.

Numerical parity against the PyTorch references is in test_torch_parity.py; here the models
are only traced (jax.eval_shape), so these tests are cheap.
"""
import os
import pickle
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import convert
from jaxsr.config_base import base_config
from jaxsr.convert import core
from jaxsr.convert.core import ConversionError, Rule, Table

torch = pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(name="edsr", scale=2, **model):
    c = base_config()
    c.model.name, c.scale = name, scale
    model = model or dict(n_resblocks=2, n_feats=8, res_scale=1.0)
    for k, v in model.items():
        c.model[k] = v
    return c


DLSN_KW = dict(n_resgroups=1, n_resblocks=1, n_feats=8, res_scale=0.1, chunk_size=16, n_hashes=2)
NLSN_KW = dict(n_resblocks=2, n_feats=8, res_scale=0.1, chunk_size=16, n_hashes=2)


def state_dict(config, seed=0):
    """A random official-layout state_dict for `config` (through the converter)."""
    rng = np.random.default_rng(seed)
    params = core.unflatten({p: rng.standard_normal(s.shape).astype(np.float32)
                             for p, s in convert.abstract_params(config).items()})
    return params, convert.params_to_state_dict(params, config)


def error_of(sd, config):
    with pytest.raises(ConversionError) as e:
        convert.state_dict_to_params(sd, config)
    return str(e.value)


# ---------------------------------------------------------------------------------------
# strictness and config checks
# ---------------------------------------------------------------------------------------

def test_strict_lists_every_problem_at_once():
    c = make_config()
    _, sd = state_dict(c)
    del sd["body.0.body.2.weight"], sd["tail.1.bias"]
    sd["body.9.extra.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    sd["head.0.bias"] = np.zeros((7,), np.float32)
    msg = error_of(sd, c)
    assert "missing keys (2)" in msg and "body.0.body.2.weight" in msg and "tail.1.bias" in msg
    assert "unexpected keys (1)" in msg and "body.9.extra.weight" in msg
    assert "shape mismatches (1)" in msg and "head.0.bias: checkpoint (7,), expected (8,)" in msg


def test_wrong_scale_and_width_are_named():
    _, sd = state_dict(make_config(scale=2))
    msg = error_of(sd, make_config(scale=4))
    assert "config.scale=4 but the checkpoint has 2" in msg
    msg = error_of(sd, make_config(scale=2, n_resblocks=2, n_feats=16, res_scale=1.0))
    assert "config.model.n_feats=16 but the checkpoint has 8" in msg
    msg = error_of(sd, make_config(scale=2, n_resblocks=3, n_feats=8, res_scale=1.0))
    assert "config.model.n_resblocks=3 but the checkpoint has 2" in msg
    _, sd3 = state_dict(make_config(scale=3))
    assert "config.scale=2 but the checkpoint has 3" in error_of(sd3, make_config(scale=2))


def test_dlsn_chunk_size_is_checked_against_fc():
    _, sd = state_dict(make_config("dlsn", 2, **DLSN_KW))
    msg = error_of(sd, make_config("dlsn", 2, **{**DLSN_KW, "chunk_size": 32}))
    assert "config.model.chunk_size=32 but the checkpoint has 16" in msg
    assert "fc.0.weight: checkpoint (16, 8), expected (32, 8)" in msg


def test_wrong_architecture_is_named():
    _, sd = state_dict(make_config("nlsn", 2, **NLSN_KW))
    msg = error_of(sd, make_config())
    assert "fit the conversion table(s) ['nlsn'], not 'edsr'" in msg
    _, sd = state_dict(make_config("dlsn", 2, **DLSN_KW))
    assert "['dlsn'], not 'nlsn'" in error_of(sd, make_config("nlsn", 2, **NLSN_KW))
    msg = error_of({"features.0.weight": np.zeros((4, 3, 3, 3), np.float32)}, make_config())
    assert "fit none of the conversion tables" in msg


def test_mean_shift_of_another_rgb_range_is_an_error():
    c = make_config()
    _, sd = state_dict(c)
    sd["sub_mean.bias"] = sd["sub_mean.bias"] * 255
    msg = error_of(sd, c)
    assert "wrong constants (1)" in msg and "rgb_range 255" in msg
    _, sd = state_dict(make_config("nlsn", 2, **NLSN_KW))
    with pytest.raises(ConversionError, match="not supported .*not scale-equivariant"):
        convert.state_dict_to_params(sd, make_config("nlsn", 2, **NLSN_KW), rgb_range=255)


def test_dlsn_unused_a_only_warns_and_is_not_stored():
    c = make_config("dlsn", 2, **DLSN_KW)
    params, sd = state_dict(c)
    assert list(sd)[:3] == ["a", "sub_mean.weight", "sub_mean.bias"]
    sd["a"] = np.array([0.5], np.float32)
    back, warnings = convert.state_dict_to_params(sd, c)
    assert len(warnings) == 1 and warnings[0].startswith("a = [0.5]")
    assert set(core.flatten(back)) == set(core.flatten(params))


def test_export_checks_the_params_tree():
    c = make_config()
    params, _ = state_dict(c)
    convert.check_params(params, c)
    flat = core.flatten(params)
    flat["head_0/kernel"] = flat["head_0/kernel"][..., :4]
    del flat["tail_1/bias"]
    with pytest.raises(ConversionError, match=r"(?s)missing.*tail_1/bias.*head_0/kernel: \(3, 3, 3, 4\)"):
        convert.check_params(core.unflatten(flat), c)


def test_non_official_nlsn_layout_is_reported():
    c = make_config("nlsn", 2, attn_every=2, **NLSN_KW)
    assert "hard-codes 8" in " ".join(core.unofficial(convert.table_for(c), c))
    assert core.unofficial(convert.table_for(c), make_config("nlsn", 2, **NLSN_KW)) == []


# ---------------------------------------------------------------------------------------
# files: formats, nesting, damaged inputs
# ---------------------------------------------------------------------------------------

def _torch(sd):
    return {k: torch.from_numpy(v) for k, v in sd.items()}


def test_formats_prefix_and_basicsr_nesting(tmp_path):
    c = make_config()
    _, sd = state_dict(c)
    fmt = convert.save_state_dict(sd, tmp_path / "m.safetensors")
    assert fmt == "safetensors"
    convert.save_state_dict(sd, tmp_path / "m.pth")
    other = {k: v + 1 for k, v in sd.items()}
    torch.save({"params": _torch({f"module.{k}": v for k, v in other.items()}),
                "params_ema": _torch({f"module.{k}": v for k, v in sd.items()})},
               tmp_path / "basicsr.pth")
    for name in ("m.safetensors", "m.pth", "basicsr.pth"):
        loaded = convert.load_state_dict(tmp_path / name)
        # safetensors stores keys sorted; .pth keeps the official order
        assert (set(loaded) if name.endswith("safetensors") else list(loaded)) == \
            (set(sd) if name.endswith("safetensors") else list(sd)), name
        for k in sd:
            np.testing.assert_array_equal(loaded[k], sd[k])
            assert loaded[k].dtype == np.float32
    picked = convert.load_state_dict(tmp_path / "basicsr.pth", param_key="params")
    np.testing.assert_array_equal(picked["head.0.weight"], other["head.0.weight"])


def test_damaged_and_foreign_files_fail_clearly(tmp_path):
    _, sd = state_dict(make_config())
    convert.save_state_dict(sd, tmp_path / "m.pth")
    convert.save_state_dict(sd, tmp_path / "m.safetensors")
    for name in ("m.pth", "m.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(ConversionError, match=rf"cut_{name}: could not be read .*truncated"):
            convert.load_state_dict(tmp_path / f"cut_{name}")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("img.png", "notes.txt"):
        with pytest.raises(ConversionError, match=rf"{name}: not a PyTorch checkpoint"):
            convert.load_state_dict(tmp_path / name)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ConversionError, match="holds a list, not a state_dict"):
        convert.load_state_dict(tmp_path / "list.pth")
    torch.save({"epoch": 3, "net": {"w": torch.zeros(2)}}, tmp_path / "meta.pth")
    with pytest.raises(ConversionError, match=r"entries that are not tensors.*epoch"):
        convert.load_state_dict(tmp_path / "meta.pth")
    with open(tmp_path / "pickle.pth", "wb") as f:
        pickle.dump(object(), f, protocol=2)
    with pytest.raises(ConversionError, match="could not be read"):
        convert.load_state_dict(tmp_path / "pickle.pth")
    with pytest.raises(ConversionError, match="no such file"):
        convert.load_state_dict(tmp_path / "absent.pth")


def test_core_imports_without_torch(tmp_path):
    fake = tmp_path / "model.pth"
    fake.write_bytes(b"PK\x03\x04" + bytes(60))       # looks like a torch zip file
    code = (
        "import sys; sys.modules['torch'] = None\n"    # any `import torch` now fails
        "import numpy as np\nfrom jaxsr import convert, models\n"
        "from jaxsr.config_base import base_config\n"
        "c = base_config(); c.model.n_resblocks = 1; c.model.n_feats = 4; c.model.res_scale = 1.0\n"
        "print(len(convert.params_to_state_dict(convert.core.unflatten(\n"
        "    {p: np.zeros(s.shape) for p, s in convert.abstract_params(c).items()}), c)))\n"
        f"convert.load_state_dict({str(fake)!r})\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert out.stdout.splitlines() == ["16"]            # 12 params + 4 MeanShift constants
    assert "ImportError: PyTorch checkpoint conversion needs torch: pip install torch==2.13.0" \
        in out.stderr


# ---------------------------------------------------------------------------------------
# a new architecture needs only a table
# ---------------------------------------------------------------------------------------

class _Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), padding=1, feature_group_count=3, name="dw")(x)
        x = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name="norm")(x)
        x = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID", use_bias=False,
                             name="up")(x)
        return nn.Dense(5, name="proj")(x)


class _TorchToy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = torch.nn.ModuleDict({"dw": torch.nn.Conv2d(3, 6, 3, padding=1, groups=3),
                                          "norm": torch.nn.LayerNorm(6, eps=1e-6)})
        self.up = torch.nn.ConvTranspose2d(6, 4, 2, stride=2, bias=False)
        self.proj = torch.nn.Linear(4, 5)

    def forward(self, x):  # NCHW in, NHWC out
        x = self.block["dw"](x)
        x = self.block["norm"](x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj(self.up(x).permute(0, 2, 3, 1))


TOY = Table("toy", rules=(Rule("block.dw", "dw"), Rule("block.norm", "norm", "norm"),
                          Rule("up", "up", "conv_transpose"), Rule("proj", "proj", "linear")))


def test_generic_table_both_ways_with_numeric_parity():
    x = np.random.default_rng(0).random((1, 5, 4, 3), dtype=np.float32)
    # random values straight from the abstract tree (compiling flax's initialisers is slow)
    shapes = core.flatten(jax.eval_shape(_Toy().init, jax.random.key(0), x)["params"])
    rng = np.random.default_rng(1)
    flat = {p: rng.standard_normal(v.shape).astype(np.float32) for p, v in shapes.items()}
    sd = core.to_torch(TOY, core.unflatten(flat), None)
    ref = _TorchToy()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    y = np.asarray(jax.jit(_Toy().apply)({"params": core.unflatten(flat)}, x))
    with torch.no_grad():
        y_t = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(y - y_t).max() < 1e-5
    back, _ = core.from_torch(TOY, {k: v.numpy() for k, v in ref.state_dict().items()}, None,
                              shapes)
    for p, v in flat.items():
        np.testing.assert_array_equal(core.flatten(back)[p], v)


def test_ambiguous_table_is_a_bug_not_a_guess():
    t = Table("bad", rules=(Rule("body.{i}", "body_{i}"), Rule("body.{j}", "layers_{j}")))
    with pytest.raises(RuntimeError, match="ambiguous"):
        core.torch_to_flax_key(t, "body.3.weight")
    t = Table("alt", rules=(Rule("{s:enc|dec}.{i}.conv", "{s}_{i}/conv"),))
    assert core.torch_to_flax_key(t, "dec.2.conv.weight")[0] == "dec_2/conv/kernel"
    assert core.flax_to_torch_key(t, "enc_0/conv/bias")[0] == "enc.0.conv.bias"
    assert core.torch_to_flax_key(t, "mid.0.conv.weight") is None


# ---------------------------------------------------------------------------------------
# checkpoints and the command line
# ---------------------------------------------------------------------------------------

def test_cli_from_torch_then_to_torch(tmp_path):
    """from-torch writes a checkpoint jaxsr.checkpoint reads; to-torch gives the file back."""
    from jaxsr import checkpoint
    from torch_refs.edsr import EDSR
    ref = EDSR(2, n_resblocks=1, n_feats=8)
    torch.save({"params": ref.state_dict()}, tmp_path / "edsr.pth")
    over = ["--config", "configs/edsr.py:small", "--config.model.n_resblocks=1",
            "--config.model.n_feats=8"]
    work = tmp_path / "work"
    script = (f"set -e; {sys.executable} -m jaxsr.convert from-torch {' '.join(over)} "
              f"--input {tmp_path / 'edsr.pth'} --workdir {work}; "
              f"{sys.executable} -m jaxsr.convert to-torch --workdir {work} "
              f"--output {tmp_path / 'back.safetensors'}; "
              f"{sys.executable} -m jaxsr.convert from-torch {' '.join(over)} "
              f"--config.scale=4 --input {tmp_path / 'edsr.pth'} --workdir {tmp_path / 'w4'} "
              f"|| echo FAILED_AS_EXPECTED")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FAILED_AS_EXPECTED" in out.stdout
    assert "config.scale=4 but the checkpoint has 2" in out.stderr
    assert "Traceback" not in out.stderr
    params, meta = checkpoint.load_params(str(work))
    assert meta["kind"] == "params" and meta["model"] == "edsr"
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    cfg = checkpoint.load_config(str(work))
    for p, v in core.flatten(convert.state_dict_to_params(sd, cfg)[0]).items():
        np.testing.assert_array_equal(core.flatten(params)[p], v)
    back = convert.load_state_dict(tmp_path / "back.safetensors")
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    EDSR(2, n_resblocks=1, n_feats=8).load_state_dict(
        {k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_usrnet_convtranspose_layout():
    """USRNet's ConvTranspose2d [I, O, 2, 2] <-> flipped HWIO kernel (spec section 9)."""
    c = make_config("usrnet", 2, variant="usrnet_tiny", n_iter=1, h_nc=8, nc=(8, 8, 8, 8), nb=1)
    params, sd = state_dict(c)
    w = sd["p.m_up1.0.weight"]
    k = core.flatten(params)["p/m_up1/layers_0/kernel"]
    np.testing.assert_array_equal(k, np.flip(w.transpose(2, 3, 0, 1), (0, 1)))
    msg = error_of(sd, make_config("usrnet", 2, variant="usrnet_tiny", n_iter=2, h_nc=8,
                                   nc=(8, 8, 8, 8), nb=1))
    assert "config.model.n_iter=2 but the checkpoint has 1" in msg
