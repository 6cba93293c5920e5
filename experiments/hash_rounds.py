"""Hashing-rounds / chunk-size study for the LSH-attention models (DLSN Table II, Fig. 6).

For a model config (DLSN or NLSN, or a GLA plug-in model) it trains one checkpoint per
training setting (R_train rounds, chunk size K) in its own workdir, evaluates each at every
test setting (R_test rounds; K stays the training one, DLSN's GLA `fc` fixes it) on the
named benchmark sets, and records PSNR_Y / SSIM_Y (evaluate mode's protocol and code),
forward latency at a fixed LR size, compile time and peak memory (XLA memory analysis of
the compiled forward; plus the device counter on GPU/TPU).

  python experiments/hash_rounds.py --config configs/dlsn.py:small \\
      --workdir experiments/results/hash_rounds_cpu --preset cpu
  python experiments/hash_rounds.py --config configs/dlsn.py --workdir DIR --preset paper \\
      --cell 3            # only training setting #3 (e.g. a job-array index), then:
  python experiments/hash_rounds.py --config configs/dlsn.py --workdir DIR --stage report
  --stage latency re-times the finished cells (e.g. on an idle machine), then report.
  --list prints the cells; --study.<field>=... overrides the study (fields below);
  --config.<field>=... overrides the model config (e.g. --config.train.num_steps=300).

Resumable: training resumes from its checkpoint and stops at num_steps; a finished
evaluation cell (DIR/cells/<cell>.json) is skipped. Checkpoints go to DIR/train/<R>_<K>
(or --study.train_dir, e.g. a folder outside the repository). Cells are independent, so a sweep can be
spread over jobs (`--cell i`, i < the number of training settings) and reported once all
are done. Output in DIR: hash_rounds.csv, hash_rounds.md (tables shaped like DLSN's Table
II: rows R_train, columns R_test), psnr_vs_rounds.png, latency_vs_rounds.png,
psnr_vs_chunk.png.
"""
import itertools
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import common  # noqa: E402
from jaxsr import config_util  # noqa: E402


def study_defaults(preset: str = "cpu") -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.train_rounds = (1, 2, 4)
    s.test_rounds = (1, 2, 3, 4)
    s.chunk_sizes = ()          # empty: the config's chunk_size only
    s.grid = "star"             # 'full': every (R, K); 'star': all R at K0 (tested at
    #                             every R_test), all K at R0 (tested at R_test = R0 only)
    s.star_rounds = 0           # R0 of the star (0: the config's n_hashes)
    s.datasets = ("Set5", "Set14")
    s.scale = 0                 # 0: the config's
    s.num_steps = 0             # 0: the config's train.num_steps
    s.max_images = 0            # >0: first N images of each set
    s.latency_size = 128        # LR side of the timed forward
    s.latency_repeats = 5
    s.train_dir = ""            # checkpoints of the training settings ('': DIR/train)
    if preset == "paper":
        s.train_rounds = (1, 2, 3, 4)
        s.test_rounds = (1, 2, 3, 4)
        s.datasets = ("Set5", "Set14", "B100", "Urban100")
        s.grid = "full"
    elif preset == "tiny":      # the smoke test
        s.train_rounds, s.test_rounds, s.datasets = (1, 2), (1, 2), ("Set5",)
        s.max_images, s.latency_size, s.latency_repeats = 1, 16, 1
    elif preset != "cpu":
        raise ValueError(f"--preset={preset!r}: use cpu, paper or tiny")
    return s


# ---------------------------------------------------------------------------------------
# Cells

def training_settings(study, config) -> list[tuple[int, int]]:
    """[(R_train, K)] in a fixed order (the --cell index refers to it)."""
    rounds = [int(r) for r in study.train_rounds]
    chunks = [int(k) for k in study.chunk_sizes] or [int(config.model.chunk_size)]
    if study.grid == "full":
        return list(itertools.product(rounds, chunks))
    if study.grid != "star":
        raise ValueError(f"--study.grid={study.grid!r}: use 'full' or 'star'")
    r0 = int(study.star_rounds or config.model.n_hashes)
    cells = [(r, chunks[0]) for r in rounds]
    return cells + [(r0, k) for k in chunks[1:] if (r0, k) not in cells]


def test_rounds_for(study, config, chunk: int) -> tuple:
    """Every R_test, except on the chunk arm of a star grid: there only R_test = R0 (the
    chunk-size curve compares K at R_test = R_train)."""
    chunks = [int(k) for k in study.chunk_sizes] or [int(config.model.chunk_size)]
    if study.grid == "star" and chunk != chunks[0]:
        return (int(study.star_rounds or config.model.n_hashes),)
    return tuple(int(t) for t in study.test_rounds)


