"""How this `koprogo` is installed: its version, and the command line that runs it from here.

`make install` puts `koprogo` in the project's .venv/bin, which is usually not on the PATH, so
a message saying "run `koprogo down`" fails when pasted. Every command the CLI prints for the
user goes through `command_hint`, which renders the invocation that works in the current
directory's shell.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

# cli/pyproject.toml's [project] name and [project.scripts] entry.
DISTRIBUTION = "koprogo-cli"
SCRIPT = "koprogo"


def installed_version() -> str:
    """The version of the installed koprogo-cli distribution (what `koprogo --version` prints)."""
    return version(DISTRIBUTION)


def command_hint(*args: str) -> str:
    """`koprogo ARGS` as the user can paste it here: `koprogo` when the PATH finds this
    interpreter's script, else that script's path (relative when it is under the current
    directory, e.g. `.venv/bin/koprogo`), else `python -m koprogo_cli.main`."""
    return shlex.join([*_program(), *args])


def _program() -> list[str]:
    # Not resolved: a venv's python is a symlink to the base interpreter, outside the venv.
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / SCRIPT
    if not script.is_file():
        # Importable but installed without its script (or run from a source tree).
        return [_as_typed(python), "-m", "koprogo_cli.main"]
    on_path = shutil.which(SCRIPT)
    if on_path is not None and _same_file(on_path, script):
        return [SCRIPT]
    return [_as_typed(script)]


def _same_file(a: str | Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _as_typed(path: Path) -> str:
    """`path` relative to the current directory when it lies under it, else absolute."""
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        # The current directory is a resolved path; the script's folder may go through a
        # symlink. Only the folder is resolved: a venv's python must keep its own name.
        try:
            relative = (path.parent.resolve() / path.name).relative_to(Path.cwd())
        except ValueError:
            return str(path)
    # A bare name would be looked up on the PATH, not here.
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"
