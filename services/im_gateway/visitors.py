"""Visitors as XMPP contacts: a friendly, stable JID per visitor, and the pages they saw.

A visitor id (16 hex chars) makes a poor buddy name; "amber-otter-412" is easy to read
and type in ``!follow``. The name derives from a hash of the visitor id (so it is the
same after a Redis loss) and is claimed in Redis so two visitors never share one.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from libs.common.settings import Settings
from libs.common.xmlsafe import one_line

ADJECTIVES = (
    "amber", "azure", "brave", "bright", "calm", "clever", "coral", "cosy", "crisp", "dapper",
    "eager", "fancy", "gentle", "golden", "happy", "hazel", "jolly", "keen", "kind", "lively",
    "lucky", "merry", "mint", "noble", "olive", "plucky", "quiet", "rosy", "sunny", "swift",
    "tidy", "witty",
)  # fmt: skip
ANIMALS = (
    "badger", "beaver", "bison", "crane", "dolphin", "falcon", "ferret", "finch", "fox", "gecko",
    "heron", "ibis", "koala", "lemur", "lynx", "marten", "moose", "newt", "ocelot", "otter",
    "panda", "puffin", "quail", "raven", "robin", "seal", "stoat", "swan", "tapir", "vole",
    "walrus", "yak",
)  # fmt: skip
# 32 x 32 x 1000 = ~1M names: collisions among a site's live visitors are rare, and a
# collision only bumps the number.
NUMBERS = 1000
# Names live as long as a returning visitor is likely to be recognised.
NAME_TTL_S = 30 * 24 * 3600
# Names cached in memory: they never change, and a chat line should not cost a Redis
# round trip for them. 50,000 entries is a few MB; the cache is simply dropped when full.
NAME_CACHE_SIZE = 50_000
# Pages remembered per visitor for !info (the last ones matter; a long visit is summarised).
PAGES_KEPT = 50

_NAME_RE = re.compile(r"[a-z]+-[a-z]+-[0-9]+")  # fullmatch; ASCII digits only
# Candidates tried before giving up: 20 collisions in a row would mean ~all names taken.
NAME_ATTEMPTS = 20

# Visitors' names, claimed on first use, in one round trip for any number of visitors
# (a name took up to three: the visitor's name, the claim of a candidate, the name's
# record). KEYS: each visitor's name key; ARGV[1] the name keys' prefix, ARGV[2] the
# TTL, ARGV[3] n, the candidates per visitor; then per visitor its id and its n
# candidates in order (VisitorNames.candidate). For each, the first candidate free or
# already this visitor's is claimed, as before. Returns the names in KEYS' order (false
# for a visitor whose every candidate is another visitor's). One script call, not a
# pipeline of calls: redis-py asks SCRIPT EXISTS before every pipeline holding one.
_CLAIM_NAMES = """
local n = tonumber(ARGV[3])
local names = {}
for k = 1, #KEYS do
  local base = 4 + (k - 1) * (n + 1)
  local visitor = ARGV[base]
  local name = redis.call('GET', KEYS[k])
  if not name then
    name = false
    for i = base + 1, base + n do
      local key = ARGV[1] .. ARGV[i]
      if redis.call('SET', key, visitor, 'NX', 'EX', ARGV[2]) or redis.call('GET', key) == visitor then
        redis.call('SET', KEYS[k], ARGV[i], 'EX', ARGV[2])
        name = ARGV[i]
        break
      end
    end
  end
  names[k] = name
end
return names
"""


# A page view's work in one command, skipped if its message is marked delivered (a
# redelivery of a message handled already). KEYS[1] the mark, KEYS[2] the visitor's
# pages, then keys to read; ARGV[1] the page's entry, ARGV[2] the last index kept,
# ARGV[3] the pages' TTL, ARGV[4] one letter per key to read: s (SMEMBERS), h (HGETALL).
_ADD_UNLESS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local found = {}
for i = 1, #ARGV[4] do
  if string.sub(ARGV[4], i, i) == 's' then found[i] = redis.call('SMEMBERS', KEYS[2 + i])
  else found[i] = redis.call('HGETALL', KEYS[2 + i]) end
end
return found
"""


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    at_ms: int


def page_status(url: str, title: str) -> str:
    """A visitor's presence status line: what they are reading (one line, whatever
    the page's title or URL contain)."""
    title = " ".join(one_line(title).split())[:120]
    url = one_line(url)
    return f"{title} — {url}" if title else url


