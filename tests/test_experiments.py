"""Smoke runs of the experiment scripts with tiny settings: hash_rounds (train, evaluate,
resume/skip, report files), gla_plugin (both variants, report) and benchmark (JAX vs torch
rows, attention split). No shared data needed: training uses the embedded scikit-image
photos and evaluation a two-image set made here."""
import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import benchmark, common, gla_plugin, hash_rounds
from jaxsr import checkpoint
from jaxsr.attention import lsh
from jaxsr.models import build_model


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """A benchmark set `Tiny` with two 32x32 HR crops of held-out demo photos (LR 16x16:
    the latency size of the tiny study, so evaluation and timing share one compile)."""
    from jaxsr.data import pipeline
    root = tmp_path_factory.mktemp("bench")
    (root / "Tiny" / "HR").mkdir(parents=True)
    for p in pipeline.skimage_paths("val")[:2]:
        img = np.asarray(Image.open(p).convert("RGB"))[:32, :32]
        Image.fromarray(img).save(root / "Tiny" / "HR" / (os.path.basename(p)[:-4] + ".png"))
    return root


def tiny(config, bench_dir):
    config.data.source = "skimage"
    config.train.batch_size, config.train.patch_size = 2, 32
    config.train.async_checkpoints = False
    config.eval.benchmarks_dir = str(bench_dir)
    return config


def record_hash_rounds(monkeypatch):
    """{R_test of the cell being evaluated: hashing rounds of the rotation tensors its
    forward was traced with}, filled while hash_rounds evaluates."""
    seen, current = {}, []
    evaluate_sets, attention = common.evaluate_sets, lsh.batched_lsh_attention

    def recording_evaluate_sets(config, workdir):
        current[:] = [int(config.model.n_hashes)]
        try:
            return evaluate_sets(config, workdir)
        finally:
            current.clear()

    def recording_attention(q, v, rotations, *args, **kwargs):
        if current:
            seen.setdefault(current[0], set()).add(int(rotations.shape[1]))
        return attention(q, v, rotations, *args, **kwargs)

    monkeypatch.setattr(common, "evaluate_sets", recording_evaluate_sets)
    monkeypatch.setattr(lsh, "batched_lsh_attention", recording_attention)
    return seen


def test_hash_rounds_trains_evaluates_resumes_and_reports(tmp_path, tiny_bench, monkeypatch):
    c = tiny(common.load_config("configs/dlsn.py:small"), tiny_bench)
    c.model.update(dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16))
    study = hash_rounds.study_defaults("tiny")
    study.update(dict(train_rounds=(1,), test_rounds=(1, 2), datasets=("Tiny",),
                      max_images=0, num_steps=1))
    assert hash_rounds.training_settings(study, c) == [(1, 16)]
    rounds_used = record_hash_rounds(monkeypatch)
    hash_rounds.run(c, study, str(tmp_path), stage="run")
    cells = sorted(os.listdir(tmp_path / "cells"))
    assert cells == ["R1_K16_T1.json", "R1_K16_T2.json", "train_R1_K16.json"]
    # R_test = 2 really hashed with 2 rounds (the rotations [Cq, R, nb] given to the
    # attention of the evaluated forward), R_test = 1 with one, and the results differ.
    assert rounds_used == {1: {1}, 2: {2}}, rounds_used
    first = common.read_json(tmp_path / "cells" / "R1_K16_T2.json")
    one = common.read_json(tmp_path / "cells" / "R1_K16_T1.json")
    # (deterministic evaluation rotations: the only difference is R; measured 1e-4 dB
    # after the one training step)
    assert abs(first["sets"]["Tiny"]["psnr_y"] - one["sets"]["Tiny"]["psnr_y"]) > 1e-6
    assert first["test_rounds"] == 2 and first["sets"]["Tiny"]["images"] == 2
    assert 5 < first["sets"]["Tiny"]["psnr_y"] < 60 and first["latency_s"] > 0
    assert first["peak_bytes"] > 0
    mtimes = {n: os.path.getmtime(tmp_path / "cells" / n) for n in cells}
    text = hash_rounds.run(c, study, str(tmp_path))      # all done: skips, then reports
    assert {n: os.path.getmtime(tmp_path / "cells" / n) for n in cells} == mtimes
    assert common.read_json(tmp_path / "cells" / "train_R1_K16.json")["trained"] is True
    assert "| Tiny, K=16 | R_test=1 | R_test=2 |" in text and "| R_train=1 |" in text
    rows = list(csv.DictReader(open(tmp_path / "hash_rounds.csv")))
    assert [int(r["test_rounds"]) for r in rows] == [1, 2]
    for png in ("psnr_vs_rounds.png", "latency_vs_rounds.png", "psnr_vs_chunk.png"):
        assert (tmp_path / png).stat().st_size > 1000
    with pytest.raises(ValueError, match="--cell=5: there are 1 training settings"):
        hash_rounds.run(c, study, str(tmp_path), cell=5)


