"""GLA as a general building block (DLSN section 4.3.3, Fig. 5): each host network trained
with and without GLA (`config.model.attention`) at the same budget, scored on benchmarks.

  python experiments/gla_plugin.py --workdir experiments/results/gla_plugin_cpu --preset cpu
  python experiments/gla_plugin.py --workdir DIR --preset paper --only rcan   # one host

The paper reports +0.13 / +0.14 / +0.17 dB for FSRCNN / EDSR / RCAN (full-size models,
full DIV2K training). Both variants of a host share the config, seed, data order and
number of steps; only `config.model.attention` differs. Resumable: a finished training
run is reused and a finished (host, variant) result in DIR/results/ is skipped.
Output: DIR/gla_plugin.csv and DIR/gla_plugin.md.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402
from jaxsr import summary  # noqa: E402

PAPER_GAIN_DB = {"fsrcnn": 0.13, "edsr": 0.14, "rcan": 0.17}   # DLSN Fig. 5 / section 4.3.3

PRESETS = {
    # host -> (config spec, overrides); 'steps' is the fixed training budget per variant.
    "cpu": {"steps": 300, "datasets": ("Set5", "Set14"), "max_images": 0,
            "hosts": {"fsrcnn": ("configs/fsrcnn.py:small", {}),
                      "edsr": ("configs/edsr.py:small", {"model.n_resblocks": 4,
                                                         "model.n_feats": 32,
                                                         "model.chunk_size": 64,
                                                         "model.n_hashes": 2}),
                      "rcan": ("configs/rcan.py:small", {})}},
    "paper": {"steps": 0, "datasets": ("Set5", "Set14", "B100", "Urban100"), "max_images": 0,
              "hosts": {"fsrcnn": ("configs/fsrcnn.py", {}), "edsr": ("configs/edsr.py", {}),
                        "rcan": ("configs/rcan.py", {})}},
    "tiny": {"steps": 2, "datasets": ("Set5",), "max_images": 1,
             "hosts": {"fsrcnn": ("configs/fsrcnn.py:small",
                                  {"model.d": 8, "model.s": 4, "model.m": 1,
                                   "model.chunk_size": 16, "train.batch_size": 2,
                                   "train.patch_size": 32})}},
}


def host_config(spec: str, overrides: dict, attention: str, steps: int, datasets, max_images):
    c = common.load_config(spec)
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    c.model.attention = attention
    if steps:
        ratio = steps / c.train.num_steps
        c.train.lr_milestones = tuple(max(1, int(m * ratio)) for m in c.train.lr_milestones)
        c.train.lr_halve_every = int(c.train.lr_halve_every * ratio)
        c.train.num_steps = steps
        c.train.checkpoint_every = steps
    c.eval.datasets = tuple(datasets)
    c.eval.max_images = max_images
    c.eval.compare_bicubic = False
    return c


def run_variant(workdir: str, host: str, attention: str, preset: dict) -> dict:
    path = os.path.join(workdir, "results", f"{host}_{attention}.json")
    if os.path.isfile(path):
        return common.read_json(path)
    spec, overrides = preset["hosts"][host]
    c = host_config(spec, overrides, attention, preset["steps"], preset["datasets"],
                    preset["max_images"])
    wd = os.path.join(workdir, "train", f"{host}_{attention}")
    info = common.train_if_needed(c, wd)
    sets, _ = common.evaluate_sets(c, wd)
    row = {"host": host, "attention": attention, "config": spec, "overrides": overrides,
           "params": summary.count_params(summary.param_shapes(c)[1]),
           "steps": int(c.train.num_steps), "train_seconds": info["seconds"], "sets": sets}
    common.write_json(path, row)
    logging.info("%s/%s: %s", host, attention, row)
    return row


def report(workdir: str, results: list[dict], machine: dict, note: str = "", order=()) -> str:
    by = {(r["host"], r["attention"]): r for r in results}
    hosts = [h for h in dict.fromkeys(r["host"] for r in results)
             if (h, "none") in by and (h, "gla") in by]
    order = list(order)
    sets = sorted(results[0]["sets"],
                  key=lambda s: (order.index(s) if s in order else len(order), s))
    csv_rows, body = [], []
    for h in hosts:
        a, b = by[(h, "none")], by[(h, "gla")]
        for s in sets:
            d = b["sets"][s]["psnr_y"] - a["sets"][s]["psnr_y"]
            csv_rows.append({"host": h, "set": s, "steps": a["steps"],
                             "params_plain": a["params"], "params_gla": b["params"],
                             "psnr_plain": round(a["sets"][s]["psnr_y"], 4),
                             "psnr_gla": round(b["sets"][s]["psnr_y"], 4),
                             "delta_db": round(d, 4),
                             "ssim_plain": round(a["sets"][s]["ssim_y"], 5),
                             "ssim_gla": round(b["sets"][s]["ssim_y"], 5),
                             "train_s_plain": round(a["train_seconds"], 1),
                             "train_s_gla": round(b["train_seconds"], 1),
                             "paper_delta_db": PAPER_GAIN_DB.get(h)})
            body.append([h, s, a["steps"], f"{a['params']:,} / {b['params']:,}",
                         f"{a['sets'][s]['psnr_y']:.2f}", f"{b['sets'][s]['psnr_y']:.2f}",
                         f"{d:+.2f}", f"+{PAPER_GAIN_DB.get(h, float('nan')):.2f}"])
    common.write_csv(os.path.join(workdir, "gla_plugin.csv"), csv_rows)
    table = common.markdown_table(
        ["host", "set", "steps", "params (plain / +GLA)", "PSNR_Y plain", "PSNR_Y +GLA",
         "gain (dB)", "paper gain (full models)"], body)
    text = "\n".join(["# GLA as a plug-in block", "", note, "", f"Machine: {machine}", "",
                      table, ""])
    common.write_text(os.path.join(workdir, "gla_plugin.md"), text)
    return text


def run(workdir: str, preset_name: str = "cpu", only=(), steps: int = 0, note: str = "") -> str:
    preset = dict(PRESETS[preset_name])
    if steps:
        preset["steps"] = steps
    workdir = os.path.abspath(workdir)
    meta_path = os.path.join(workdir, "study.json")
    if not os.path.isfile(meta_path):
        common.write_json(meta_path, {"preset": preset_name, "machine": common.machine_info()})
    results = []
    for host in preset["hosts"]:
        if only and host not in only:
            continue
        for attention in ("none", "gla"):
            results.append(run_variant(workdir, host, attention, preset))
    text = report(workdir, results, common.read_json(meta_path)["machine"], note,
                  preset["datasets"])
    print(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--only", nargs="*", default=(), help="hosts to run (default: all)")
    ap.add_argument("--steps", type=int, default=0, help="training steps per variant")
    ap.add_argument("--note", default="", help="text at the top of gla_plugin.md")
    args = ap.parse_args(argv)
    common.setup_logging()
    bad = [h for h in args.only if h not in PRESETS[args.preset]["hosts"]]
    if bad:
        ap.error(f"--only {bad}: hosts of preset {args.preset} are "
                 f"{sorted(PRESETS[args.preset]['hosts'])}")
    run(args.workdir, args.preset, tuple(args.only), args.steps, args.note)


if __name__ == "__main__":
    main()
