import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No test asks a GCE metadata server for credentials. google.auth reads this once, when
# first imported: set later (gcs_emulator.client_env), the test process's own lookups
# still ping the server, 3 tries with back-off (5.5 s each in test_cloud_storage.py).
os.environ.setdefault("NO_GCE_CHECK", "true")

import json
import pathlib

import pytest
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
# Seconds per test (setup + call + teardown) of the last `make test-durations` run; a test
# above FAST_LIMIT_S there is `slow` (left out by `make test-fast`). A test not in the file
# yet counts as fast until the file is regenerated.
DURATIONS = REPO / "tests" / "durations.json"
FAST_LIMIT_S = 0.5


def pytest_configure(config):
    # grain's worker processes read absl flags; under pytest nobody parses them.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _module_source(item) -> str:
    path = pathlib.Path(str(item.fspath))
    cache = _module_source.cache
    if path not in cache:
        cache[path] = path.read_text()
    return cache[path]


_module_source.cache = {}


def pytest_collection_modifyitems(config, items):
    """Markers from what a test uses, so that no file has to remember them:
    needs_data (the shared_data fixture), subprocess (starts processes), torch (imports
    torch or the torch references), slow (over FAST_LIMIT_S in tests/durations.json, or
    marked by hand)."""
    durations = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    for item in items:
        if durations.get(item.nodeid, 0.0) > FAST_LIMIT_S:
            item.add_marker(pytest.mark.slow)
        source = _module_source(item)
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)
        if "subprocess" in source or "xla_cache_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.subprocess)
        if "import torch" in source or 'importorskip("torch")' in source \
                or "torch_refs" in source:
            item.add_marker(pytest.mark.torch)


def _shared_data_dir() -> pathlib.Path:
    env = os.environ.get("JAXSR_SHARED_DATA")
    return pathlib.Path(env) if env else REPO.parent / "shared" / "data"


def data_required() -> bool:
    """CI (.ci/run sets JAXSR_SHARED_DATA; most CI systems set CI=true) must have the data:
    a misplaced folder there is a failure, not 16 silent skips."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or bool(os.environ.get("JAXSR_SHARED_DATA"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (benchmarks, train images). Missing: a failure naming the path in CI
    (data_required), a skip with the reason on a developer's machine."""
    d = _shared_data_dir()
    missing = [sub for sub in ("benchmarks", "train") if not (d / sub).is_dir()]
    if missing:
        message = (f"shared data not found: {', '.join(str(d / m) for m in missing)} "
                   "(set JAXSR_SHARED_DATA to the folder holding benchmarks/ and train/)")
        if data_required():
            pytest.fail(message + " -- required here because CI or JAXSR_SHARED_DATA is set",
                        pytrace=False)
        pytest.skip(message)
    return d


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def xla_cache_env(tmp_path_factory) -> dict:
    """Environment for jaxsr subprocesses: CPU, and one persistent XLA compilation cache
    for the session, so that only the first of several identical runs compiles."""
    cache = tmp_path_factory.mktemp("xla_cache")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


# `make test-durations`: JAXSR_RECORD_DURATIONS=tests/durations.json records each test's
# setup + call + teardown seconds of this run into that file.
_recorded: dict = {}


def pytest_runtest_logreport(report):
    if os.environ.get("JAXSR_RECORD_DURATIONS"):
        _recorded[report.nodeid] = _recorded.get(report.nodeid, 0.0) + report.duration


_exit_status = [0]


def pytest_sessionfinish(session, exitstatus):
    _exit_status[0] = int(exitstatus)
    out = os.environ.get("JAXSR_RECORD_DURATIONS")
    is_xdist_worker = hasattr(session.config, "workerinput")   # the controller writes
    if out and _recorded and not is_xdist_worker:
        pathlib.Path(out).write_text(json.dumps(
            {k: round(v, 3) for k, v in sorted(_recorded.items())}, indent=0) + "\n")


def pytest_unconfigure(config):
    """pytest exits within a bound, with its status, even when a test left a data reader
    blocked forever (Grain prefetch threads in an ArrayRecord read from a stopped storage
    emulator), which interpreter shutdown would join forever (jaxsr.exit_bound)."""
    if not hasattr(config, "workerinput"):         # an xdist worker: execnet ends it
        from jaxsr import exit_bound
        exit_bound.end_within(_exit_status[0])
