"""Where provider calls may go: the egress policy, pure (no DNS, no sockets).

A workspace may point its key at any OpenAI-compatible endpoint, so the endpoint is caller
input. Left unchecked, the service would connect wherever a caller says: cloud metadata
services, loopback ports, the private network. The rule:

- A destination address must be globally routable: loopback, private (RFC 1918, IPv6 ULA),
  link-local (which holds the cloud metadata address 169.254.169.254), carrier-grade NAT
  (100.64.0.0/10), unspecified, multicast and reserved addresses are refused, also when
  wrapped in IPv6 (IPv4-mapped, NAT64, 6to4).
- Names that can only mean this machine or a metadata service (``localhost``,
  ``*.localhost``, ``metadata.google.internal``, ...) are refused as names, before any
  lookup. Any other name is checked by the addresses it resolves to, when connecting: a
  name that passed when the key was stored may resolve elsewhere later.
- The operator's allowlist (``PROVIDER_ALLOWED_HOSTS``: names, IP addresses and CIDR
  blocks, comma-separated) admits destinations the rule refuses: a self-hosted model server
  on the private network, the local emulator in development. An allowlisted name may resolve
  to any address; an allowlisted address or block admits that address whatever the name.
- Plain ``http`` is allowed only to allowlisted hosts (a name on the list, or a literal
  address inside it): anything else must use TLS.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ALLOWLIST_ENV = "PROVIDER_ALLOWED_HOSTS"

# Names that resolve to this machine or to a cloud provider's instance metadata service.
_FORBIDDEN_NAMES = frozenset(
    {"localhost", "metadata", "metadata.google.internal", "metadata.goog", "instance-data"}
)
_FORBIDDEN_SUFFIXES = (".localhost",)

_NAT64 = ip_network("64:ff9b::/96")
_SIXTO4 = ip_network("2002::/16")


class EgressRefused(OSError):
    """A connection to a destination the egress policy forbids was refused.

    An OSError so that a resolver may raise it where lookups fail with OSErrors.
    """


def normalize_host(host: str) -> str:
    """Lower case, without a DNS root dot or IPv6 brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ip_address(normalize_host(host))
    except ValueError:
        return None


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIXTO4:
        return address.sixtofour
    return None


def is_public_address(address: IPAddress) -> bool:
    """Globally routable unicast: what a provider on the internet is reached at."""
    if isinstance(address, IPv6Address) and (inner := _embedded_ipv4(address)) is not None:
        return is_public_address(inner)
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's allowlist; the rest of the rule is fixed (see the module docstring)."""

    hosts: frozenset[str] = frozenset()  # normalized names
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allowlist: str) -> EgressPolicy:
        """``"127.0.0.1,localhost,10.1.0.0/16,vllm.internal"``; raises ValueError naming a
        bad entry."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allowlist.split(","):
            entry = normalize_host(raw)
            if not entry:
                continue
            if "/" in entry or parse_ip(entry) is not None:
                try:
                    networks.append(ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(
                        f"{raw.strip()!r} is not an IP address or CIDR block"
                    ) from None
            elif _is_host_name(entry):
                hosts.add(entry)
            else:
                raise ValueError(f"{raw.strip()!r} is not a host name, IP address or CIDR block")
        return cls(frozenset(hosts), tuple(networks))

    def with_hosts(self, *hosts: str) -> EgressPolicy:
        """This allowlist plus ``hosts`` (names or literal addresses)."""
        extra = EgressPolicy.parse(",".join(hosts))
        return EgressPolicy(self.hosts | extra.hosts, self.networks + extra.networks)

    def is_allowlisted(self, host: str) -> bool:
        """The host, as written in a URL, is on the list (by name, or as an address)."""
        address = parse_ip(host)
        if address is None:
            return normalize_host(host) in self.hosts
        return self._address_listed(address)

    def host_refusal(self, host: str, *, scheme: str = "https") -> str | None:
        """Why a URL with this host and scheme may not be used, or None.

        Decided from the URL alone: a name's addresses are checked when connecting
        (`address_allowed`). Asked on every provider request, so remembered per host.
        """
        return _host_refusal(self, host, scheme)

    def address_allowed(self, host: str, address: str) -> bool:
        """May we connect to ``address``, which ``host`` (as written in the URL) resolved to?"""
        if normalize_host(host) in self.hosts:
            return True
        resolved = parse_ip(address.split("%", 1)[0])  # drop an IPv6 zone id
        if resolved is None:
            return False
        return self._address_listed(resolved) or is_public_address(resolved)

    def _address_listed(self, address: IPAddress) -> bool:
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == net.version and address in net for net in self.networks)


NO_ALLOWLIST = EgressPolicy()  # the default: only public destinations, over https


def _looks_numeric(name: str) -> bool:
    """No top-level domain is numeric: a name ending in digits (or hex) is an address in a
    legacy notation."""
    last = name.rsplit(".", 1)[-1]
    return last.isdigit() or last.startswith("0x")


def _is_host_name(name: str) -> bool:
    labels = name.split(".")
    return all(
        0 < len(label) <= 63 and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
        for label in labels
    )


@functools.lru_cache(maxsize=1024)
def _host_refusal(policy: EgressPolicy, host: str, scheme: str) -> str | None:
    if policy.is_allowlisted(host):
        return None
    address = parse_ip(host)
    if address is not None:
        if not is_public_address(address):
            return "must not point at a loopback, private, link-local or reserved address"
    else:
        name = normalize_host(host)
        if _looks_numeric(name):
            # 127.1, 2130706433, 0x7f.0.0.1: resolvers read these as addresses.
            return "must name its host, or give an IP address in standard notation"
        if name in _FORBIDDEN_NAMES or name.endswith(_FORBIDDEN_SUFFIXES):
            return "must not point at this machine or a metadata service"
    if scheme != "https":
        return "must use https unless the host is in " + ALLOWLIST_ENV
    return None
