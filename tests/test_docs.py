"""The documentation runs: every job example in README.md and docs/*.md, and README's quick start.

Convention (docs/ pages written by anyone follow it): a fenced ```json block whose top-level
object has an "input" key is a job; it must succeed against the replay server, unless the
line right before the fence is ``<!-- expect-error: <error_type> -->``, then it must fail with
that error_type. ```jsonc blocks (sample outputs) are not run. Jobs run in-process through
``handler.handler`` against a ReplayServer (fast); the quick start's ```bash block runs as
real subprocesses, once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from tests.support.jobs import txt2img_bodies
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
EXPECT = re.compile(r"<!--\s*expect-error:\s*([a-z0-9_]+)\s*-->")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str
    before: str  # the line right before the fence

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        start = m.start()
        line = text.count("\n", 0, start) + 1
        prev = text[:start].rstrip("\n").rsplit("\n", 1)[-1]
        out.append(Block(page, line, m.group(1), m.group(2), prev))
    return out


def job_blocks() -> list[Block]:
    found = []
    for page in PAGES:
        for b in blocks(page):
            if b.lang != "json":
                continue
            value = json.loads(b.text)  # a ```json block that does not parse is a docs bug too
            if isinstance(value, dict) and "input" in value:
                found.append(b)
    return found


JOBS = job_blocks()


def test_the_docs_have_job_examples():
    assert len(JOBS) >= 5 and any(b.page.name == "README.md" for b in JOBS)


@pytest.mark.parametrize("block", JOBS, ids=[b.id for b in JOBS])
def test_job_example_runs_as_documented(block: Block, worker_env, monkeypatch):
    import handler

    job = json.loads(block.text)
    result = handler.handler({"id": "docs", **job})
    expected = EXPECT.search(block.before)
    if expected:
        assert result.get("error_type") == expected.group(1), (block.id, result.get("error"))
        assert txt2img_bodies(worker_env) == []
    else:
        assert "error" not in result, (block.id, result.get("error"))


SCHEMA = json.loads((ROOT / "schemas" / "job.schema.json").read_text())
VALID_JOBS = [b for b in JOBS if not EXPECT.search(b.before)]


@pytest.mark.parametrize("block", VALID_JOBS, ids=[b.id for b in VALID_JOBS])
def test_job_example_validates_against_the_job_schema(block: Block):
    errors = [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(json.loads(block.text))]
    assert errors == [], block.id


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = []
    for b in blocks_of(section):
        for line in b.splitlines():
            line = line.split("   #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def blocks_of(text: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "bash"]


@pytest.mark.slow
def test_readme_quick_start_runs():
    """The quick start as written, with two substitutions: the install line is skipped (this
    machine is offline and the test already runs in the installed venv, whose python stands in
    for .venv/bin/python), and QUICKSTART_PORT gives a free port, since other test processes
    may hold 3000."""
    commands = quick_start_commands()
    assert len(commands) == 2 and "pip install" in commands[0], commands
    env = {**os.environ, "QUICKSTART_PORT": str(free_port())}
    for command in commands[1:]:
        argv = [sys.executable if a == ".venv/bin/python" else a for a in shlex.split(command)]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        out = done.stdout + done.stderr
        assert "completed successfully" in out and "replay server stopped" in out
