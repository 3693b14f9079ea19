"""Everything that talks to A1111 / Forge: the HTTP client, name resolution, the payload
compiler, result packaging, readiness, progress, extensions and delivery."""