def test_study_grid_and_overrides():
    c = common.load_config("configs/dlsn.py:small")
    s = hash_rounds.study_defaults("cpu")
    s.update(dict(train_rounds=(1, 2, 4), chunk_sizes=(32, 16, 64), star_rounds=2))
    assert hash_rounds.training_settings(s, c) == [(1, 32), (2, 32), (4, 32), (2, 16), (2, 64)]
    assert hash_rounds.test_rounds_for(s, c, 32) == (1, 2, 3, 4)
    assert hash_rounds.test_rounds_for(s, c, 64) == (2,)        # chunk arm: R_test = R0
    s.grid = "full"
    assert len(hash_rounds.training_settings(s, c)) == 9
    argv = ["prog", "--study.test_rounds=(1,)", "--config.seed=1"]
    got = hash_rounds.resolve_study("paper", hash_rounds.study_defaults("tiny"), argv)
    assert got.test_rounds == (1, 2) and got.datasets[-1] == "Urban100"   # tiny's value, paper's rest
    e = common.load_config("configs/edsr.py:small")
    with pytest.raises(ValueError, match="no n_hashes/chunk_size"):
        del e.model["n_hashes"]
        hash_rounds.cell_config(e, s, 1, 16)


def test_gla_plugin_reports_both_variants(tmp_path, tiny_bench, monkeypatch):
    preset = dict(gla_plugin.PRESETS["tiny"])
    spec, over = preset["hosts"]["fsrcnn"]
    over = dict(over, **{"data.source": "skimage", "train.async_checkpoints": False,
                         "eval.benchmarks_dir": str(tiny_bench)})
    preset.update(hosts={"fsrcnn": (spec, over)}, datasets=("Tiny",), max_images=0)
    monkeypatch.setitem(gla_plugin.PRESETS, "tiny", preset)
    trained = []

    def fake_train(config, workdir):
        """Random params instead of training (the real path is the hash_rounds test's):
        no init/train-step compiles, the variants still differ in their parameters."""
        model = build_model(config)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
        rng = np.random.default_rng(len(trained))
        params = jax.tree.map(lambda x: rng.normal(0, 0.05, x.shape).astype(x.dtype),
                              shapes["params"])
        checkpoint.save_params(workdir, params, config, step=config.train.num_steps)
        trained.append(config.model.attention)
        return {"trained": True, "seconds": 0.0, "step": config.train.num_steps}
    monkeypatch.setattr(common, "train_if_needed", fake_train)
    text = gla_plugin.run(str(tmp_path), "tiny", note="tiny smoke run")
    assert trained == ["none", "gla"]
    assert gla_plugin.run(str(tmp_path), "tiny") and trained == ["none", "gla"]   # resumed
    plain = common.read_json(tmp_path / "results" / "fsrcnn_none.json")
    gla = common.read_json(tmp_path / "results" / "fsrcnn_gla.json")
    assert gla["params"] > plain["params"] and plain["steps"] == gla["steps"] == 2
    row = next(csv.DictReader(open(tmp_path / "gla_plugin.csv")))
    delta = float(row["psnr_gla"]) - float(row["psnr_plain"])
    assert abs(float(row["delta_db"]) - delta) < 1e-3 and row["paper_delta_db"] == "0.13"
    assert "| fsrcnn | Tiny | 2 |" in text and "tiny smoke run" in text


def test_benchmark_rows_and_attention_split():
    pytest.importorskip("torch")
    rows = benchmark.bench_variant("fsrcnn", "small", (16,), 1, True, tiny=True)
    fwd, step = rows
    assert (fwd["what"], step["what"]) == ("forward", "train_step")
    assert fwd["flops_per_px"] > 0 and fwd["jax_s"] > 0 and fwd["torch_s"] > 0
    assert step["batch"] == 2 and step["size"] == 16 and step["ratio"] > 0
    c = benchmark.variant_config("dlsn", "small", tiny=True)
    att = benchmark.attention_rows("dlsn", c, 16, 1)
    assert [a["what"] for a in att] == ["attention_fwd", "attention_train"]
    whole = {"what": "forward", "size": 16, "jax_s": att[0]["jax_s"] * 4, "torch_s": 1.0}
    both = [whole] + [dict(a, network="dlsn") for a in att]
    benchmark.add_shares(both)
    assert both[1]["jax_share"] == pytest.approx(0.25)     # 1 layer, a quarter of the time
    table = benchmark.markdown([dict(r, network="fsrcnn", variant="small", params=1)
                                for r in rows])
    assert "| fsrcnn | small | 1 | forward | 1x16x16 |" in table


def test_profile_split_classifies_ops_and_hides_untraced_shares():
    attn = [("body_0", "body_2")]
    op = "jit(f)/transpose(jvp(DLSN))/body_0/body_2/conv_match/conv_general_dilated"
    assert common.classify_op(op, "DLSN", attn) == "attention convs"
    assert common.classify_op(op.replace("conv_general_dilated", "sort"), "DLSN",
                              attn) == "attention core"
    assert common.classify_op("jit(f)/DLSN/body_1/conv_general_dilated", "DLSN",
                              attn) == "convolutions"
    row = {"what": "profile_fwd", "network": "dlsn", "variant": "small", "batch": 1,
           "size": 8, "jax_coverage": 0.1, **{f"jax_{k.replace(' ', '_')}": None
                                                for k in common.SPLIT},
           "torch_convolutions": 0.5, "torch_attention_convs": 0.1,
           "torch_attention_core": 0.3, "torch_other": 0.1}
    assert "| dlsn | small | fwd | 1x8x8 | 10% | - / 50% | - / 10% | - / 30% | - / 10% |" \
        in benchmark.split_table([row])
