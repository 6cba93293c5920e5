"""`python -m jaxsr.tools.export`: exported programs run without jaxsr and give the live
model's output; refusals name their reason."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import checkpoint, inference, models
from jaxsr.config_base import base_config
from jaxsr.tools import export
from test_inference import random_params

# Run by the child processes: they import jax and numpy only (never jaxsr or flax).
NO_JAXSR_CHECK = """
import sys
leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('jaxsr', 'flax'))
assert not leaked, leaked
"""


def _edsr_config():
    c = base_config()
    c.model.name = "edsr"
    c.model.n_resblocks, c.model.n_feats, c.model.res_scale = 2, 8, 1.0
    return c


@pytest.fixture(scope="module")
def edsr(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("edsr_export") / "wd")
    config = _edsr_config()
    model = models.build_model(config)
    params = random_params(model)
    checkpoint.save_params(wd, params, config)
    return wd, inference.bind(model, params)


def _run_without_jaxsr(code: str, cwd) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, "-c", code + NO_JAXSR_CHECK], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_fixed_dynamic_and_separate_weights_match_the_live_model(edsr, tmp_path):
    wd, live = edsr
    export.export_workdir(wd, str(tmp_path / "fixed.jaxexport"), shape="12x16", batch=2)
    export.export_workdir(wd, str(tmp_path / "dyn.jaxexport"), dynamic=True)
    export.export_workdir(wd, str(tmp_path / "sep.jaxexport"), dynamic=True,
                          separate_weights=True)
    manifest = json.loads((tmp_path / "sep.json").read_text())
    assert manifest["scale"] == 2 and manifest["call"] == "exported.call(weights, lr)"
    rng = np.random.default_rng(0)
    inputs = {"a": rng.uniform(size=(2, 12, 16, 3)), "b": rng.uniform(size=(1, 9, 14, 3)),
              "c": rng.uniform(size=(3, 8, 8, 3))}
    np.savez(tmp_path / "inputs.npz", **{k: v.astype(np.float32) for k, v in inputs.items()})
    _run_without_jaxsr("""
import jax, numpy as np
load = lambda name: jax.export.deserialize(open(name, 'rb').read())
x = np.load('inputs.npz')
weights = dict(np.load('sep.npz'))
dynamic = load('dyn.jaxexport')
out = {'fixed_a': load('fixed.jaxexport').call(x['a']), 'dyn_a': dynamic.call(x['a']),
       'dyn_b': dynamic.call(x['b']), 'sep_c': load('sep.jaxexport').call(weights, x['c'])}
np.savez('outputs.npz', **{k: np.asarray(v) for k, v in out.items()})
""", cwd=tmp_path)
    outputs = np.load(tmp_path / "outputs.npz")
    assert sorted(outputs) == ["dyn_a", "dyn_b", "fixed_a", "sep_c"]
    for key, got in outputs.items():
        x = inputs[key[-1]].astype(np.float32)
        expected = np.asarray(live(jnp.asarray(x)))
        assert got.shape == (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], 3), key
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=key)


def test_docs_loading_example_runs_as_written(edsr, tmp_path, repo_root):
    wd, live = edsr
    text = (repo_root / "docs" / "training.md").read_text()
    snippet = re.search(r"## Export.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(snippet.strip().splitlines()) == 5
    export.export_workdir(wd, str(tmp_path / "model.jaxexport"), shape="64x64")
    _run_without_jaxsr(snippet + "np.save('lr.npy', lr); np.save('sr.npy', sr)\n", tmp_path)
    lr, sr = np.load(tmp_path / "lr.npy"), np.load(tmp_path / "sr.npy")
    expected = np.clip(np.asarray(live(jnp.asarray(lr))), 0, 1)
    np.testing.assert_allclose(sr, expected, atol=1e-5)


def _tiny_nlsn_config():
    c = base_config()
    c.model.name = "nlsn"
    c.model.update(n_resblocks=2, attn_every=2, n_feats=8, res_scale=0.1, chunk_size=16,
                   n_hashes=2, reduction=4)
    return c


def test_nlsn_exports_at_a_fixed_shape_and_refuses_dynamic(tmp_path):
    config = _tiny_nlsn_config()
    model = models.build_model(config)
    params = random_params(model)
    spec = export.input_spec(config, shape=(12, 12))
    exported = export.export_model(config, model, params, spec)
    restored = jax.export.deserialize(exported.serialize())
    x = np.random.default_rng(1).uniform(size=(1, 12, 12, 3)).astype(np.float32)
    expected = jax.jit(lambda x: model.apply({"params": params}, x, train=False))(x)
    np.testing.assert_allclose(np.asarray(restored.call(x)), np.asarray(expected), atol=1e-5)
    with pytest.raises(export.ExportError, match=r"--dynamic.*'nlsn'.*fixed --shape"):
        export.export_model(config, model, params, export.input_spec(config, dynamic=True))


def test_usrnet_needing_a_kernel_is_refused():
    config = base_config()
    config.model.update(name="usrnet", n_iter=1, h_nc=8, nc=(8, 8, 8, 8), nb=1)
    model = models.build_model(config)
    with pytest.raises(export.ExportError, match=r"'usrnet'.*\['kernel'\]"):
        export.export_model(config, model, random_params(model),
                            export.input_spec(config, shape=(8, 8)))


def test_shapes_follow_the_input_multiple():
    config = base_config()
    config.model.name = "nlcunet"           # LR sides: multiples of 4, at least min_side
    multiple, least = models.input_multiple(config), models.min_input_size(config)
    assert multiple == 4
    dims = export.input_spec(config, dynamic=True, batch=2).shape
    assert dims[0] == 2 and str(dims[1]) == "4*h" and str(dims[2]) == "4*w" and dims[3] == 3
    with pytest.raises(export.ExportError, match="multiples of 4"):
        export.input_spec(config, shape=(least + 2, least + 4))
    with pytest.raises(export.ExportError, match="exactly one of --shape"):
        export.input_spec(config)
    with pytest.raises(export.ExportError, match="HxW"):
        export.parse_shape("64")


def test_existing_files_are_kept_unless_overwrite(edsr, tmp_path, capsys):
    wd, _ = edsr
    out = tmp_path / "m.jaxexport"
    (tmp_path / "m.npz").write_bytes(b"keep me")
    argv = ["--workdir", wd, "--output", str(out), "--shape", "8x8", "--separate_weights"]
    assert export.main(argv) == 1
    assert "m.npz exists" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "m.npz").read_bytes() == b"keep me"
    assert export.main(argv + ["--overwrite"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jaxexport", "m.json", "m.npz"]
    assert sorted(np.load(tmp_path / "m.npz")) == sorted(json.loads(
        (tmp_path / "m.json").read_text())["weights"])
