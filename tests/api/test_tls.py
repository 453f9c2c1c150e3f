"""TLS on the TCP API with certificates made in the test: the server's, client
certificates that map to identities (by common name, by fingerprint), one from another
CA refused at the handshake, a reload on SIGHUP that keeps open connections, and a file
that does not load stopping the start with one line."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.access_helpers import ADMIN_KEY, write_identities
from tests.api.helpers import API
from tests.api.process_helpers import ENV
from tests.certs import CA, Issued
from tests.harness import ROOT, Pmd


class Tls:
    def __init__(self, folder: Path) -> None:
        self.ca = CA(folder / "ca")
        self.other = CA(folder / "other", "other CA")
        self.server = self.ca.issue("pmd-server-1", server=True)
        self.alice = self.ca.issue("alice")
        self.bob = self.ca.issue("bob")
        self.mallory = self.other.issue("alice")  # the right name, the wrong CA


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return Tls(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[Pmd]:
    base = tmp_path_factory.mktemp("tls")
    server = base / "server"
    server.mkdir()
    cert, key = server / "tls.crt", server / "tls.key"
    cert.write_bytes(tls.server.cert.read_bytes())
    key.write_bytes(tls.server.key.read_bytes())
    running = Pmd(base, [], env=ENV, api_key=ADMIN_KEY,
                  args=["--tls-cert", str(cert), "--tls-key", str(key),
                        "--tls-client-ca", str(tls.ca.pem)])
    write_identities(running.config_dir, {"version": 1, "identities": {
        "alice": {"level": "read", "cert": {"cn": "alice"}},
        "bob": {"level": "operate", "cert": {"sha256": tls.bob.sha256.upper()}}}})
    with running:
        yield running


def https(pmd: Pmd, tls: Tls, client: Issued | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(tls.ca.pem))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return httpx.Client(base_url=f"https://127.0.0.1:{pmd.port}", verify=context, timeout=10)


def test_the_api_is_served_over_tls_only(pmd, tls):
    with https(pmd, tls) as anonymous:
        assert anonymous.get(API + "/health").status_code == 200
        assert anonymous.get("/api/processes").status_code == 401
        assert anonymous.get("/api/processes",
                             headers={"X-API-Key": ADMIN_KEY}).status_code == 200
        assert anonymous.get(API + "/whoami").json()["transport"] == "tls"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{pmd.port}{API}/health", timeout=5)


def test_client_certificates_map_to_their_identities(pmd, tls):
    with https(pmd, tls, tls.alice) as alice:
        me = alice.get(API + "/whoami").json()
        assert (me["identity"], me["kind"], me["level"], me["transport"]) == \
            ("alice", "cert", "read", "tls")
        assert alice.get("/api/processes").status_code == 200
        refused = alice.post("/api/v1/daemon/programs/1/stop")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "OPERATE_REQUIRED"
    with https(pmd, tls, tls.bob) as bob:  # by fingerprint
        me = bob.get(API + "/whoami").json()
        assert (me["identity"], me["level"]) == ("bob", "operate")
        assert bob.post("/api/v1/daemon/programs/1/stop").status_code == 404  # allowed


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(pmd, tls):
    with https(pmd, tls, tls.mallory) as mallory, pytest.raises(httpx.HTTPError) as refused:
        mallory.get(API + "/health")
    assert not isinstance(refused.value, httpx.HTTPStatusError)  # no HTTP at all


def test_the_pmd_client_acts_with_a_certificate(pmd, tls):
    run = subprocess.run(
        [sys.executable, "-m", "pmd_init.cli.pmd", "--url", f"https://127.0.0.1:{pmd.port}",
         "--cacert", str(tls.ca.pem), "--cert", str(tls.alice.cert), "--key",
         str(tls.alice.key), "whoami"],
        capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "alice (cert, tls): level read"
    assert "list" in run.stdout and "stop" not in run.stdout


def _peer_cn(sock: ssl.SSLSocket) -> str:
    subject = dict(x[0] for x in sock.getpeercert()["subject"])
    return str(subject["commonName"])


def _get(sock: ssl.SSLSocket, path: str) -> int:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: pmd\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    status = int(head.split()[1])
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < length:
        body += sock.recv(65536)
    json.loads(body)
    return status


def test_sighup_rereads_the_certificates_and_keeps_open_connections(pmd, tls):
    context = ssl.create_default_context(cafile=str(tls.ca.pem))
    old = context.wrap_socket(socket.create_connection(("127.0.0.1", pmd.port)),
                              server_hostname="127.0.0.1")
    assert _get(old, API + "/health") == 200 and _peer_cn(old) == "pmd-server-1"
    renewed = tls.ca.issue("pmd-server-2", server=True)
    server = Path(pmd.args[pmd.args.index("--tls-cert") + 1])
    server.write_bytes(renewed.cert.read_bytes())
    server.with_name("tls.key").write_bytes(renewed.key.read_bytes())
    pmd.signal(signal.SIGHUP)

    def fresh_cn() -> str:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", pmd.port)),
                                 server_hostname="127.0.0.1") as fresh:
            return _peer_cn(fresh)

    pmd.wait_for(lambda: fresh_cn() == "pmd-server-2", what="the renewed certificate")
    assert _get(old, API + "/health") == 200  # the connection opened before goes on
    assert _peer_cn(old) == "pmd-server-1"
    old.close()
    # a key that does not fit stays out: the renewed pair goes on serving
    server.with_name("tls.key").write_bytes(tls.alice.key.read_bytes())
    pmd.signal(signal.SIGHUP)
    pmd.wait_for(lambda: "TLS goes on with the certificates it had" in pmd.stderr_text())
    assert fresh_cn() == "pmd-server-2"


@pytest.mark.parametrize("what", ["missing", "not a certificate"])
def test_a_tls_file_that_does_not_load_stops_the_start_with_one_line(tmp_path, what):
    cert = tmp_path / "tls.crt"
    if what != "missing":
        cert.write_text("not a certificate\n")
    pmd = Pmd(tmp_path, [], args=["--tls-cert", str(cert)])
    pmd.start(wait=False)
    assert pmd.wait(15) == 2
    lines = pmd.stderr_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pmd_init: TLS certificate {cert}"), lines
    assert not (pmd.state_dir / "api.json").exists()
