"""`koprogo models pull|list|rm`: the GGUF files this machine's edge nodes serve.

The same commands as `koprogo-node models` (one model manager: `koprogo_node.entrypoints.models_cli`),
on the one models folder the stack's nodes read (`$KOPROGO_MODELS_DIR`, else
~/.local/share/koprogo/models). `koprogo models` alone still lists what the gateway serves.
"""

from __future__ import annotations

from koprogo_cli.invocation import command_hint
from koprogo_node.entrypoints.models_cli import models_main

LOCAL_COMMANDS = ("pull", "list", "rm")


def local_models_command(argv: list[str]) -> int | None:
    """Run `models pull|list|rm ...` when `argv` asks for one; None for any other command."""
    if len(argv) >= 2 and argv[0] == "models" and argv[1] in LOCAL_COMMANDS:
        return models_main(
            argv[1:],
            prog="koprogo models",
            serve_with=lambda model_id: command_hint("up", "--model", model_id),
        )
    return None
