"""Every site's look and online state, held in process memory.

A request reads one dict entry and nothing else. The entry is kept right by:

* pub/sub: ``SiteStatusReader.changes()`` (operators came or went) updates the state at
  once; ``SiteDirectory.changes()`` (the owner saved a theme) reloads the look;
* a refresh every ``REFRESH_INTERVAL_S`` that reads every cached site's status key in
  one MGET: it catches a missed notification, and a status key that expired because
  the gateway died (expiry is never announced), within a second;
* a slow config refresh (``CONFIG_REFRESH_S``) in case a theme invalidation was missed.

With ``files`` (HABLA_STATUS_FILES_DIR) every change of a tracked site is also written as
files that nginx serves (files.py): a site is tracked from its first request until it
leaves memory, when its files are removed, so nginx never serves a state nobody keeps
right. Files other instances wrote are adopted (tracked here too) every
``ADOPT_INTERVAL_S``, so any live instance keeps every file current.

Only the first request for a site waits, for its config (Redis, or MySQL on a cold
directory) and state. If Redis is unreachable every site is answered offline (the
refresh loop notices within ``REFRESH_INTERVAL_S``), and the true state returns with the
first refresh that succeeds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
import sqlalchemy.exc

from libs.common.settings import Settings
from libs.common.sitedir import MISSING_TTL_S, SiteDirectory, UnknownSite
from libs.common.state.presence import SiteState, SiteStatusReader, site_status_key
from libs.common.tasks import cancel_and_wait
from services.status_image import metrics
from services.status_image.files import StatusFiles
from services.status_image.render import ImageRenderer, SiteLook, state_json

log = logging.getLogger(__name__)

# Half a second between state refreshes: a missed change shows within a second even
# counting the MGET's own round trip, at the cost of two small Redis reads a second.
REFRESH_INTERVAL_S = 0.5
# A Redis or MySQL call slower than this counts as failed, so a hung server cannot stall
# the refresh loop or a first request for longer than the ~1 s a change may take.
BACKEND_TIMEOUT_S = 1.0
# Themes change rarely and every change is announced; this only bounds how long a
# missed announcement goes unnoticed.
CONFIG_REFRESH_S = 60.0
# A site not asked about for 10 minutes leaves memory (and the per-refresh MGET).
IDLE_EVICT_S = 600.0
# Bounds memory against someone requesting endless made-up ids: 100k entries are a few
# tens of MB; beyond it new sites are answered without being remembered.
MAX_SITES = 100_000
# Keys per MGET: one round trip each, small enough not to block Redis for long.
MGET_BATCH = 1000
# How long stop() waits for its background tasks: well under the 10 s that `make run`
# and container runtimes give a process between SIGTERM and SIGKILL.
STOP_TIMEOUT_S = 5.0
# Wait before resubscribing after a pub/sub connection broke.
RESUBSCRIBE_DELAY_S = 1.0
# How often the files directory is scanned for sites other instances wrote (a crashed
# instance's sites are kept current by the others within this), and how many of them
# are loaded at once (each is two Redis reads).
ADOPT_INTERVAL_S = 10.0
ADOPT_BATCH = 50

# What a failed Redis or MySQL call raises (redis-py wraps socket errors; OSError for
# what it does not; TimeoutError from our own wait_for).
BACKEND_ERRORS = (redis.exceptions.RedisError, sqlalchemy.exc.SQLAlchemyError, OSError, TimeoutError)

T = TypeVar("T")


class SiteEntry:
    """One site as the handlers see it. ``look`` None: no such site (``error`` says why)."""

    __slots__ = ("config_at", "confirmed", "error", "look", "online", "operators", "pushed_gen", "site_id", "used_at")

    def __init__(self, site_id: str, look: SiteLook | None, error: str = "", *, confirmed: bool = True) -> None:
        self.site_id = site_id
        self.look = look
        self.error = error
        self.online = False
        self.operators = 0
        # False while the look is the default one because the config could not be read.
        self.confirmed = confirmed
        now = time.monotonic()
        self.config_at = now
        self.used_at = now
        # Generation of the last pub/sub update (see SiteStatusCache._generation).
        self.pushed_gen = 0

    def set_state(self, state: SiteState) -> None:
        self.online = state.online
        self.operators = state.operators_available


class SiteStatusCache:
    def __init__(
        self,
        redis: aioredis.Redis,
        directory: SiteDirectory,
        reader: SiteStatusReader,
        renderer: ImageRenderer,
        settings: Settings,
        files: StatusFiles | None = None,
    ) -> None:
        self._redis = redis
        self.files = files
        self._directory = directory
        self._reader = reader
        self._renderer = renderer
        self._settings = settings
        self._entries: dict[str, SiteEntry] = {}
        self._loading: dict[str, asyncio.Future[SiteEntry]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._config_reload: asyncio.Task[None] | None = None
        self._stale_configs: set[str] = set()
        # Counts pub/sub updates. A refresh remembers the value when it sends its MGET
        # and leaves alone entries updated after that: their pushed state is newer.
        self._generation = 0
        self.redis_up = True
        self._mysql_ok = True
        self.default_look = renderer.look({})

    # --- the request path --------------------------------------------------------------

    def lookup(self, site_id: str) -> SiteEntry | None:
        """The site's entry if it is in memory (no I/O)."""
        entry = self._entries.get(site_id)
        if entry is not None:
            entry.used_at = time.monotonic()
            metrics.CACHE_HITS.inc()
        return entry

    def load(self, site_id: str) -> Awaitable[SiteEntry]:
        """Load a site not in memory yet; concurrent first requests share one load."""
        metrics.CACHE_MISSES.inc()
        return self._shared_load(site_id)

    def _shared_load(self, site_id: str) -> Awaitable[SiteEntry]:
        pending = self._loading.get(site_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(site_id))
            self._loading[site_id] = pending
            pending.add_done_callback(lambda _: self._loading.pop(site_id, None))
        return asyncio.shield(pending)

    async def _load(self, site_id: str) -> SiteEntry:
        entry = await self._read_config(site_id)
        if entry.look is not None and entry.confirmed and self.redis_up:
            try:
                entry.set_state(await self._timed(self._reader.get(site_id)))
            except BACKEND_ERRORS as exc:
                self._backend_failed("reading a site's status", exc)
            except (ValueError, TypeError, KeyError) as exc:  # an unreadable status key
                log.warning("unreadable site status; counting it offline", extra={"site": site_id, "error": repr(exc)})
        if len(self._entries) < MAX_SITES:
            self._entries[site_id] = entry
            metrics.SITES_CACHED.set(len(self._entries))
            self._publish(entry)  # only a tracked site gets files: its changes reach them
        elif self.files is not None:
            self.files.withdraw(site_id, force=True)  # e.g. adopted from disk: untracked here
        return entry

    async def _read_config(self, site_id: str) -> SiteEntry:
        try:
            config = await self._timed(self._directory.get(site_id))
        except UnknownSite as exc:
            return SiteEntry(site_id, None, str(exc))
        except BACKEND_ERRORS as exc:
            # Cannot tell whether the site exists: answer offline in the default look
            # (never a broken image) and let the refresh loop retry.
            self._backend_failed("reading a site's config", exc)
            return SiteEntry(site_id, self.default_look, confirmed=False)
        self._mysql_ok = True
        return SiteEntry(site_id, self._renderer.look(config.theme))

    # --- keeping entries right ---------------------------------------------------------

    def start(self) -> None:
        for job in (self._follow_status, self._follow_config, self._refresh_forever):
            self._spawn(job())
        if self.files is not None:
            self.files.start()
            self._spawn(self._adopt_forever())

    async def stop(self) -> None:
        await self._stop_tasks()
        if self.files is not None:
            # Nobody would keep this instance's files right once it is gone (the
            # listeners are stopped first, so no change writes them again).
            await self.files.stop()

    async def _stop_tasks(self) -> None:
        # Bounded, so a stuck Redis call cannot hold up a SIGTERM stop for long; cancelled
        # again while still running, as a listener stopped while subscribing can lose its
        # cancellation (see libs.common.tasks) and would reconnect after the client had
        # closed the pool: a connection nobody closed.
        await cancel_and_wait({*self._tasks, *self._loading.values()}, STOP_TIMEOUT_S)

    def _spawn(self, job: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _follow_status(self) -> None:
        while True:
            try:
                async for state in self._reader.changes():
                    self.apply_pushed(state)
            except BACKEND_ERRORS as exc:
                self._backend_failed("following site status changes", exc)
            except Exception:
                # A malformed announcement must not end the listener for good: the
                # service would silently fall back to the refresh alone.
                log.exception("site status listener failed; resubscribing")
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)

    def apply_pushed(self, state: SiteState) -> None:
        metrics.NOTIFICATIONS.labels("status").inc()
        entry = self._entries.get(state.site_id)
        if entry is not None and entry.look is not None:
            self._generation += 1
            entry.pushed_gen = self._generation
            entry.set_state(state)
            self._publish(entry)

    async def _follow_config(self) -> None:
        while True:
            try:
                async for site_id in self._directory.changes():
                    metrics.NOTIFICATIONS.labels("config").inc()
                    if site_id in self._entries:
                        self._spawn(self._reload_config(site_id))
            except BACKEND_ERRORS as exc:
                self._backend_failed("following site config changes", exc)
            except Exception:
                log.exception("site config listener failed; resubscribing")
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            try:
                await self.refresh()
            except Exception:
                # Whatever went wrong (a bug, a value we cannot read), the next refresh
                # must still run: it is what notices an expired status.
                log.exception("site state refresh failed")

    async def refresh(self) -> None:
        """Re-read every known site's state; drop idle entries; reload stale configs."""
        now = time.monotonic()
        for site_id, entry in list(self._entries.items()):
            if now - entry.used_at > IDLE_EVICT_S or (entry.look is None and now - entry.config_at > MISSING_TTL_S):
                del self._entries[site_id]
                if self.files is not None:
                    self.files.withdraw(site_id)
        metrics.SITES_CACHED.set(len(self._entries))
        known = [site_id for site_id, entry in self._entries.items() if entry.look is not None]
        generation = self._generation
        try:
            raw: list[bytes | str | None] = []
            for start in range(0, len(known), MGET_BATCH):
                keys = [site_status_key(self._settings, s) for s in known[start : start + MGET_BATCH]]
                raw.extend(await self._timed(self._redis.mget(keys)))
            if not known:
                await self._timed(self._redis.ping())
        except BACKEND_ERRORS as exc:
            self._backend_failed("refreshing site states", exc, decisive=True)
            return
        for site_id, value in zip(known, raw, strict=True):
            current = self._entries.get(site_id)
            if current is None or current.pushed_gen > generation:
                continue
            state = _parse_status(site_id, value)
            if (current.online, current.operators) != (state.online, state.operators_available):
                metrics.REFRESH_CHANGES.inc()
                current.set_state(state)
                self._publish(current)
        if not self.redis_up:
            log.warning("Redis is back; answering with live site states again")
            self.redis_up = True
            metrics.REDIS_UP.set(1)
            self._publish_all()
            stale = list(self._entries)  # invalidations may have been missed meanwhile
        else:
            stale = [s for s, e in self._entries.items() if not e.confirmed or now - e.config_at > CONFIG_REFRESH_S]
        # Queued rather than handed to the running reload, so none is skipped while
        # one is under way.
        self._stale_configs.update(stale)
        if self._stale_configs and (self._config_reload is None or self._config_reload.done()):
            self._config_reload = self._spawn(self._reload_stale_configs())

    async def _reload_stale_configs(self) -> None:
        while self._stale_configs:
            site_id = self._stale_configs.pop()
            if not await self._reload_config(site_id):
                self._stale_configs.add(site_id)
                return  # backend down: retried by a later refresh

    async def _reload_config(self, site_id: str) -> bool:
        """Re-read one site's config; False if the backend could not be read."""
        if site_id not in self._entries:
            return True
        # SiteDirectory.invalidate drops the Redis copy before announcing, so this
        # reads the saved config.
        fresh = await self._read_config(site_id)
        if not fresh.confirmed:
            return False  # keep the look we have
        entry = self._entries.get(site_id)
        if entry is not None:
            entry.look, entry.error, entry.confirmed, entry.config_at = fresh.look, fresh.error, True, time.monotonic()
            self._publish(entry)
        return True

    # --- helpers -----------------------------------------------------------------------

    async def _timed(self, call: Awaitable[T]) -> T:
        return await asyncio.wait_for(call, BACKEND_TIMEOUT_S)

    def _backend_failed(self, doing: str, exc: BaseException, *, decisive: bool = False) -> None:
        """Count and log a failed call. Only the refresh (``decisive``) switches every site
        to offline: a pub/sub reconnect or one slow first load must not flicker them all."""
        reason = f"{exc.__class__.__name__}: {exc}"[:200]
        if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
            # MySQL only holds configs: states still come from Redis; retried on every
            # refresh, so said once until a config is read again.
            if self._mysql_ok:
                log.warning("cannot read site configs from MySQL; using the default look", extra={"error": reason})
            self._mysql_ok = False
            return
        metrics.REDIS_ERRORS.inc()
        if not self.redis_up:
            return  # already said; the outage is logged once, not once per call
        if not decisive:
            log.info("Redis call failed; the next refresh decides", extra={"while": doing, "error": reason})
            return
        log.warning(
            "Redis unavailable; answering every site offline until it is back",
            extra={"while": doing, "error": reason},
        )
        self.redis_up = False
        metrics.REDIS_UP.set(0)
        self._publish_all()

    # --- files for nginx ---------------------------------------------------------------

    def _publish(self, entry: SiteEntry, *, force: bool = False) -> None:
        """Hand the site's answers, as a request would get them now, to the file writer."""
        if self.files is None:
            return
        if entry.look is None:
            self.files.withdraw(entry.site_id)  # unknown: Tornado's 404 says why
            return
        online = entry.online and self.redis_up
        image = entry.look.image(online).body
        self.files.publish(entry.site_id, image, state_json(online, entry.operators if online else 0)[0], force=force)

    def _publish_all(self) -> None:
        for entry in self._entries.values():
            self._publish(entry)

    def answered_by_tornado(self, entry: SiteEntry) -> None:
        """A request for a known site reached Tornado: behind nginx that means its file
        is missing (another instance removed it when it let the site go); write it again."""
        files = self.files
        if files is not None and self._entries.get(entry.site_id) is entry and files.missing(entry.site_id):
            self._publish(entry, force=True)

    async def _adopt_forever(self) -> None:
        assert self.files is not None
        while True:
            try:
                on_disk = await asyncio.to_thread(self.files.on_disk)
                new = [s for s in on_disk if s not in self._entries and s not in self._loading]
                for start in range(0, len(new), ADOPT_BATCH):
                    # load() writes each site's files again, in the state Redis has now.
                    await asyncio.gather(*(self._shared_load(s) for s in new[start : start + ADOPT_BATCH]))
            except Exception:
                log.exception("adopting status files failed")
            await asyncio.sleep(ADOPT_INTERVAL_S)


def _parse_status(site_id: str, value: bytes | str | None) -> SiteState:
    """A status key's value as SiteStatusReader.get reads it; missing means offline.

    Something unreadable also counts as offline (and is logged): one bad key must not
    stop the refresh of every other site.
    """
    if not value:
        return SiteState(site_id, False, 0)
    try:
        data = json.loads(value)
        return SiteState(site_id, bool(data["online"]), int(data["operators_available"]))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("unreadable site status; counting it offline", extra={"site": site_id, "error": repr(exc)[:200]})
        return SiteState(site_id, False, 0)
