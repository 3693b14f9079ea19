"""Quick start without a GPU: start the replay A1111 server, run one job through the real
handler (``handler.py --test_input``, as on RunPod), stop the server.

    python -m tests.quickstart                       # the job in test_input.json
    python -m tests.quickstart --job '{"input": {"prompt": "a lighthouse"}}'

The replay server answers with responses recorded from a real A1111 v1.10.1, whatever the
job asks: the image is a recorded 64x64 one, so warnings such as "image 0 is 64x64, but
512x512 was asked" or "A1111 reports sampler 'Euler'" are expected here. Exits with the
handler's status (0: the job succeeded); fails at once when the port is taken.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.replay import ReplayServer
from tests.support.worker import make_models_dir

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", help="the job as JSON (default: test_input.json)")
    # QUICKSTART_PORT: for the docs test, which runs the README command while other tests may hold 3000.
    parser.add_argument("--port", type=int, default=int(os.environ.get("QUICKSTART_PORT") or 3000),
                        help="port of the replay server (default 3000)")
    parser.add_argument("--backend", default="a1111", help="a1111, a1111-sdxl or forge recordings")
    args = parser.parse_args(argv)
    job = args.job if args.job is not None else (ROOT / "test_input.json").read_text()
    server = ReplayServer(args.backend, port=args.port)
    try:
        server.start()
    except OSError as exc:
        print(f"quickstart: cannot listen on 127.0.0.1:{args.port} ({exc.strerror}): something else holds the "
              f"port (an earlier replay server, or A1111). Stop it, or pass --port N.", file=sys.stderr)
        return 2
    print(f"quickstart: replay A1111 server on {server.url} (recorded answers, whatever the prompt)", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
            env = {**os.environ, "A1111_URL": server.url, "MODELS_DIR": str(make_models_dir(Path(tmp) / "models")),
                   "WEBUI_BACKEND": "forge" if args.backend == "forge" else "a1111"}
            env.pop("A1111_PID_FILE", None)  # nothing to supervise: the server runs in this process
            done = subprocess.run([sys.executable, "handler.py", "--test_input", job], cwd=ROOT, env=env,
                                  check=False, timeout=600)
    finally:
        server.stop()
        print("quickstart: replay server stopped", flush=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
