"""TLS contexts and address allow-lists for every pacsflow edge (DICOM, MLLP, HTTP, syslog).

One place decides what pacsflow accepts in transit, following BCP 195 (RFC 9325) and the PS3.15 Annex B secure
transport profiles: TLS 1.2 and 1.3 only, 1.3 preferred (OpenSSL negotiates the highest both sides offer),
forward-secret AEAD cipher suites only for 1.2 (1.3's suites are all AEAD), no compression, no renegotiation.
The stdlib :mod:`ssl` does the work; this module only sets it up the same way everywhere.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterable, Sequence
from ipaddress import ip_address, ip_network

from .config import Network, TlsClient, TlsServer

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS:!RSA+AESGCM"
"""TLS 1.2 suites offered and accepted: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (BCP 195 section 4.2)."""

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_CERT = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _harden(ctx: ssl.SSLContext, min_version: str) -> ssl.SSLContext:
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def server_context(cfg: TlsServer) -> ssl.SSLContext:
    """A server-side context for ``cfg``: its certificate, and client certificates checked against its CA.

    Raises
    ------
    OSError, ssl.SSLError
        When a file cannot be read or the key does not match the certificate (the caller turns this into a
        ConfigError naming the setting, never the file's content).
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cfg.min_version)
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    ctx.verify_mode = _CLIENT_CERT[cfg.client_certificate]
    if cfg.client_ca_file:
        ctx.load_verify_locations(cafile=cfg.client_ca_file)
    return ctx


def file_stamp(paths: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    """(inode, mtime, size) of each file: it changes when a file is rotated.

    ``stat`` follows symlinks, so a Kubernetes Secret's atomic ``..data`` swap changes the inode even when size and
    mtime match.
    """
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


_client_contexts: dict[TlsClient, tuple[tuple[tuple[int, int, int], ...], ssl.SSLContext]] = {}
_client_contexts_lock = threading.Lock()


def client_context(cfg: TlsClient) -> ssl.SSLContext:
    """A client-side context for ``cfg``: the server's certificate and host name always verified.

    Built once per setting and reused by every connection (loading a CA bundle, the system's above all, costs
    milliseconds); rebuilt when one of its files changes, so a rotated client certificate or CA bundle applies to the
    next connection.
    """
    stamp = file_stamp([p for p in (cfg.ca_file, cfg.cert_file, cfg.key_file) if p])
    with _client_contexts_lock:
        cached = _client_contexts.get(cfg)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    ctx = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file), cfg.min_version)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    with _client_contexts_lock:
        _client_contexts[cfg] = (stamp, ctx)
    return ctx


def address_allowed(address: str, networks: Iterable[Network]) -> bool:
    """Whether a peer's ``address`` lies in one of ``networks`` (an empty allow-list allows every address).

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, what a dual-stack socket reports) is checked as IPv4.
    """
    nets = [ip_network(n) for n in networks]
    if not nets:
        return True
    try:
        ip = ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in nets)
