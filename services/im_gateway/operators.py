"""Who operates which site, kept in memory and refreshed from the SiteDirectory.

Loaded once at start (one MySQL query for every operator, then each site's config
through the Redis-cached SiteDirectory) and per site on SiteDirectory.changes(): the
chat hot path never queries MySQL.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import sqlalchemy as sa

from libs.common.db import site_store
from libs.common.sitedir import SiteDirectory, UnknownSite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteChange:
    site_id: str
    added: frozenset[str]
    removed: frozenset[str]


class OperatorDirectory:
    def __init__(self, sitedir: SiteDirectory, engine: sa.Engine) -> None:
        self._sitedir = sitedir
        self._engine = engine
        self._by_site: dict[str, dict[str, str]] = {}  # site -> {bare jid: display name}

    async def load_all(self, served: set[str] | None = None) -> None:
        """Load the operators of every site (or of the ``served`` ones)."""

        def query() -> dict[str, list[str]]:
            with self._engine.connect() as conn:
                return site_store.all_operators(conn)

        by_operator = await asyncio.to_thread(query)
        site_ids = sorted({site for sites in by_operator.values() for site in sites})
        if served is not None:
            site_ids = [site for site in site_ids if site in served]
        for site_id in site_ids:
            await self.reload_site(site_id)
        log.info("operators loaded", extra={"sites": len(site_ids), "operators": len(by_operator)})

    async def reload_site(self, site_id: str, served: bool = True) -> SiteChange:
        """Re-read one site's operators; returns who was added and removed. A site
        this gateway does not serve (another component domain's) has none here."""
        try:
            operators = dict((await self._sitedir.get(site_id)).operators) if served else {}
        except UnknownSite:
            operators = {}  # a deleted site: every operator goes
        before = set(self._by_site.get(site_id, {}))
        if operators:
            self._by_site[site_id] = operators
        else:
            self._by_site.pop(site_id, None)
        return SiteChange(site_id, frozenset(set(operators) - before), frozenset(before - set(operators)))

    def sites(self) -> list[str]:
        return sorted(self._by_site)

    def operators_of(self, site_id: str) -> dict[str, str]:
        return dict(self._by_site.get(site_id, {}))

    def sites_of(self, operator: str) -> list[str]:
        return sorted(site for site, ops in self._by_site.items() if operator in ops)

    def is_operator(self, operator: str, site_id: str) -> bool:
        return operator in self._by_site.get(site_id, {})

    def display_name(self, operator: str, site_id: str) -> str:
        return self._by_site.get(site_id, {}).get(operator) or operator.split("@", 1)[0]

    def all_operators(self) -> set[str]:
        return {op for ops in self._by_site.values() for op in ops}
