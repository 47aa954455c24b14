"""`koprogo-node models pull|list|rm`: manage the GGUF files a node can serve.

Nothing is downloaded unless `pull` is asked for. Exit codes: 0 done, 1 a refusal or a
failed pull (the message says why and what to do), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from koprogo_node.bootstrap import build_model_store
from koprogo_node.domain.errors import ModelPullError
from koprogo_node.domain.model_catalogue import human_bytes
from koprogo_node.entrypoints.progress import ProgressBar
from koprogo_node.service_layer.model_store import ModelStore, StoredModel, as_json_rows
from koprogo_node.settings import NodeSettings


def build_models_parser(prog: str = "koprogo-node models") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Manage the node's GGUF models.")
    p.add_argument(
        "--models-dir",
        type=Path,
        help="the models folder (default: $KOPROGO_MODELS_DIR, else ~/.local/share/koprogo/models)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="download a catalogue model (by id) or a GGUF URL (https)")
    pull.add_argument("target", help="a model id (see `models list`) or an https URL to a .gguf")
    pull.add_argument(
        "--sha256",
        help="the expected sha256 (hex) of a URL or an unpinned model; a mismatch deletes the download",
    )
    pull.add_argument("--id", dest="model_id", help="the id to serve a URL's file under (default: its name)")
    pull.add_argument("--force", action="store_true", help="pull even when the RAM looks too small")
    pull.add_argument(
        "--allow-unpinned",
        action="store_true",
        help="pull a file no digest vouches for (an unpinned model, a URL without --sha256); "
        "the digest computed is printed",
    )
    pull.add_argument(
        "--allow-http-loopback",
        action="store_true",
        help="allow a server on this machine (127.0.0.1, ::1, localhost), over plain http too; "
        "other hosts stay https-only and public",
    )
    listing = sub.add_parser("list", help="the models this node has or can pull")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    rm = sub.add_parser("rm", help="delete a pulled model")
    rm.add_argument("model_id")
    return p


def _serve_on_this_node(model_id: str) -> str:
    return f"koprogo-node -m {model_id}"


def models_main(
    argv: list[str], prog: str = "koprogo-node models", serve_with: Callable[[str], str] = _serve_on_this_node
) -> int:
    """Run one `models` command; `serve_with(id)` is the command that serves a pulled model (printed after a pull)."""
    args = build_models_parser(prog).parse_args(argv)
    settings = NodeSettings(**({"models_dir": args.models_dir} if args.models_dir else {}))
    store = build_model_store(settings)
    try:
        if args.command == "pull":
            return _pull(store, args, serve_with)
        if args.command == "list":
            rows = store.inventory()
            print(json.dumps(as_json_rows(rows), indent=2) if args.json else _table(rows))
            return 0
        for path in store.remove(args.model_id):
            print(f"removed {path}")
        return 0
    except ModelPullError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def _pull(store: ModelStore, args: argparse.Namespace, serve_with: Callable[[str], str]) -> int:
    bar = ProgressBar(args.model_id or args.target)
    try:
        result = store.pull(
            args.target,
            sha256=args.sha256,
            force=args.force,
            model_id=args.model_id,
            allow_unpinned=args.allow_unpinned,
            allow_http_loopback=args.allow_http_loopback,
            on_start=bar.start,
            on_progress=bar.update,
        )
    finally:
        bar.finish()
    if not result.downloaded:
        print(f"{result.model_id} is already in {result.path}", file=sys.stderr)
    elif result.verified:
        print(f"sha256 verified: {result.sha256}", file=sys.stderr)
    else:
        print(
            f"sha256 {result.sha256} (not verified: pulled with --allow-unpinned; compare it with the "
            "digest on the file's Hugging Face page)",
            file=sys.stderr,
        )
    print(result.path)
    print(f"serve it: `{serve_with(result.model_id)}`", file=sys.stderr)
    return 0


def _table(rows: list[StoredModel]) -> str:
    header = ("ID", "FILE", "SIZE", "SHA256", "PRESENT")
    lines = [header] + [
        (
            r.id,
            r.file,
            human_bytes(r.size) if r.size is not None else "?",
            ("verified" if r.verified else "unverified") if r.present else "-",
            "yes" if r.present else "no",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
