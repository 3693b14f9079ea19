"""What the handler knows about the A1111 process that start.sh launched.

start.sh starts A1111 in the background, writes its pid to ``A1111_PID_FILE`` and sends
its output to ``A1111_LOG_FILE``. The handler is not necessarily A1111's parent, so the
process is watched through the pid file and /proc rather than through a Popen handle.
Without a pid file (A1111 started some other way, e.g. by hand or by a test) the state is
"unknown" and readiness relies on HTTP alone.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

# start.sh exports the exact paths; this default only matches start.sh's own default.
DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / "a1111-worker"
LOG_TAIL_LINES = 40
_MAX_LINE_CHARS = 400


@dataclass(frozen=True)
class Supervisor:
    pid_file: Path
    log_file: Path

    @classmethod
    def from_env(cls) -> Supervisor:
        state = Path(os.environ.get("A1111_STATE_DIR") or DEFAULT_STATE_DIR)
        return cls(
            pid_file=Path(os.environ.get("A1111_PID_FILE") or state / "a1111.pid"),
            log_file=Path(os.environ.get("A1111_LOG_FILE") or state / "a1111.log"),
        )

    @property
    def managed(self) -> bool:
        """True when start.sh launched A1111 (there is a pid file to watch)."""
        return self.pid() is not None

    def pid(self) -> int | None:
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def started_at(self) -> float | None:
        """Wall-clock time A1111 was launched (the pid file is written right after)."""
        try:
            return self.pid_file.stat().st_mtime
        except OSError:
            return None

    def alive(self) -> bool | None:
        """True/False for a process start.sh launched; None when nothing is supervised."""
        pid = self.pid()
        if pid is None:
            return None
        return _pid_alive(pid)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines of A1111's log, for the job result when A1111 died."""
        try:
            with self.log_file.open("r", encoding="utf-8", errors="replace") as fh:
                tail = deque(fh, maxlen=lines)
        except OSError:
            return []
        return [line.rstrip("\n")[:_MAX_LINE_CHARS] for line in tail]


def _pid_alive(pid: int) -> bool:
    # When the handler is A1111's parent (start.sh exec'd into it, or a test), a dead
    # child stays a zombie until reaped, and kill(pid, 0) still succeeds on a zombie.
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall through to the generic checks
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return _proc_state(pid) not in {"Z", "X"}


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 3, after the parenthesised command name (which may itself contain spaces).
    after = stat.rsplit(")", 1)[-1].split()
    return after[0] if after else None


def wait_for_pid_file(supervisor: Supervisor, timeout: float) -> int | None:
    """Small helper for tools and tests: wait until start.sh has written the pid file."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid = supervisor.pid()
        if pid is not None:
            return pid
        time.sleep(0.01)
    return None
