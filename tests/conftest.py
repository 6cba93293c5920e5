import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # grain's worker processes read absl flags; under pytest nobody parses them.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _shared_data_dir() -> pathlib.Path:
    env = os.environ.get("JAXSR_SHARED_DATA")
    return pathlib.Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (benchmarks, train images); tests that need it skip when absent."""
    d = _shared_data_dir()
    if not (d / "benchmarks").is_dir():
        pytest.skip(f"shared benchmark data not found at {d} (set JAXSR_SHARED_DATA)")
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