class VisitorNames:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self.domain = settings.xmpp_component_domain
        self._cache: dict[str, str] = {}  # visitor id -> name
        self._ids: dict[str, str] = {}  # name -> visitor id
        self._claim = redis.register_script(_CLAIM_NAMES)

    def _name_key(self, visitor_id: str) -> str:
        return self._settings.redis_key("gw", "vname", visitor_id)

    def _id_key(self, name: str) -> str:
        return self._settings.redis_key("gw", "vid", name)

    @staticmethod
    def candidate(visitor_id: str, attempt: int = 0) -> str:
        digest = hashlib.sha256(f"{visitor_id}:{attempt}".encode()).digest()
        number = int.from_bytes(digest[2:6], "big") % NUMBERS
        return f"{ADJECTIVES[digest[0] % len(ADJECTIVES)]}-{ANIMALS[digest[1] % len(ANIMALS)]}-{number}"

    async def name_of(self, visitor_id: str) -> str:
        """The visitor's friendly name, claimed on first use (one round trip, then cached)."""
        cached = self._cache.get(visitor_id)
        if cached:
            return cached
        return (await self.names_of([visitor_id]))[visitor_id]

    async def names_of(self, visitor_ids: Iterable[str]) -> dict[str, str]:
        """``name_of`` for several visitors: those not cached in one round trip together."""
        found: dict[str, str] = {}
        missing: list[str] = []
        for visitor_id in dict.fromkeys(visitor_ids):
            cached = self._cache.get(visitor_id)
            if cached:
                found[visitor_id] = cached
            else:
                missing.append(visitor_id)
        if not missing:
            return found
        args: list[Any] = [self._id_key(""), NAME_TTL_S, NAME_ATTEMPTS]
        for visitor_id in missing:
            args += [visitor_id, *(self.candidate(visitor_id, attempt) for attempt in range(NAME_ATTEMPTS))]
        claimed = await self._claim(keys=[self._name_key(v) for v in missing], args=args)
        for visitor_id, name in zip(missing, claimed, strict=True):
            if not name:
                raise RuntimeError(f"no free friendly name for visitor {visitor_id}")
            found[visitor_id] = self._remember(visitor_id, name.decode() if isinstance(name, bytes) else str(name))
        return found

    def _remember(self, visitor_id: str, name: str) -> str:
        if len(self._cache) >= NAME_CACHE_SIZE:
            self._cache.clear()
            self._ids.clear()
        self._cache[visitor_id] = name
        self._ids[name] = visitor_id
        return name

    async def jid_of(self, visitor_id: str) -> str:
        return f"{await self.name_of(visitor_id)}@{self.domain}"

    async def jids_of(self, visitor_ids: Iterable[str]) -> dict[str, str]:
        """visitor id -> JID, the names not cached claimed in one round trip."""
        return {v: f"{name}@{self.domain}" for v, name in (await self.names_of(visitor_ids)).items()}

    async def visitor_of(self, name: str) -> str | None:
        """The visitor id behind a friendly name (or a visitor JID's local part)."""
        name = name.strip().lower().split("@", 1)[0]
        if not _NAME_RE.fullmatch(name):
            return None
        if name in self._ids:
            return self._ids[name]
        found = await self._redis.get(self._id_key(name))
        if not found:
            return None
        self._remember(str(found), name)
        return str(found)


class VisitorPages:
    """The last pages each visitor opened, newest first (for !info and presence)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    def _key(self, visitor_id: str) -> str:
        return self._settings.redis_key("gw", "pages", visitor_id)

    async def add(self, visitor_id: str, url: str, title: str, at_ms: int | None = None) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            self.queue_add(pipe, visitor_id, url, title, at_ms)
            await pipe.execute()

    def queue_add_unless(
        self, pipe: Any, mark_key: str, visitor_id: str, url: str, title: str, at_ms: int | None, reads: list[str]
    ) -> None:
        """``add`` unless ``mark_key`` exists (the message's delivered mark), then
        ``reads``' answers (SMEMBERS of a set key, or HGETALL of a hash key: "s:" or "h:"
        then the key), as one command on ``pipe`` (EVAL: redis-py precedes a pipeline
        holding EVALSHA with SCRIPT EXISTS, a round trip of its own). Its answer: None if
        the mark exists, else the reads' answers, in order."""
        entry: dict[str, Any] = {"url": url, "title": title, "at_ms": at_ms or int(time.time() * 1000)}
        keys = [mark_key, self._key(visitor_id), *(read[2:] for read in reads)]
        kinds = "".join(read[0] for read in reads)
        pipe.execute_command(
            "EVAL",
            _ADD_UNLESS,
            len(keys),
            *keys,
            json.dumps(entry),
            PAGES_KEPT - 1,
            self._settings.session_ttl_s,
            kinds,
        )

    def queue_add(self, pipe: Any, visitor_id: str, url: str, title: str, at_ms: int | None = None) -> int:
        """``add`` as commands on ``pipe`` (with other reads of a page view); returns how many."""
        entry: dict[str, Any] = {"url": url, "title": title, "at_ms": at_ms or int(time.time() * 1000)}
        pipe.lpush(self._key(visitor_id), json.dumps(entry))
        pipe.ltrim(self._key(visitor_id), 0, PAGES_KEPT - 1)
        pipe.expire(self._key(visitor_id), self._settings.session_ttl_s)
        return 3

    async def latest(self, visitor_id: str) -> Page | None:
        return self.from_latest(await self._redis.lindex(self._key(visitor_id), 0))

    def queue_latest(self, pipe: Any, visitor_id: str) -> None:
        """``latest`` as a command on ``pipe``; ``from_latest`` reads its answer."""
        pipe.lindex(self._key(visitor_id), 0)

    @staticmethod
    def from_latest(raw: Any) -> Page | None:
        return Page(**json.loads(raw)) if raw else None

    async def recent(self, visitor_id: str) -> list[Page]:
        raw = await self._redis.lrange(self._key(visitor_id), 0, PAGES_KEPT - 1)
        return [Page(**json.loads(item)) for item in raw]
