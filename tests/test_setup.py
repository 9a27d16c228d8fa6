"""`make setup`: torch is (re)installed exactly when the TORCH value changes, with a fake .venv python.

The fake python records every call and keeps "torch is installed" as a file, so the Makefile's
decisions are checked without pip or the network.
"""
from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

FAKE_PYTHON = """#!/bin/sh
# records its arguments; 'torch installed' is the file torch.installed next to it
here=$(dirname "$0")
echo "$*" >> "$here/calls.log"
case "$*" in
  "-c import torch") test -f "$here/torch.installed" ;;
  "-m pip uninstall"*) rm -f "$here/torch.installed" ;;
  "-m pip install -q torch"*) echo "$*" > "$here/torch.installed" ;;
  *) true ;;
esac
"""


def fake_venv(tmp_path: Path, torch_installed: bool = False, spec: str | None = None) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(FAKE_PYTHON)
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    if torch_installed:
        (venv / "bin" / "torch.installed").write_text("old\n")
    if spec is not None:
        (venv / ".ralbook-torch").write_text(spec + "\n")
    return venv


def make_setup(venv: Path, *assignments: str) -> list[str]:
    """Run `make setup` against the fake venv; the pip calls it made."""
    log = venv / "bin" / "calls.log"
    log.unlink(missing_ok=True)
    subprocess.run(["make", "-s", "-C", str(ROOT), "setup", f"VENV={venv}", *assignments], check=True,
                   capture_output=True, text=True)
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip")] if log.exists() else []


def recorded(venv: Path) -> str:
    return (venv / ".ralbook-torch").read_text().strip()


def test_a_fresh_venv_gets_the_default_torch_and_records_it(tmp_path):
    venv = fake_venv(tmp_path)
    calls = make_setup(venv)
    assert "-m pip install -q torch==2.13.0" in calls
    assert not any("uninstall" in c for c in calls)
    assert recorded(venv) == "torch==2.13.0"
    assert any(c.startswith("-m pip install -q -e") for c in calls)  # then the package itself


def test_the_same_torch_again_installs_nothing(tmp_path):
    venv = fake_venv(tmp_path)
    make_setup(venv)
    assert make_setup(venv) == []


def test_another_torch_replaces_the_installed_one(tmp_path):
    venv = fake_venv(tmp_path)
    make_setup(venv)
    cuda = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    calls = make_setup(venv, f"TORCH={cuda}")
    assert calls.index("-m pip uninstall -q -y torch") < calls.index(f"-m pip install -q {cuda}")
    assert recorded(venv) == cuda
    assert make_setup(venv, f"TORCH={cuda}") == []  # recorded: nothing more to do


def test_cpu_1_takes_the_cpu_wheel_index(tmp_path):
    venv = fake_venv(tmp_path)
    calls = make_setup(venv, "CPU=1")
    assert "-m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in calls
    assert recorded(venv) == "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def test_a_venv_from_before_the_record_keeps_its_torch_by_default(tmp_path):
    venv = fake_venv(tmp_path, torch_installed=True)
    calls = make_setup(venv)
    assert not any("torch" in c for c in calls)
    assert recorded(venv) == "torch==2.13.0"


def test_a_venv_from_before_the_record_switches_when_torch_is_named(tmp_path):
    venv = fake_venv(tmp_path, torch_installed=True)
    calls = make_setup(venv, "CPU=1")
    assert "-m pip uninstall -q -y torch" in calls
    assert recorded(venv).endswith("--index-url https://download.pytorch.org/whl/cpu")
