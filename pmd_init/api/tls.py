"""TLS on the TCP API: the server's certificate, and client certificates (mTLS).

The context handed to the server stays the same object for pmd's whole life; a reload
(SIGHUP) builds a new one from the files and the first one's SNI callback, which OpenSSL
calls early in every handshake (with or without a server name), moves each new
connection onto it. Open connections keep the certificate they started with, and a
reload whose files do not load changes nothing.

With a client CA, a client certificate is optional (health probes and key holders need
none) but one that the CA did not sign fails the handshake.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

log = logging.getLogger("pmd.api")


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message names it."""


def build_context(cert: Path, key: Path | None, client_ca: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"TLS certificate {cert}{f' with key {key}' if key else ''}: "
                       f"{_reason(exc)}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"TLS client CA {client_ca}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


class ServerTls:
    """The served context and the one new handshakes use."""

    def __init__(self, cert: Path, key: Path | None, client_ca: Path | None) -> None:
        self.files = (cert, key, client_ca)
        self.context = build_context(*self.files)  # raises TlsError: pmd does not start
        self.current = self.context
        self.context.sni_callback = self._handshake

    def _handshake(self, sslobj: ssl.SSLObject, server_name: str | None,
                   context: ssl.SSLContext) -> None:
        if self.current is not self.context:
            sslobj.context = self.current

    def reload(self) -> str | None:
        """Re-read the files for the next handshakes; the error line, or None."""
        try:
            self.current = build_context(*self.files)
        except TlsError as exc:
            log.error("SIGHUP: %s; TLS goes on with the certificates it had", exc)
            return str(exc)
        log.info("SIGHUP: TLS certificates re-read")
        return None
