"""One writer per stage directory: a lock file that says who holds it.

`lock.json` (pid, host, started) is written whole to a temporary file and linked into place;
the link fails when the lock exists, so two processes can never both believe they hold it.
A second writer gets a one-line error naming the holder. A lock whose process is gone (same
host, no such pid) is taken over, and the taker says so. Locks on another host cannot be
checked: their error says how to remove a stale one.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = "lock.json"


class LockError(Exception):
    """The stage is being written by another process; the message is one line for the user."""


class StageLock:
    def __init__(self, stage_path: Path):
        self.path = Path(stage_path) / LOCK_FILE
        self.held = False
        self.took_over: dict | None = None  # the dead holder's record, when its lock was taken over

    def acquire(self) -> StageLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        try:
            for _ in range(2):  # the second try follows the removal of a dead holder's lock
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    holder = self._holder()
                    if holder is None or not _is_dead(holder):
                        raise LockError(self._message(holder)) from None
                    self.path.unlink(missing_ok=True)
                    self.took_over = holder
                    continue
                self.held = True
                atexit.register(self.release)
                return self
            raise LockError(self._message(self._holder()))
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # being written (a link is whole, so: gone again) or unreadable

    def _message(self, holder: dict | None) -> str:
        where = self.path.parent
        if holder is None:
            return f"{where} is locked ({self.path} is unreadable); delete it if no process is writing there"
        who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
        if holder.get("host") != socket.gethostname():
            return f"{where} is being written by {who}; if that process is gone, delete {self.path}"
        return f"{where} is being written by {who}; wait for it, or stop it first"


def _is_dead(holder: dict) -> bool:
    """Only a holder on this host can be checked: no process with its pid means it is gone."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def describe_takeover(holder: dict) -> str:
    return (f"took over the lock of pid {holder.get('pid')} (started {holder.get('started')}), "
            f"which is no longer running")