def cell_name(r_train: int, chunk: int, r_test: int | None = None) -> str:
    name = f"R{r_train}_K{chunk}"
    return name if r_test is None else f"{name}_T{r_test}"


def cell_config(base, study, r_train: int, chunk: int, r_test: int | None = None):
    c = ml_collections.ConfigDict(base.to_dict())   # unlocked deep copy
    if "n_hashes" not in c.model or "chunk_size" not in c.model:
        raise ValueError(f"config.model ({c.model.name}) has no n_hashes/chunk_size: the "
                         "study needs an LSH-attention model (dlsn, nlsn, or attention='gla')")
    c.model.n_hashes = int(r_train if r_test is None else r_test)
    c.model.chunk_size = int(chunk)
    if study.scale:
        c.scale = int(study.scale)
        c.train.patch_size = int(base.train.patch_size // base.scale * study.scale)
    if study.num_steps:
        ratio = study.num_steps / base.train.num_steps
        c.train.num_steps = int(study.num_steps)
        c.train.lr_milestones = tuple(max(1, int(m * ratio)) for m in base.train.lr_milestones)
        c.train.checkpoint_every = min(base.train.checkpoint_every, c.train.num_steps)
    c.eval.datasets = tuple(study.datasets)
    c.eval.max_images = int(study.max_images)
    c.eval.compare_bicubic = False
    return c


def run_training_setting(base, study, workdir: str, r_train: int, chunk: int) -> list[dict]:
    """Trains (or reuses) one setting, then evaluates every missing test cell."""
    tcfg = cell_config(base, study, r_train, chunk)
    twd = os.path.join(study.train_dir or os.path.join(workdir, "train"),
                       cell_name(r_train, chunk))
    info = common.train_if_needed(tcfg, twd)
    info_path = os.path.join(workdir, "cells", f"train_{cell_name(r_train, chunk)}.json")
    if info["trained"] or not os.path.isfile(info_path):
        prev = common.read_json(info_path) if os.path.isfile(info_path) else {}
        info["seconds"] += prev.get("seconds", 0.0)
        common.write_json(info_path, info)
    rows = []
    for r_test in test_rounds_for(study, base, chunk):
        path = os.path.join(workdir, "cells", cell_name(r_train, chunk, r_test) + ".json")
        if os.path.isfile(path):
            rows.append(common.read_json(path))
            continue
        ecfg = cell_config(base, study, r_train, chunk, r_test)
        sets, apply_fn = common.evaluate_sets(ecfg, twd)
        size = int(study.latency_size)
        timing = common.time_forward(apply_fn, (1, size, size, 3), study.latency_repeats)
        row = {"model": ecfg.model.name, "scale": int(ecfg.scale), "train_rounds": r_train,
               "chunk_size": chunk, "test_rounds": int(r_test), "sets": sets,
               "latency_size": size, **timing, "train_steps": int(tcfg.train.num_steps)}
        common.write_json(path, row)
        logging.info("cell %s: %s", os.path.basename(path), row)
        rows.append(row)
    return rows


def retime(base, study, workdir: str, settings, cell: int = -1) -> None:
    """Measures latency and memory of every finished cell again (no evaluation), e.g. on
    an idle machine after a sweep that shared its CPU; the cells are updated in place."""
    from jaxsr import evaluate
    for i, (r, k) in enumerate(settings):
        if cell not in (-1, i):
            continue
        twd = os.path.join(study.train_dir or os.path.join(workdir, "train"), cell_name(r, k))
        for t in test_rounds_for(study, base, k):
            path = os.path.join(workdir, "cells", cell_name(r, k, t) + ".json")
            if not os.path.isfile(path):
                continue
            row = common.read_json(path)
            model, params = evaluate.load_model_params(cell_config(base, study, r, k, t), twd)
            size = int(study.latency_size)
            timing = common.time_forward(evaluate.make_apply_fn(model, params),
                                         (1, size, size, 3), study.latency_repeats)
            row.update(timing, latency_size=size, retimed=common.machine_info())
            common.write_json(path, row)
            logging.info("retimed %s: %.1f ms", os.path.basename(path), 1000 * row["latency_s"])


# ---------------------------------------------------------------------------------------
# Report

def collect(workdir: str) -> list[dict]:
    cells = os.path.join(workdir, "cells")
    names = sorted(n for n in os.listdir(cells) if n.startswith("R") and n.endswith(".json")) \
        if os.path.isdir(cells) else []
    return [common.read_json(os.path.join(cells, n)) for n in names]


def flat_rows(cells: list[dict]) -> list[dict]:
    rows = []
    for c in cells:
        row = {k: c[k] for k in ("model", "scale", "train_rounds", "chunk_size", "test_rounds",
                                 "latency_size", "latency_s", "peak_bytes",
                                 "device_peak_bytes", "train_steps") if k in c}
        for s, r in c["sets"].items():
            row[f"{s}_psnr_y"], row[f"{s}_ssim_y"] = round(r["psnr_y"], 4), round(r["ssim_y"], 5)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["chunk_size"], r["train_rounds"], r["test_rounds"]))


