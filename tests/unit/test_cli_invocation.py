"""`command_hint`: the `koprogo ...` a message prints works when pasted in the current directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from koprogo_cli.invocation import command_hint, installed_version

PROJECT = Path(__file__).resolve().parents[2]


def _fake_install(root: Path) -> Path:
    """A venv's bin folder: its python (a symlink, as venv makes it) and a `koprogo` script."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    script = bin_dir / "koprogo"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    return bin_dir


@pytest.fixture
def installed_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder whose .venv runs this test as far as `command_hint` can tell; PATH empty of it."""
    bin_dir = _fake_install(tmp_path / "project")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    return tmp_path / "project"


def test_from_the_project_folder_it_is_the_venvs_script_relative(
    installed_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(installed_in)
    assert command_hint("down") == ".venv/bin/koprogo down"


def test_from_inside_the_bin_folder_the_script_keeps_a_slash(
    installed_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(installed_in / ".venv" / "bin")
    assert command_hint("down") == "./koprogo down"


def test_from_elsewhere_it_is_the_absolute_path(
    installed_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert command_hint("down") == f"{installed_in}/.venv/bin/koprogo down"


def test_when_the_path_finds_this_script_it_is_the_bare_name(
    installed_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{installed_in}/.venv/bin:/usr/bin:/bin")
    monkeypatch.chdir(installed_in)
    assert command_hint("up", "--detach") == "koprogo up --detach"


def test_another_install_on_the_path_is_not_taken_for_this_one(
    installed_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _fake_install(tmp_path / "other")
    monkeypatch.setenv("PATH", f"{other}:/usr/bin:/bin")
    monkeypatch.chdir(installed_in)
    assert command_hint("down") == ".venv/bin/koprogo down"


def test_arguments_are_quoted_for_the_shell(installed_in: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(installed_in)
    assert (
        command_hint("up", "--data-dir", "/srv/my data") == ".venv/bin/koprogo up --data-dir '/srv/my data'"
    )


def test_without_its_script_it_is_python_dash_m(installed_in: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (installed_in / ".venv" / "bin" / "koprogo").unlink()
    monkeypatch.chdir(installed_in)
    assert command_hint("down") == ".venv/bin/python -m koprogo_cli.main down"


def test_the_hint_runs_as_printed_from_the_project_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real install (`make install`'s .venv), with its bin folder off the PATH as a newcomer has it."""
    bin_dir = str(Path(os.path.abspath(sys.executable)).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != bin_dir)
    monkeypatch.setenv("PATH", path)
    monkeypatch.chdir(PROJECT)
    hint = command_hint("--version")
    assert hint.startswith(".venv/bin/koprogo"), hint
    done = subprocess.run(hint, shell=True, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"koprogo {installed_version()}\n"
