"""The TLS and allow-list settings: what the config accepts and what the shared helpers build from it."""

from __future__ import annotations

import ssl

import pytest

from pacsflow_router.config import ConfigError, TlsClient, parse_config
from pacsflow_router.tls import address_allowed, client_context


def test_allow_list_takes_address_blocks_and_maps_ipv4_in_ipv6() -> None:
    cfg = parse_config({"allowedNetworks": ["10.0.0.0/8", "::1/128"]})
    assert cfg.allowed_networks == ["10.0.0.0/8", "::1/128"]
    assert address_allowed("10.1.2.3", cfg.allowed_networks)
    assert address_allowed("::ffff:10.1.2.3", cfg.allowed_networks)
    assert address_allowed("::1", cfg.allowed_networks)
    assert not address_allowed("11.0.0.1", cfg.allowed_networks)
    assert not address_allowed("not-an-address", cfg.allowed_networks)
    assert address_allowed("192.0.2.1", [])


def test_address_block_with_host_bits_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"allowedNetworks\[0\].*host bits"):
        parse_config({"allowedNetworks": ["10.0.0.1/8"]})


def test_client_certificates_need_a_ca() -> None:
    with pytest.raises(ConfigError, match="clientCaFile is required"):
        parse_config({"tls": {"certFile": "c.pem", "keyFile": "k.pem", "clientCertificate": "required"}})


def test_client_context_verifies_and_refuses_old_versions() -> None:
    ctx = client_context(TlsClient())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in tls12)


def test_client_context_is_reused_until_a_file_rotates(tmp_path) -> None:
    from tests.peers.certs import Pki

    pki = Pki(tmp_path / "pki")
    client = pki.client("ct1")
    cfg = TlsClient(ca_file=str(pki.ca_file), cert_file=str(client.cert), key_file=str(client.key))
    first = client_context(cfg)
    assert client_context(cfg) is first  # no CA bundle or key re-read per connection
    rotated = pki.client("ct1", stem="rotated")
    client.cert.write_bytes(rotated.cert.read_bytes())
    client.key.write_bytes(rotated.key.read_bytes())
    assert client_context(cfg) is not first  # a rotated certificate applies to the next connection
