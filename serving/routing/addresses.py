"""Which network addresses a model download may connect to (SSRF rules, CVE-2023-43654 class).

Every address a download host resolves to is classified; public addresses pass. The rest fall
into three kinds:

- never allowed: unspecified ("this network"), multicast, reserved, broadcast — no model
  server lives there, and `0.0.0.0` reaches the local host on Linux;
- sensitive: cloud metadata endpoints and link-local networks. They hold credentials, so an
  operator's network list opens them only with an entry inside that range (listing
  `0.0.0.0/0` or `100.64.0.0/10` never opens `169.254.169.254` or `100.100.100.200`);
- internal: loopback, private (RFC 1918, IPv6 ULA and site-local), shared CGNAT space and other
  non-global ranges; any listed network that contains the address opens it.

IPv6 forms that carry an IPv4 address (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4,
Teredo) are judged by the IPv4 address they lead to as well.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Instance metadata and credential endpoints of the common clouds.
METADATA_ADDRESSES = frozenset(ip_address(a) for a in (
    "169.254.169.254",   # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean IMDS
    "169.254.170.2",     # AWS ECS task credentials
    "169.254.170.23",    # AWS EKS pod identity
    "fd00:ec2::254",     # AWS IMDS over IPv6
    "fd00:ec2::23",      # AWS EKS pod identity over IPv6
    "100.100.100.200",   # Alibaba Cloud
))
LINK_LOCAL = (ip_network("169.254.0.0/16"), ip_network("fe80::/10"))
THIS_NETWORK = ip_network("0.0.0.0/8")
SHARED_CGNAT = ip_network("100.64.0.0/10")
SITE_LOCAL = ip_network("fec0::/10")
NAT64 = ip_network("64:ff9b::/96")

NEVER = "never"
SENSITIVE = "sensitive"
INTERNAL = "internal"


def classify(ip: IPAddress) -> tuple[str, str] | None:
    """(kind, rule) for a non-public address, or None for a public one."""
    if ip in METADATA_ADDRESSES:
        return SENSITIVE, "cloud metadata"
    if ip.is_unspecified or ip in THIS_NETWORK:
        return NEVER, "unspecified"
    if ip.is_multicast:
        return NEVER, "multicast"
    if ip.is_loopback:
        return INTERNAL, "loopback"
    if any(ip in net for net in LINK_LOCAL):
        return SENSITIVE, "link-local"
    if isinstance(ip, IPv4Address) and ip == IPv4Address("255.255.255.255"):
        return NEVER, "broadcast"
    if ip.is_reserved:
        return NEVER, "reserved"
    if ip in SHARED_CGNAT:
        return INTERNAL, "shared (CGNAT 100.64.0.0/10)"
    if ip in SITE_LOCAL or ip.is_private:
        return INTERNAL, "private"
    if not ip.is_global:
        return INTERNAL, "non-public"
    return None


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (mapped, NAT64, 6to4, Teredo), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def refusal(ip: IPAddress, allowed: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why a download may not connect to `ip` (naming the rule and the address), or None."""
    if isinstance(ip, IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = _refusal_one(inner, allowed)
            if reason is not None:
                return f"{reason} (as {ip})"
            if ip.ipv4_mapped is not None or ip in NAT64:
                return None  # the IPv4 address is the destination itself
    return _refusal_one(ip, allowed)


def _refusal_one(ip: IPAddress, allowed: tuple[IPNetwork, ...]) -> str | None:
    found = classify(ip)
    if found is None:
        return None
    kind, rule = found
    if kind == INTERNAL and any(ip in net for net in allowed if net.version == ip.version):
        return None
    if kind == SENSITIVE and any(ip in net and _inside_sensitive(net, rule)
                                 for net in allowed if net.version == ip.version):
        return None
    how = {NEVER: "never allowed",
           SENSITIVE: "allowed only by an allowed_url_networks entry inside that range",
           INTERNAL: "refused unless allowed_url_networks lists it"}[kind]
    return f"{ip} is a {rule} address ({how})"


def _inside_sensitive(net: IPNetwork, rule: str) -> bool:
    """A listed network opens a sensitive address only if it lies inside the sensitive range."""
    if rule == "cloud metadata":
        return net.num_addresses == 1
    return any(net.version == ll.version and net.subnet_of(ll)  # type: ignore[arg-type]
               for ll in LINK_LOCAL)


def parse_networks(value: str | list[str] | tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """`10.0.0.0/8, 127.0.0.1` (comma separated, or a list) as networks; bad entries raise."""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks: list[IPNetwork] = []
    for item in (str(i).strip() for i in items):
        if item:
            try:
                networks.append(ip_network(item, strict=True))
            except ValueError as e:
                raise ValueError(f"{item!r} is not a network in CIDR form ({e})") from None
    return tuple(networks)
