"""--mode compile: the real train step and eval forward compiled by the TPU compiler for a
TPU slice on this CPU-only machine (libtpu's deviceless topology), the readable
does-not-fit error, and the Cloud TPU name -> topology mapping."""
import json
import subprocess
import sys

import pytest

from jaxsr import accelerators, aot, config_util, run

pytest.importorskip("libtpu", reason="libtpu (requirements-dev.txt) compiles for TPUs")

GIB = 2 ** 30


@pytest.fixture(scope="module", autouse=True)
def _host():
    aot.prepare_host()


# Published slice sizes (Cloud TPU docs, "TPU versions" / each generation's page): v4 and
# v5p names count TensorCores (2 per chip), v5e/v6e names count chips; hosts have 4 chips,
# except the single-host 8-chip v5e/v6e machines.
PUBLISHED = [("v4-8", "v4:2x2x1", 4, 1), ("v4-32", "v4:2x2x4", 16, 4),
             ("v4-128", "v4:4x4x4", 64, 16), ("v5p-16", "v5:2x2x2", 8, 2),
             ("v5litepod-4", "v5e:2x2", 4, 1), ("v5litepod-8", "v5e:2x4", 8, 1),
             ("v5litepod-16", "v5e:4x4", 16, 4), ("v5e-64", "v5e:8x8", 64, 16),
             ("v6e-8", "v6e:2x4", 8, 1), ("v6e-256", "v6e:16x16", 256, 64)]


@pytest.mark.parametrize("name,topology,chips,hosts", PUBLISHED)
def test_cloud_names_map_to_published_slices(name, topology, chips, hosts):
    t = accelerators.parse_target(name)
    assert (t.topology_name, t.num_chips, t.hosts) == (topology, chips, hosts)
    devices = aot.target_devices(t)        # what libtpu makes of it
    assert len(devices) == chips
    assert len({d.process_index for d in devices}) == hosts
    assert devices[0].device_kind == t.chip.device_kind


@pytest.mark.parametrize("bad", ["v4-6", "v5litepod-12", "v5e:2x2x2", "a100", "h100:16", "v4-2"])
def test_bad_targets_are_named(bad):
    with pytest.raises(ValueError, match="target|chips|slice"):
        accelerators.parse_target(bad)


def tiny_dlsn():
    c = config_util.load_config_file("configs/dlsn.py:small")
    c.model.n_resgroups, c.model.n_resblocks, c.model.n_feats = 1, 1, 16
    c.train.batch_size = 8
    return c


@pytest.mark.slow     # ~36 s of CPU (the TPU compiler), more on a loaded machine
def test_tiny_dlsn_compiles_for_v5e(tmp_path):
    """Through run.run, what `--mode compile` calls: both programs compile for 4 v5e chips,
    with finite, positive FLOPs and memory within the chip, and compile.json says so."""
    result = run.run("compile", tiny_dlsn(), str(tmp_path),
                     compile_options={"target": "v5e:2x2", "eval_lr_size": 40})
    saved = json.loads((tmp_path / "compile.json").read_text())
    assert saved["target"]["devices"] == 4 and saved["target"]["device_kind"] == "TPU v5 lite"
    for name in ("train_step", "eval_forward"):
        r = saved[name]
        assert r == json.loads(json.dumps(result[name]))
        assert "does_not_fit" not in r
        assert 0 < r["memory"]["total_bytes"] < 16 * GIB
        assert r["memory"]["argument_bytes"] > 0 and r["memory"]["peak_bytes"] > 0
        assert 0 < r["cost"]["flops"] < 1e13 and r["cost"]["bytes_accessed"] > 0
        assert r["roofline"]["seconds"] > 0
    for name in ("train_step", "eval_forward"):      # what compiling cost, per program
        r = saved[name]
        assert 0 < r["lower_seconds"] < r["compile_seconds"]
        assert 0 < r["lower_cpu_seconds"] < r["compile_cpu_seconds"]
        assert r["memory"]["generated_code_bytes"] > 0
        line = aot.compile_time_line(r)
        assert f"{r['compile_cpu_seconds']} s CPU" in line and " MiB" in line
    # The donated state is aliased: the step's output buffers are its input buffers.
    assert saved["train_step"]["memory"]["alias_bytes"] > 0
    assert saved["eval_forward"]["lr_shape"] == [4, 40, 40, 3]
    # A backward pass costs more than the forward of the same network.
    assert saved["train_step"]["cost"]["flops"] > saved["eval_forward"]["cost"]["flops"] / 4


