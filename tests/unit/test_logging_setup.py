"""A service's log: to LOG_FILE when set, rotated by size, every file mode 0600; stderr otherwise.

Each case runs `configure_logging` in a fresh interpreter, as a service process does: it
replaces the root logger's handlers, which pytest's own log capture lives on.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

from koprogo_shared.logging_setup import open_private_log

SERVICE = textwrap.dedent(
    """
    import logging, sys
    from koprogo_shared.logging_setup import configure_logging

    configure_logging("INFO", "ledger")
    log = logging.getLogger("koprogo_ledger.bootstrap")
    for i in range(int(sys.argv[1])):
        log.info("applied event %05d %s", i, "x" * 80)
    log.debug("not at INFO")
    # uvicorn's loggers propagate to the root once uvicorn runs with log_config=None.
    logging.getLogger("uvicorn.error").warning("uvicorn says hello")
    """
)


def run_service(records: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOG_")}
    return subprocess.run(
        [sys.executable, "-c", SERVICE, str(records)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_log_file_rotates_by_size_and_keeps_the_backup_count(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "ledger.log"  # the folder does not exist yet
    done = run_service(200, {"LOG_FILE": str(log_file), "LOG_MAX_BYTES": "4000", "LOG_BACKUP_COUNT": "2"})
    assert done.stderr == "" and done.stdout == ""
    assert sorted(p.name for p in log_file.parent.iterdir()) == ["ledger.log", "ledger.log.1", "ledger.log.2"]
    for path in log_file.parent.iterdir():
        assert path.stat().st_size <= 4000, path
        assert mode(path) == 0o600, path
    newest = log_file.read_text()
    assert " ledger INFO koprogo_ledger.bootstrap: applied event 00199 " in newest
    assert " ledger WARNING uvicorn.error: uvicorn says hello" in newest
    assert "not at INFO" not in newest
    oldest_kept = (log_file.parent / "ledger.log.2").read_text()
    assert "applied event 00000 " not in oldest_kept + newest, "the oldest records were rotated away"


def test_an_existing_log_file_is_appended_to_and_made_private(tmp_path: Path) -> None:
    log_file = tmp_path / "ledger.log"
    log_file.write_text("an older run\n")
    log_file.chmod(0o644)
    run_service(1, {"LOG_FILE": str(log_file)})
    assert mode(log_file) == 0o600
    assert log_file.read_text().startswith("an older run\n")
    assert "applied event 00000" in log_file.read_text()


def test_without_log_file_records_go_to_stderr() -> None:
    done = run_service(1, {})
    assert " ledger INFO koprogo_ledger.bootstrap: applied event 00000 " in done.stderr
    assert done.stdout == ""


def test_a_bad_size_stops_the_service_with_the_variable_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOG_")}
    env |= {"LOG_FILE": str(tmp_path / "x.log"), "LOG_MAX_BYTES": "10MB"}
    done = subprocess.run([sys.executable, "-c", SERVICE, "1"], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "LOG_MAX_BYTES='10MB': expected a whole number" in done.stderr


def test_open_private_log_appends_and_fixes_an_existing_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "gateway.stderr.log"
    with open_private_log(path) as out:
        out.write(b"first\n")
    assert mode(path) == 0o600
    path.chmod(0o644)
    with open_private_log(path) as out:
        out.write(b"second\n")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"first\nsecond\n"
