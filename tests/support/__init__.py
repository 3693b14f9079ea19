"""What the tests share, so that each test module keeps only its own cases.

- ``ports``: a free local port, for a server that is started later (or never).
- ``model_files``: real safetensors files (LoRAs, header-only checkpoints, random payloads).
- ``servers``: local file servers: ``FileServer`` (HTTPS, static files, for ``url`` sources,
  which must be https) and ``ModelServer`` (plain HTTP, scripted faults, ranges, Hub routes).
- ``worker``: pointing the worker at a replay A1111 and a private MODELS_DIR, and clearing the
  per-process state (clients, readiness, name lists) that outlives a replay server.
- ``jobs``: calling ``handler.handler`` with a job input (``JobRunner``), jobs and results
  built from recordings, and telling readiness's warm-up txt2img apart from the ones a job sent.

The fixtures built from these live in tests/conftest.py.
"""