def table_ii(rows: list[dict], chunk: int, dataset: str) -> str:
    """Rows R_train, columns R_test, cells PSNR_Y / SSIM_Y (DLSN Table II's shape)."""
    sub = [r for r in rows if r["chunk_size"] == chunk]
    tr = sorted({r["train_rounds"] for r in sub})
    te = sorted({r["test_rounds"] for r in sub})
    get = {(r["train_rounds"], r["test_rounds"]): r for r in sub}
    body = []
    for a in tr:
        line = [f"R_train={a}"]
        for b in te:
            r = get.get((a, b))
            line.append(f"{r[f'{dataset}_psnr_y']:.2f} / {r[f'{dataset}_ssim_y']:.4f}"
                        if r and f"{dataset}_psnr_y" in r else "-")
        body.append(line)
    return common.markdown_table([f"{dataset}, K={chunk}"] + [f"R_test={b}" for b in te], body)


def chunk_table(rows: list[dict], sets: list[str]) -> str:
    body = []
    for r in sorted((r for r in rows if r["train_rounds"] == r["test_rounds"]),
                    key=lambda r: (r["train_rounds"], r["chunk_size"])):
        body.append([r["chunk_size"], r["train_rounds"]] +
                    [f"{r[f'{s}_psnr_y']:.2f} / {r[f'{s}_ssim_y']:.4f}" for s in sets])
    return common.markdown_table(["K", "R"] + sets, body)