def test_compile_timed_counts_lowering_and_compiling_apart():
    """Wall and CPU seconds: the CPU burnt while tracing shows in lower_cpu_seconds, the
    totals include XLA's compile; an already compiled program has totals only."""
    import time

    import jax
    import jax.numpy as jnp

    def build():
        t = time.process_time()
        while time.process_time() - t < 0.3:        # 0.3 s of CPU "tracing"
            pass
        return jax.jit(lambda x: jnp.sin(x) * 2).lower(jnp.ones(8))

    compiled, times = aot.compile_timed(build)
    assert compiled(jnp.zeros(8)).shape == (8,)
    assert times["lower_cpu_seconds"] >= 0.29 and times["lower_seconds"] >= 0.29
    assert times["compile_cpu_seconds"] >= times["lower_cpu_seconds"]
    assert times["compile_seconds"] >= times["lower_seconds"]
    _, totals = aot.compile_timed(lambda: jax.jit(jnp.cos).lower(jnp.ones(3)).compile())
    assert sorted(totals) == ["compile_cpu_seconds", "compile_seconds"]


def synthetic_probe(fixed, per_sample, hbm, calls):
    """A train step whose memory is fixed + per_sample x batch (temporaries), refused by
    the 'compiler' above `hbm`; counts the compiles."""
    def probe(b):
        calls.append(b)
        total = fixed + per_sample * b
        if total > hbm:
            return {"does_not_fit": f"{total} > {hbm}"}
        return {"memory": {"total_bytes": total, "temp_bytes": per_sample * b}}
    return probe


@pytest.mark.parametrize("fixed,per_sample,hbm,expected", [
    (3, 10, 16 * 10 + 3, 16), (3, 10, 16 * 10 + 2, 15), (0, 7, 6, 0), (5, 1, 10 ** 9, 64)])
def test_search_batch_finds_the_largest_fit(fixed, per_sample, hbm, expected):
    calls = []
    largest, probes = aot.search_batch(synthetic_probe(fixed, per_sample, hbm, calls), hbm,
                                       limit=64)
    assert largest == expected and [b for b, _ in probes] == calls
    assert len(calls) <= 3          # the memory model's guess, then one above it
    # the answer is exact: it fits and one more sample does not (or it is the limit)
    assert expected == 0 or fixed + per_sample * expected <= hbm
    assert expected == 64 or fixed + per_sample * (expected + 1) > hbm


def test_search_batch_bisects_when_memory_grows_faster_than_the_model():
    """Temporaries that grow quadratically: the linear guess overshoots, bisection
    still ends on the exact largest batch."""
    calls, hbm = [], 1000

    def probe(b):
        calls.append(b)
        total = 10 * b * b
        return ({"does_not_fit": "x"} if total > hbm
                else {"memory": {"total_bytes": total, "temp_bytes": total}})

    largest, _ = aot.search_batch(probe, hbm, limit=512)
    assert largest == 10 and len(calls) <= 8, calls


def test_oversized_config_fails_with_what_to_change(tmp_path, repo_root):
    """The real CLI: a batch that needs more HBM than a v5e chip has exits non-zero with
    the amount and the config keys to change (the TPU compiler's own verdict)."""
    cmd = [sys.executable, "-m", "jaxsr.main", "--config", "configs/edsr.py:small",
           "--workdir", str(tmp_path), "--mode", "compile", "--target", "v5litepod-4",
           "--eval_lr_size", "32", "--config.model.n_resblocks=1",
           "--config.model.n_feats=8", "--config.train.batch_size=256",
           "--config.train.patch_size=2048"]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train_step on v5litepod-4")
    assert "GiB of" in last and "per chip" in last
    assert "config.train.batch_size" in last and "compute_dtype=bfloat16" in last
    saved = json.loads((tmp_path / "compile.json").read_text())
    assert "does_not_fit" in saved["train_step"]
    assert saved["eval_forward"]["memory"]["total_bytes"] > 0


@pytest.mark.slow
def test_tiny_dlsn_compiles_for_h100_without_a_gpu(tmp_path):
    """XLA's GPU compiler from a target description (optional: the CUDA plugin of the
    installed jax, no GPU needed): memory analysis only, no cost analysis."""
    pytest.importorskip("jax_cuda12_plugin", reason="jax-cuda12-plugin/-pjrt==0.10.2 compile "
                        "for GPUs (not in requirements-dev.txt: ~480 MB)")
    import os
    if "triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
        pytest.skip("run alone with XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (aot."
                    "prepare_host('h100') sets it, but only before XLA reads its flags)")
    result = run.run("compile", tiny_dlsn(), str(tmp_path),
                     compile_options={"target": "h100:2", "eval_lr_size": 40})
    assert result["target"]["device_kind"] == "NVIDIA H100 80GB HBM3"
    for name in ("train_step", "eval_forward"):
        assert 0 < result[name]["memory"]["total_bytes"] < 80e9
        assert result[name]["cost"]["flops"] is None and result[name]["roofline"] == {}
