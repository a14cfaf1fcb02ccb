"""Gateway partitions: which component domain serves a site.

A partition IS a component domain. A site with its own domain (sites.xmpp_domain, `habla
site set-xmpp-domain`) is served there. Every other site belongs to partition
crc32(site id) mod P of the default component domain D, whose domain is ``p<N>.D``
(``D`` itself when P = 1, so one partition is exactly the unpartitioned layout: same
domain, same queue names). Its queues are im_gateway.<partition domain>.visitor /
.conversation (libs.common.topology), its bot and visitors are <name>@<partition domain>,
and one gateway at a time owns it (the per-domain lease and the XMPP server's one
component connection per domain, services.im_gateway.lease).

crc32, not Python's hash(): the same on every host, process and Python version, and
MySQL has it too (CRC32()) should an operator want to query a partition's sites.
"""

from __future__ import annotations

import zlib

from libs.common.settings import Settings, SettingsError

# Every partition costs a component connection, queues and a lease renewal per second:
# a bound well above any sensible deployment (P is a handful to a few dozen), so a typo
# cannot make a gateway open thousands of connections.
MAX_PARTITIONS = 256


def count(settings: Settings) -> int:
    p = settings.gateway_partitions
    if not 1 <= p <= MAX_PARTITIONS:
        raise SettingsError(f"HABLA_GATEWAY_PARTITIONS={p} must be between 1 and {MAX_PARTITIONS}")
    return p


def partition_of(site_id: str, partitions: int) -> int:
    """Stable: crc32 of the id's UTF-8 bytes (surrogates passed through, never an error)."""
    return zlib.crc32(site_id.encode("utf-8", "surrogatepass")) % partitions


def partition_domain(settings: Settings, n: int) -> str:
    base = settings.default_component_domain
    return base if count(settings) == 1 else f"p{n}.{base}"


def all_domains(settings: Settings) -> list[str]:
    """Every partition's component domain, in partition order (the XMPP server must
    know each one: tools/prosody.py, README)."""
    return [partition_domain(settings, n) for n in range(count(settings))]


def site_domain(settings: Settings, site_id: str, explicit: str | None) -> str:
    """The component domain that serves ``site_id`` (``explicit``: sites.xmpp_domain)."""
    if explicit:
        return explicit
    return partition_domain(settings, partition_of(site_id, count(settings)))


def default_partition(settings: Settings, domain: str) -> int | None:
    """Which partition of the default domain ``domain`` is, if it is one."""
    for n, name in enumerate(all_domains(settings)):
        if name == domain:
            return n
    return None


def served(settings: Settings) -> list[int]:
    """The partitions this gateway process may own (HABLA_GATEWAY_SERVE_PARTITIONS)."""
    p = count(settings)
    raw = settings.gateway_serve_partitions.strip().lower()
    if raw in ("", "all"):
        return list(range(p))
    found: set[int] = set()
    for part in raw.split(","):
        part = part.strip()
        if not part.isascii() or not part.isdigit() or len(part) > 4 or int(part) >= p:
            raise SettingsError(
                f"HABLA_GATEWAY_SERVE_PARTITIONS: {part[:16]!r} is not a partition number below {p} (or use all)"
            )
        found.add(int(part))
    return sorted(found)
