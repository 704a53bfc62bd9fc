"""The SSRF address rules: which addresses a model download may connect to."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from serving.routing.addresses import parse_networks, refusal

REFUSED_BY_DEFAULT = {
    # address: the rule named in the refusal
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "fec0::1": "private",  # deprecated site-local
    "169.254.0.1": "link-local",
    "169.254.10.20": "link-local",
    "fe80::1": "link-local",
    "febf::1": "link-local",
    "169.254.169.254": "cloud metadata",
    "169.254.170.2": "cloud metadata",
    "fd00:ec2::254": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    "0.0.0.0": "unspecified",
    "0.1.2.3": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "ff02::1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "192.0.2.10": "private",  # documentation (TEST-NET-1): not global
    "198.18.0.1": "private",  # benchmarking
    "::127.0.0.1": "reserved",  # IPv4-compatible, deprecated
}

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1",
          "172.32.0.1", "169.253.255.255", "2606:4700::1111", "2a00:1450:4001::200e",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "rule"), sorted(REFUSED_BY_DEFAULT.items()))
def test_refused_by_default_names_rule_and_address(address: str, rule: str) -> None:
    reason = refusal(ip_address(address))
    assert reason is not None
    assert rule in reason and str(ip_address(address)) in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ip_address(address)) is None


@pytest.mark.parametrize(("mapped", "rule"), [
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:169.254.1.1", "link-local"),
    ("::ffff:100.64.0.1", "CGNAT"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),    # NAT64 of 169.254.169.254
    ("64:ff9b::7f00:1", "loopback"),             # NAT64 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "cloud metadata"),     # 6to4 of 169.254.169.254
    ("2002:c0a8:101::1", "private"),             # 6to4 of 192.168.1.1
])
def test_ipv6_forms_of_ipv4_are_judged_by_the_ipv4_address(mapped: str, rule: str) -> None:
    reason = refusal(ip_address(mapped))
    assert reason is not None and rule in reason and f"as {ip_address(mapped)}" in reason


def test_listed_network_opens_internal_addresses_only_inside_it() -> None:
    allowed = parse_networks("127.0.0.1/32, 10.0.0.0/8, fd12::/16")
    assert refusal(ip_address("127.0.0.1"), allowed) is None
    assert refusal(ip_address("::ffff:127.0.0.1"), allowed) is None
    assert refusal(ip_address("10.200.0.1"), allowed) is None
    assert refusal(ip_address("fd12:3456::1"), allowed) is None
    assert refusal(ip_address("127.0.0.2"), allowed) is not None
    assert refusal(ip_address("192.168.0.1"), allowed) is not None
    assert refusal(ip_address("::1"), allowed) is not None


def test_wide_networks_never_open_metadata_or_link_local() -> None:
    wide = parse_networks("0.0.0.0/0, ::/0, 100.64.0.0/10, fd00::/8")
    for address in ("169.254.169.254", "169.254.1.1", "fe80::1", "100.100.100.200",
                    "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert refusal(ip_address(address), wide) is not None, address
    # ... while the ordinary internal ranges they cover are open.
    for address in ("10.0.0.1", "100.64.0.1", "fd00::1", "127.0.0.1"):
        assert refusal(ip_address(address), wide) is None, address


def test_link_local_and_metadata_open_only_when_listed_inside_their_range() -> None:
    link_local = parse_networks("169.254.0.0/16, fe80::/64")
    assert refusal(ip_address("169.254.1.1"), link_local) is None
    assert refusal(ip_address("fe80::1"), link_local) is None
    assert refusal(ip_address("169.254.169.254"), link_local) is not None  # metadata: /32 only
    metadata = parse_networks("169.254.169.254/32")
    assert refusal(ip_address("169.254.169.254"), metadata) is None
    assert refusal(ip_address("169.254.1.1"), metadata) is not None


def test_never_allowed_classes_cannot_be_opened() -> None:
    everything = parse_networks("0.0.0.0/0, ::/0, 0.0.0.0/32, 224.0.0.0/4, 240.0.0.0/4")
    for address in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255"):
        reason = refusal(ip_address(address), everything)
        assert reason is not None and "never allowed" in reason, address


def test_parse_networks_rejects_malformed_entries() -> None:
    assert parse_networks("") == ()
    assert parse_networks(["10.0.0.0/8"]) == parse_networks("10.0.0.0/8")
    for bad in ("10.0.0.1/8", "not-a-network", "10.0.0.0/33"):
        with pytest.raises(ValueError, match="CIDR"):
            parse_networks(bad)
