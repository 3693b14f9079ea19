"""Everything about A1111 / Forge: the HTTP client and per-URL worker state, its live lists,
name matching and resolution, the pure payload compiler, result packaging, readiness,
progress and the supervision of its process. Delivery of the result lives in ``output/``."""
