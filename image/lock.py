"""The webui environment's locks: write them, check them against the registry, check an install.

    python image/lock.py check [LOCK ...]      every lock resolves as pinned and is complete (CI)
    python image/lock.py update [LOCK ...]     re-resolve locks from their .in files
    python image/lock.py installed LOCK        the running environment holds the lock (image build)

A lock (``image/<backend>-<cuda>.lock``) pins every package of the webui venv, transitive ones
included. It is resolved from ``<backend>.in`` (the webui's and its extensions' requirements)
plus ``<backend>-<cuda>.in`` (torch, torchvision, xformers) for the image's interpreter and
platform (CPython 3.10 on Ubuntu 22.04, x86_64), whatever machine runs this script, without
Docker. ``check`` and ``update`` use uv (``image/lock-tools.txt``) and need the package
registry: pip cannot resolve for a foreign target once a pin exists only as a source archive
(jsonmerge, blendmodes, ...). ``installed`` runs offline with the webui's own Python, stdlib only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_VERSION = "3.10"
# Ubuntu 22.04 has glibc 2.35: any manylinux wheel up to 2_35 installs there.
PLATFORM = "x86_64-manylinux_2_35"
# Packages an extension installs from a URL rather than the registry, so no lock can hold
# them (sd-webui-controlnet's preprocessor wheels): listed by `installed`, never a failure.
URL_INSTALLED = frozenset({"handrefinerportable", "depth-anything", "depth-anything-v2", "dsine", "insightface"})
# Installed with every venv, whatever the lock says.
VENV_TOOLS = frozenset({"pip", "wheel"})
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def normalize(name: str) -> str:
    """PEP 503 name, so ``Pillow`` and ``pillow``, ``pytorch_lightning`` and ``pytorch-lightning`` match."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str, where: str) -> dict[str, str]:
    """``name==version`` lines; anything else but comments and blank lines is an error."""
    pins: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        if m is None:
            raise ValueError(f"{where}:{n}: a lock line must be name==version, got {line!r}")
        pins[normalize(m.group(1))] = m.group(2)
    return pins


def sources(lock: Path) -> list[Path]:
    """The .in files a lock is resolved from: ``a1111-cu121.lock`` <- a1111.in + a1111-cu121.in."""
    backend = lock.stem.split("-", 1)[0]
    return [lock.with_name(f"{backend}.in"), lock.with_suffix(".in")]


def compile_pins(uv: str, requirements: list[Path]) -> dict[str, str]:
    """The full resolution of ``requirements`` for the image's target.

    Raises RuntimeError with uv's own explanation when they do not resolve: a pin gone from
    the registry, nothing installable for CPython 3.10 on Linux, or two pins in conflict.
    """
    cmd = [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--python-version", PYTHON_VERSION,
           "--python-platform", PLATFORM, *map(str, requirements)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"no resolution for CPython {PYTHON_VERSION} on {PLATFORM}:\n" + proc.stderr.strip()[-3000:])
    return parse_pins(proc.stdout, "uv output")


def differences(pins: dict[str, str], resolved: dict[str, str]) -> list[str]:
    """How a lock differs from its own resolution (nothing when it is complete and consistent)."""
    problems = [f"{name}=={resolved[name]}: needed, but the lock does not pin it (the lock is incomplete)"
                for name in sorted(resolved.keys() - pins.keys())]
    problems += [f"{name}: pinned, but nothing needs it" for name in sorted(pins.keys() - resolved.keys())]
    problems += [f"{name}: pinned {pins[name]}, resolves to {resolved[name]}"
                 for name in sorted(pins.keys() & resolved.keys()) if pins[name] != resolved[name]]
    return problems


def check(lock: Path, uv: str) -> list[str]:
    try:
        pins = parse_pins(lock.read_text(), lock.name)
        resolved = compile_pins(uv, [lock])
    except (OSError, RuntimeError, ValueError) as exc:
        return [f"{lock.name}: {exc}"]
    return [f"{lock.name}: {p}" for p in differences(pins, resolved)]


def render(lock: Path, resolved: dict[str, str]) -> str:
    names = " + ".join(f"image/{s.name}" for s in sources(lock))
    head = [f"# The complete webui venv of {lock.stem}, resolved from {names}",
            "# by `python image/lock.py update`; CI runs `python image/lock.py check`. Do not edit by hand.",
            f"# Target: CPython {PYTHON_VERSION}, {PLATFORM} (Ubuntu 22.04)."]
    return "\n".join([*head, *(f"{name}=={resolved[name]}" for name in sorted(resolved))]) + "\n"


def update(lock: Path, uv: str) -> list[str]:
    try:
        resolved = compile_pins(uv, sources(lock))
    except RuntimeError as exc:
        return [f"{lock.name}: {exc}"]
    lock.write_text(render(lock, resolved))
    print(f"{lock.name}: {len(resolved)} packages")
    return []


def installed_problems(pins: dict[str, str], present: dict[str, str]) -> tuple[list[str], list[str]]:
    """(locked packages missing or at another version, packages present that the lock does not name)."""
    drift = [f"{name}: the lock pins {pins[name]}, installed is {present.get(name, 'nothing')}"
             for name in sorted(pins) if present.get(name) != pins[name]]
    extra = sorted(f"{name}=={present[name]}" for name in present.keys() - pins.keys() - VENV_TOOLS)
    return drift, extra


def installed(lock: Path) -> list[str]:
    from importlib.metadata import distributions

    present = {normalize(d.metadata["Name"]): d.version for d in distributions()}
    drift, extra = installed_problems(parse_pins(lock.read_text(), lock.name), present)
    for line in extra:
        print(f"installed, not in {lock.name}: {line}", file=sys.stderr)
    unexpected = [e for e in extra if e.split("==")[0] not in URL_INSTALLED]
    return drift + [f"{e}: installed by an installer, but the lock does not pin it" for e in unexpected]


def _run_all(job, locks: list[Path], uv: str) -> list[str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [p for found in pool.map(lambda lock: job(lock, uv), locks) for p in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "update", "installed"])
    parser.add_argument("locks", nargs="*", type=Path, help="default: every image/*.lock (installed: exactly one)")
    parser.add_argument("--uv", default=shutil.which("uv"), help="the uv to run (default: uv on PATH)")
    args = parser.parse_args(argv)
    if args.command == "installed":
        if len(args.locks) != 1:
            parser.error("installed takes exactly one lock")
        problems = installed(args.locks[0])
    else:
        if not args.uv:
            parser.error(f"{args.command} needs uv: pip install -r image/lock-tools.txt, or pass --uv PATH")
        default = sorted(HERE.glob("*.lock")) if args.command == "check" else [
            p.with_suffix(".lock") for p in sorted(HERE.glob("*-*.in"))]
        locks = args.locks or default
        problems = _run_all(check if args.command == "check" else update, locks, args.uv)
        if not problems:
            print(f"{args.command}: {', '.join(p.name for p in locks)}: ok")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