def latency_table(rows: list[dict]) -> str:
    keys = sorted({(r["chunk_size"], r["test_rounds"]) for r in rows})
    body = []
    for k, t in keys:
        sub = [r for r in rows if r["chunk_size"] == k and r["test_rounds"] == t]
        lat = sorted(r["latency_s"] for r in sub)[len(sub) // 2]
        mem = max(r["peak_bytes"] for r in sub)
        body.append([k, t, f"{lat * 1000:.1f}", f"{mem / 2**20:.1f}"])
    size = rows[0]["latency_size"]
    return common.markdown_table(
        ["K", "R_test", f"forward ms ({size}x{size} LR)", "peak MiB (XLA)"], body)


def write_report(workdir: str, machine: dict, note: str = "", order=()) -> str:
    rows = flat_rows(collect(workdir))
    if not rows:
        raise FileNotFoundError(f"no finished cells under {workdir}/cells")
    common.write_csv(os.path.join(workdir, "hash_rounds.csv"), rows)
    sets = [k[:-len("_psnr_y")] for k in rows[0] if k.endswith("_psnr_y")]
    sets = [s for s in order if s in sets] + [s for s in sets if s not in order]
    parts = [f"# Hashing rounds study: {rows[0]['model']} x{rows[0]['scale']}", "",
             note or "", "", f"Machine: {machine}", ""]
    chunks = sorted({r["chunk_size"] for r in rows})
    for k in chunks:
        if len({(r["train_rounds"], r["test_rounds"]) for r in rows if r["chunk_size"] == k}) > 1:
            for s in sets:
                parts += [table_ii(rows, k, s), ""]
    if len(chunks) > 1:
        parts += ["PSNR_Y / SSIM_Y vs chunk size (R_test = R_train):", "",
                  chunk_table(rows, sets), ""]
    parts += ["Latency and memory (median over training settings):", "", latency_table(rows)]
    text = "\n".join(parts) + "\n"
    common.write_text(os.path.join(workdir, "hash_rounds.md"), text)
    plot(rows, sets, workdir)
    return text


def plot(rows: list[dict], sets: list[str], workdir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    chunks = sorted({r["chunk_size"] for r in rows})
    k0 = max(chunks, key=lambda k: len({r["train_rounds"] for r in rows if r["chunk_size"] == k}))
    sub = [r for r in rows if r["chunk_size"] == k0]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for a in sorted({r["train_rounds"] for r in sub}):
            pts = sorted((r["test_rounds"], r[f"{s}_psnr_y"]) for r in sub if r["train_rounds"] == a)
            ax.plot(*zip(*pts), marker="o", label=f"R_train={a}")
        ax.set(xlabel="R_test (hash rounds at test)", ylabel="PSNR_Y (dB)", title=f"{s}, K={k0}",
               xticks=sorted({r["test_rounds"] for r in sub}))
        ax.legend()
    _save(fig, workdir, "psnr_vs_rounds.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    for k in chunks:
        pts = {}
        for r in rows:
            if r["chunk_size"] == k:
                pts.setdefault(r["test_rounds"], []).append(r["latency_s"] * 1000)
        xs = sorted(pts)
        ax.plot(xs, [sorted(pts[x])[len(pts[x]) // 2] for x in xs], marker="o", label=f"K={k}")
    ax.set(xlabel="R_test", ylabel=f"forward ms ({rows[0]['latency_size']}px LR)",
           title="latency vs rounds", xticks=sorted({r["test_rounds"] for r in rows}))
    ax.legend()
    _save(fig, workdir, "latency_vs_rounds.png")
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, s in zip(axes[0], sets):
        diag = sorted({(r["chunk_size"], r[f"{s}_psnr_y"]) for r in rows
                       if r["train_rounds"] == r["test_rounds"]})
        for rt in sorted({r["train_rounds"] for r in rows if len(chunks) > 1}):
            pts = sorted((r["chunk_size"], r[f"{s}_psnr_y"]) for r in rows
                         if r["train_rounds"] == rt and r["test_rounds"] == rt)
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker="o", label=f"R={rt}")
        if not ax.lines and diag:
            ax.plot(*zip(*diag), marker="o")
        ax.set(xlabel="chunk size K", ylabel="PSNR_Y (dB)", title=f"{s} (R_test = R_train)",
               xticks=chunks)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    _save(fig, workdir, "psnr_vs_chunk.png")


def _save(fig, workdir, name):
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, name), dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Entry point

def run(config, study, workdir: str, cell: int = -1, stage: str = "all",
        note: str = "") -> str | None:
    """Runs the cells (all, or training setting `cell`) and/or writes the report."""
    workdir = os.path.abspath(workdir)
    settings = training_settings(study, config)
    if cell >= len(settings):
        raise ValueError(f"--cell={cell}: there are {len(settings)} training settings")
    if stage in ("all", "run"):
        meta_path = os.path.join(workdir, "study.json")
        meta = {"study": study.to_dict(), "config": config.to_dict(),
                "machine": common.machine_info()}
        if os.path.isfile(meta_path):     # keep the first run's machine facts, add ours
            old = common.read_json(meta_path)
            meta["machine"] = old["machine"]
            meta["later_runs"] = old.get("later_runs", []) + [common.machine_info()]
        common.write_json(meta_path, meta)
        for i, (r, k) in enumerate(settings):
            if cell in (-1, i):
                run_training_setting(config, study, workdir, r, k)
    if stage == "latency":
        retime(config, study, workdir, settings, cell)
    if stage in ("all", "report") and cell == -1:
        meta = common.read_json(os.path.join(workdir, "study.json"))
        text = write_report(workdir, meta["machine"], note, tuple(study.datasets))
        print(text)
        return text
    return None


def resolve_study(preset: str, overrides, argv) -> ml_collections.ConfigDict:
    """Preset defaults with the fields given on the command line (--study.x) on top."""
    study = study_defaults(preset)
    for key in config_util.override_keys(argv, "study"):
        study[key] = overrides[key]
    return study


def define_flags():
    config_flags.DEFINE_config_file("config", None, "Model config (configs/X.py[:arg]).")
    flags.DEFINE_enum("preset", "cpu", ["cpu", "paper", "tiny"], "Study defaults.")
    config_flags.DEFINE_config_dict("study", study_defaults("cpu"), "Study settings.")
    flags.DEFINE_string("workdir", None, "Output folder of the study.")
    flags.DEFINE_integer("cell", -1, "Only this training setting (index); -1: all.")
    flags.DEFINE_enum("stage", "all", ["all", "run", "report", "latency"],
                      "Run cells, report, both (all), or re-time the finished cells.")
    flags.DEFINE_bool("list", False, "Print the training settings and exit.")
    flags.DEFINE_string("note", "", "Text put at the top of hash_rounds.md.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.setup_logging()
    f = flags.FLAGS
    study = resolve_study(f.preset, f.study, sys.argv)
    if f.list:
        for i, (r, k) in enumerate(training_settings(study, f.config)):
            print(f"{i}: R_train={r} K={k} -> test rounds "
                  f"{test_rounds_for(study, f.config, k)}")
        return
    run(f.config, study, f.workdir, f.cell, f.stage, f.note)


if __name__ == "__main__":
    define_flags()
    app.run(main)
