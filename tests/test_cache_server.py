"""The scripted model server the cache tests download from (tests/support/servers.py), checked
on its own: the cache tests trust its ranges and faults to be what they say."""

from __future__ import annotations

from tests.support.model_files import safetensors_bytes
from tests.support.servers import ModelServer


def test_server_serves_ranges_and_scripted_faults():
    import requests

    data = safetensors_bytes(size=1000)
    with ModelServer() as srv:
        url = srv.add("/f.safetensors", data, [("status", 500, b"boom", "text/plain"), "ok"])
        assert requests.get(url, timeout=5).status_code == 500
        r = requests.get(url, headers={"Range": "bytes=10-"}, timeout=5)
        assert r.status_code == 206 and r.content == data[10:]
        assert r.headers["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
        assert len(srv.gets("/f.safetensors")) == 2
