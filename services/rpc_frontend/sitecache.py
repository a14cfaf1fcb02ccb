"""Site configs and online states in process memory, kept right by Redis pub/sub.

Every widget request needs its site's config (allowed origins, theme) and a boot or a
status request its online state. Both live in Redis and change rarely, and every change
is announced on a channel (``SiteDirectory.invalidate``, the gateway's presence
``recompute``), so a Redis round trip per request for them is waste. Copies are used
only while the follower (``follow.follow_sites``) holds a confirmed subscription to both
channels; until then, and from the moment it loses it, every read goes to Redis and
nothing is kept (a change announced while nobody listened must not be missed).

Why a copy is never staler than the announcement's arrival:

* a read remembers the site's change count before asking Redis and keeps the answer
  only if no change of that site arrived meanwhile (the answer may predate it);
* an online state is kept no longer than its Redis key lives (PTTL, read in the same
  round trip): the key expires without an announcement when the gateway dies;
* every copy is dropped after ``CONFIG_MAX_AGE_S`` / ``STATE_MAX_AGE_S`` anyway, which
  bounds what a silently broken subscription could cost.
"""

from __future__ import annotations

import json
import time
from typing import TypeVar

import redis.asyncio as aioredis

from libs.common import theme
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig, SiteDirectory
from libs.common.state.presence import SiteState, site_status_key

# Themes and domains change rarely and every change is announced; this only bounds how
# long a lost announcement could go unnoticed (the status image reloads as often).
CONFIG_MAX_AGE_S = 60.0
# States change on every operator's coming and going, also announced; a state is re-read
# at least this often, so even a broken subscription shows a change within 2 s.
STATE_MAX_AGE_S = 2.0
# Sites remembered per process (a few KB each); past it the oldest copy goes. Only sites
# that exist are kept, so made-up ids cannot fill it.
MAX_SITES = 10_000

_T = TypeVar("_T")


class SiteCache:
    def __init__(self, redis: aioredis.Redis, sites: SiteDirectory, settings: Settings) -> None:
        self._redis = redis
        self._sites = sites
        self._settings = settings
        self._configs: dict[str, tuple[float, SiteConfig]] = {}  # site -> (good until, config)
        self._states: dict[str, tuple[float, SiteState]] = {}
        self._themes: dict[str, tuple[SiteConfig, dict[str, dict[str, str]]]] = {}  # by config object
        # Announcements seen per site (config and state counted together) and a count of
        # subscription starts and losses: a read keeps its answer only if neither moved.
        self._changes: dict[str, int] = {}
        self._epoch = 0
        self._live = False

    # --- the request path -------------------------------------------------------------
    async def config(self, site_id: str) -> SiteConfig:
        """``SiteDirectory.get`` from memory when possible (UnknownSite as it raises)."""
        held = self._configs.get(site_id)
        if held is not None and held[0] > time.monotonic():
            return held[1]
        before = self._version(site_id)
        config = await self._sites.get(site_id)
        if self._version(site_id) == before and self._live:
            self._keep(self._configs, site_id, time.monotonic() + CONFIG_MAX_AGE_S, config)
        return config

    def held_config(self, site_id: str) -> SiteConfig | None:
        """The copy ``config`` would answer from memory now, else None (no Redis read)."""
        held = self._configs.get(site_id)
        if held is not None and held[0] > time.monotonic():
            return held[1]
        return None

    def theme(self, config: SiteConfig) -> dict[str, dict[str, str]]:
        """The config's theme merged over the defaults (``theme.validate``, a tenth of a
        millisecond for a full theme), worked out once per config object."""
        held = self._themes.get(config.site_id)
        if held is not None and held[0] is config:
            return held[1]
        merged, _errors = theme.validate(config.theme)
        if config.site_id not in self._themes and len(self._themes) >= MAX_SITES:
            del self._themes[next(iter(self._themes))]
        self._themes[config.site_id] = (config, merged)
        return merged

    async def state(self, site_id: str) -> SiteState:
        """The site's online state (``SiteStatusReader.get``), from memory when possible."""
        held = self._states.get(site_id)
        if held is not None and held[0] > time.monotonic():
            return held[1]
        before = self._version(site_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            key = site_status_key(self._settings, site_id)
            pipe.get(key)
            pipe.pttl(key)
            raw, pttl = await pipe.execute()
        state = parse_state(site_id, raw)
        if self._version(site_id) == before and self._live:
            age = STATE_MAX_AGE_S if int(pttl) < 0 else min(STATE_MAX_AGE_S, int(pttl) / 1000)
            self._keep(self._states, site_id, time.monotonic() + age, state)
        return state

    # --- fed by the follower --------------------------------------------------------------
    @property
    def live(self) -> bool:
        """Copies are being kept (the subscription to both channels is confirmed)."""
        return self._live

    def following(self, live: bool) -> None:
        """The subscription to both channels is confirmed (True) or lost (False)."""
        self._live = live
        self.forget()

    def forget(self) -> None:
        """Drop every copy; reads in flight keep nothing (an announcement may be lost)."""
        self._epoch += 1
        self._configs.clear()
        self._states.clear()
        self._changes.clear()

    def config_changed(self, site_id: str) -> None:
        self._changed(site_id)
        self._configs.pop(site_id, None)

    def state_changed(self, state: SiteState) -> None:
        self._changed(state.site_id)
        if self._live and state.site_id in self._states:
            # The announcement carries the new state; the key's TTL still bounds it.
            self._states[state.site_id] = (time.monotonic() + STATE_MAX_AGE_S, state)

    # --- helpers ----------------------------------------------------------------------------
    def _version(self, site_id: str) -> tuple[int, int]:
        return self._epoch, self._changes.get(site_id, 0)

    def _changed(self, site_id: str) -> None:
        if len(self._changes) >= MAX_SITES and site_id not in self._changes:
            # Forgetting counts could let a read that started before a change keep its
            # answer; a new epoch makes every read in flight drop its answer instead.
            self._epoch += 1
            self._changes.clear()
        self._changes[site_id] = self._changes.get(site_id, 0) + 1

    @staticmethod
    def _keep(table: dict[str, tuple[float, _T]], site_id: str, until: float, value: _T) -> None:
        if site_id not in table and len(table) >= MAX_SITES:
            del table[next(iter(table))]  # the oldest insertion
        table[site_id] = (until, value)


def parse_state(site_id: str, raw: str | bytes | None) -> SiteState:
    """A status key's value as ``SiteStatusReader.get`` reads it; missing means offline."""
    if not raw:
        return SiteState(site_id, False, 0)
    data = json.loads(raw)
    return SiteState(site_id, bool(data["online"]), int(data["operators_available"]))
