"""environment.yml (conda) and pyproject.toml declare the same dependencies."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda package name -> PyPI name


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    pip_side = {_name(r): r for r in project["dependencies"] + extras}
    conda_side = {}
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        if in_deps and line.startswith("  - "):
            item = line[4:].strip()
            name = CONDA_NAMES.get(_name(item), _name(item))
            if name not in ("python", "pip"):
                conda_side[name] = item
    assert set(pip_side) == set(conda_side)
    for name, req in pip_side.items():  # same lower bounds (torch: pinned to the Makefile's version instead)
        pin = re.search(r">=\s*([\w.]+)", req)
        if name == "torch":
            assert conda_side[name] == f"pytorch={makefile_torch_version()}"
            assert _version(makefile_torch_version()) >= _version(pin.group(1))
            continue
        conda_pin = re.search(r">=\s*([\w.]+)", conda_side[name])
        assert (pin and pin.group(1)) == (conda_pin and conda_pin.group(1)), name


def makefile_torch_version() -> str:
    return re.search(r"^TORCH_VERSION \?= ([\w.]+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_license_is_an_spdx_expression():  # the table form makes setuptools warn on every install
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_declared_dependencies_cover_the_design():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    assert {"torch", "numpy", "scipy", "h5py", "matplotlib", "seaborn", "jupyterlab", "ipykernel", "papermill",
            "ipywidgets", "tqdm", "pandas"} <= names


def test_the_video_libraries_are_an_optional_extra_that_make_test_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    video = {_name(r) for r in project["optional-dependencies"]["video"]}
    assert {"av", "transformers"} <= video
    assert not video & {_name(r) for r in project["dependencies"]}
    install = [line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line and "-e" in line]
    assert install and all("video" in line for line in install)
