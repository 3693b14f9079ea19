"""Pydantic models at the worker's edges (job input, job output) and the error contract."""
