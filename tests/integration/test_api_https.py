"""pacsflow-api's edge: HTTPS with pacsflow_router.tls's choices (a ``pacsflow-api`` process, a throw-away CA, real
``openssl s_client`` for what is refused) and the address allow-list (403 before any identity is asked)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
from fastapi.testclient import TestClient

from pacsflow_api.app import create_app
from pacsflow_router.results.store import ResultsStore
from tests.peers.browser import api_process
from tests.peers.certs import Pki


def _s_client(base: str, *args: str) -> str:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: run scripts/install-system-deps.sh (Debian openssl)")
    host_port = base.removeprefix("https://")
    proc = subprocess.run(["openssl", "s_client", "-connect", host_port, "-servername", "localhost", *args],
                          input=b"", capture_output=True, timeout=30, check=False)
    return (proc.stdout + proc.stderr).decode(errors="replace")


def test_https_only_tls_12_and_13_with_aead_suites_and_secure_cookies(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = ResultsStore(url)
    _, key = store.create_api_key("reader")
    pki = Pki(tmp_path / "pki")
    server = pki.server()
    rogue = Pki(tmp_path / "rogue", name="Rogue CA")
    env = {"PACSFLOW_API_TLS_CERT_FILE": str(server.cert), "PACSFLOW_API_TLS_KEY_FILE": str(server.key),
           "PACSFLOW_API_ALLOWED_NETWORKS": '["127.0.0.0/8"]'}
    with api_process(url, tmp_path / "api.log", env) as base:
        assert base.startswith("https://")
        answer = requests.get(base + "/api/v1/worklist", headers={"X-API-Key": key}, verify=str(pki.ca_file),
                              timeout=30)
        assert answer.status_code == 200  # 127.0.0.1 is in the allow-list
        # Behind TLS the session cookie is Secure without being told.
        login = requests.post(base + "/login", data={"api_key": key}, verify=str(pki.ca_file),
                              allow_redirects=False, timeout=30)
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert "pacsflow_session=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
        with pytest.raises(requests.exceptions.SSLError):  # a client that trusts another CA does not connect
            requests.get(base + "/healthz", verify=str(rogue.ca_file), timeout=30)

        out = _s_client(base, "-CAfile", str(pki.ca_file), "-verify_return_error")
        assert "TLSv1.3" in out and "Verify return code: 0 (ok)" in out, out
        out = _s_client(base, "-tls1_2", "-CAfile", str(pki.ca_file))
        assert "Protocol  : TLSv1.2" in out and "ECDHE" in out and "GCM" in out, out
        for refused in (("-tls1_1",), ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"),
                        ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA")):
            out = _s_client(base, *refused)
            assert "Cipher is (NONE)" in out and "no peer certificate available" in out, (refused, out)
    store.close()


def test_an_address_outside_the_allow_list_gets_403_before_authentication(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    _, key = store.create_api_key("admin")
    app = create_app(store, allowed_networks=["10.0.0.0/8", "2001:db8::/32"])
    with TestClient(app, client=("192.0.2.7", 50000)) as outside:
        refused = outside.get("/api/v1/worklist", headers={"X-API-Key": key})
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
        assert "PACSFLOW_API_ALLOWED_NETWORKS" in refused.json()["detail"]
        assert outside.post("/login", data={"api_key": key}, follow_redirects=False).status_code == 403
        assert outside.get("/healthz").status_code == 200  # the kubelet's probes
    assert store.access_log() == []  # refused before the store, the providers or the audit saw the request
    with TestClient(app, client=("10.1.2.3", 50000)) as inside:
        assert inside.get("/api/v1/worklist", headers={"X-API-Key": key}).status_code == 200
        assert inside.get("/api/v1/worklist").status_code == 401  # allowed in, then authentication as usual
    with TestClient(app, client=("::ffff:10.9.9.9", 50000)) as mapped:  # a dual-stack socket's IPv4 peer
        assert mapped.get("/api/v1/worklist", headers={"X-API-Key": key}).status_code == 200
    store.close()
