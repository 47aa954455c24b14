"""`koprogo models pull|list|rm`: the GGUF files this machine's edge nodes serve.

The same commands as `koprogo-node models` (one model manager, the node's own), run in place
of this process (exec: same terminal, signals and exit code, so a pull's progress bar redraws
in place and Ctrl-C stops it) on the one models folder the stack's nodes read
(`$KOPROGO_MODELS_DIR`, else ~/.local/share/koprogo/models), with this command's name in its
messages and, after a pull, the `koprogo up --model` that serves the model. `koprogo models`
alone still lists what the gateway serves.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from koprogo_cli.invocation import command_hint

LOCAL_COMMANDS = ("pull", "list", "rm")
PROG = "koprogo models"
NODE_PACKAGE = "koprogo_node"

# The node's models entry point (`koprogo-node models`), given this command's name and serve
# hint; argv: prog, the serve command without its model id, then the `models` arguments. A
# reader that goes away (`koprogo models list | head -1`) ends it quietly, as `koprogo` does.
NODE_MODELS_ENTRY = """\
import os, shlex, sys
from koprogo_node.entrypoints.models_cli import models_main
prog, serve, *argv = sys.argv[1:]
try:
    code = models_main(argv, prog=prog, serve_with=lambda model_id: f"{serve} {shlex.quote(model_id)}")
    sys.stdout.flush()
except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 1
sys.exit(code)
"""


def local_models_command(argv: list[str]) -> int | None:
    """Run `models pull|list|rm ...` in place of this process when `argv` asks for one (never
    returns then, but with 1 when the node is not installed); None for any other command."""
    if not (len(argv) >= 2 and argv[0] == "models" and argv[1] in LOCAL_COMMANDS):
        return None
    if importlib.util.find_spec(NODE_PACKAGE) is None:
        print(
            f"{PROG}: the edge node (the koprogo-node package) is not installed beside koprogo; "
            "`make install` in the project folder installs it",
            file=sys.stderr,
        )
        return 1
    serve = command_hint("up", "--model")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-c", NODE_MODELS_ENTRY, PROG, serve, *argv[1:]])
