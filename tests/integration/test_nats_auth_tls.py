"""TLS to NATS: the client verifies the server with MIGSERVE_NATS_TLS_CA and may
present a certificate (MIGSERVE_NATS_TLS_CERT / _KEY) to a server that asks for one.

Certificates are made by the openssl command line for each test (EC keys, about
50 ms); the test is skipped where openssl is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from migserve_cli.nats_server import start_nats_server
from migserve_shared.bus import NatsConnectError, connect
from migserve_shared.env import Env, nats_settings

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _certificates(folder: Path) -> None:
    """ca.pem, and server/client certificates (key + cert) signed by it."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=migserve test CA", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{who}.pem", "-days", "1",
                 "-extfile", "san.ext", cwd=folder)  # fmt: skip


async def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificates(certs)
    config = tmp_path / "tls.conf"
    config.write_text(
        "tls {\n"
        f'  cert_file: "{certs / "server.pem"}"\n'
        f'  key_file: "{certs / "server.key"}"\n'
        f'  ca_file: "{certs / "ca.pem"}"\n'
        "  verify: true\n"
        "}\n"
    )
    server = start_nats_server(tmp_path / "nats", config_file=config)
    try:
        env = {"MIGSERVE_NATS_URL": server.url.replace("nats://", "tls://")}
        trusted = {**env, "MIGSERVE_NATS_TLS_CA": str(certs / "ca.pem")}
        full = {
            **trusted,
            "MIGSERVE_NATS_TLS_CERT": str(certs / "client.pem"),
            "MIGSERVE_NATS_TLS_KEY": str(certs / "client.key"),
        }
        nc = await connect(nats_settings(Env(full), "tls-test"), connect_timeout=2)
        await nc.publish("x.y", b"")
        await nc.flush()
        await nc.close()
        # the server's certificate is not trusted without the CA ...
        with pytest.raises(NatsConnectError, match="refused"):
            await connect(nats_settings(Env(env), "tls-test"), connect_timeout=2)
        # ... and the server refuses a client without a certificate
        with pytest.raises(NatsConnectError, match="refused"):
            await connect(nats_settings(Env(trusted), "tls-test"), connect_timeout=2)
    finally:
        server.stop()
