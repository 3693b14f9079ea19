"""What the handler knows about the A1111 process that start.sh launched.

start.sh starts A1111 in the background, writes its pid to ``A1111_PID_FILE`` and sends
its output to ``A1111_LOG_FILE`` (it exports both; by default under /tmp/a1111-worker).
The handler is not necessarily A1111's parent, so the process is watched through the pid
file and /proc rather than through a Popen handle. Without those variables (A1111 started
some other way, e.g. by hand or by a test) the state is "unknown" and readiness relies on
HTTP alone.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 40
_MAX_LINE_CHARS = 400


@dataclass(frozen=True)
class Supervisor:
    pid_file: Path | None
    log_file: Path | None

    @classmethod
    def from_env(cls) -> Supervisor:
        """The files start.sh exported; without them nothing is supervised (tests, tools,
        an A1111 started by hand), rather than guessing at a default path that may hold a
        stale pid from another run."""
        pid = os.environ.get("A1111_PID_FILE", "").strip()
        log = os.environ.get("A1111_LOG_FILE", "").strip()
        return cls(pid_file=Path(pid) if pid else None, log_file=Path(log) if log else None)

    @property
    def managed(self) -> bool:
        """True when start.sh launched A1111 (there is a pid file to watch)."""
        return self.pid() is not None

    def pid(self) -> int | None:
        if self.pid_file is None:
            return None
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def started_at(self) -> float | None:
        """Wall-clock time A1111 was launched (the pid file is written right after)."""
        if self.pid_file is None:
            return None
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
        if self.log_file is None:
            return []
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

