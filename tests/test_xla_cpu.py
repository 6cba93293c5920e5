"""jaxsr's XLA:CPU default (jaxsr/xla_cpu.py), each case in a fresh interpreter."""
import importlib.metadata
import os
import subprocess
import sys

import pytest

from jaxsr import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOW = "import os, jaxsr; print(repr(os.environ.get('XLA_FLAGS')))"


def _flags_after_import(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT_ENV)}
    out = subprocess.run([sys.executable, "-c", SHOW], env={**base, **env}, cwd=REPO,
                         check=True, capture_output=True, text=True, timeout=120).stdout.strip()
    return eval(out)  # noqa: S307 (our own repr of a str or None)


verified = importlib.metadata.version("jaxlib").startswith(xla_cpu.VERIFIED_JAXLIB)


@pytest.mark.skipif(not verified, reason="jaxlib version where the flag was not checked")
def test_import_adds_the_flag_and_keeps_user_flags():
    assert _flags_after_import() == "--xla_cpu_experimental_ynn_fusion_type="
    flags = _flags_after_import(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert flags == ("--xla_force_host_platform_device_count=2 "
                     "--xla_cpu_experimental_ynn_fusion_type=")


def test_user_setting_and_opt_out_win():
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert _flags_after_import(XLA_FLAGS=mine) == mine
    assert _flags_after_import(**{xla_cpu.OPT_OUT_ENV: "0"}) is None


def test_unverified_jaxlib_is_left_alone(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(xla_cpu.OPT_OUT_ENV, raising=False)
    assert xla_cpu.prefer_eigen_convolutions() is False
    assert "XLA_FLAGS" not in os.environ
