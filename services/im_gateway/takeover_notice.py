"""After taking a partition over from a gateway that died, tell its operators to resend.

An operator's line that the XMPP server handed to a gateway in the last moments before
that gateway was SIGKILLed (read from the socket, not yet logged) gets neither a
receipt nor an error: the server considers it delivered, and only the operator's
client can send it again. Nothing server-side knows which lines those were, so the
new owner tells every operator with an open conversation on the partition, once per
conversation, in that conversation's window (a ``[Habla]`` line from the visitor's
JID, like every other notice): the gateway restarted at HH:MM:SS, lines without a
delivery tick from just before were not received, please send them again.

How a death is told from a graceful stop: ``gw:owner:<domain>`` names the owner's
lease token and has no expiry (the lease itself expires, so a gateway restarted after
its lease ran out could not tell otherwise). The new owner swaps its token in; a graceful
stop (SIGTERM: consumers stopped, lines drained) deletes its own token first, so
finding another token there means the previous owner did not stop cleanly. The notice
to send is kept in ``gw:restart-notice:<domain>`` (the takeover time, ms) until it has
reached the XMPP server (ping barrier), so an owner that dies before telling leaves
it to the next one.

The XMPP server holds lines sent while no gateway owned the domain (mod_habla_hold,
deploy/prosody-modules) and hands them to the new owner right after its handshake, so
those are stored and receipted like any other: the notice waits until the lines taken in
before it are handled and their receipts written (``caught_up``), so when it arrives the
only lines without a tick are those the dead gateway had read and not stored. (Where the
server bounces instead, e.g. ejabberd, those lines show an error and no tick.)

Limits: a line that *opened* a chat (operator-initiated, conversation not yet in Redis)
has no open conversation to be told about; if Redis lost the owner key (restarted
without its data) a death just after is not noticed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.common.settings import Settings
from services.im_gateway.component import GatewayComponent
from services.im_gateway.desk import Desk
from services.im_gateway.outbox import XmppUnavailable

log = logging.getLogger(__name__)

# KEYS[1] = owner, KEYS[2] = pending notice; ARGV[1] = our token, ARGV[2] = now (ms).
# Someone else's token still there: it did not stop cleanly, a notice is due. Returns the
# notice due (this takeover's, or one a previous owner left unsent), or nil.
_CLAIM = """
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if previous and previous ~= ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) end
return redis.call('GET', KEYS[2])
"""

# KEYS[1] = key; ARGV[1] = value. Delete only if it still holds that value.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Redis unreachable at the takeover: try again this often (the notice waits, nothing else).
RETRY_S = 1.0
# Notices written between two barrier pings: one ping per batch, not per operator.
BATCH = 200
# How long the notice waits for the lines taken in before it (held by the XMPP server
# during the takeover) to be handled and receipted.
CAUGHT_UP_S = 3.0


# How the notice begins (after voice.PREFIX): what tests and log readers look for.
LEAD = "The Habla gateway restarted at "


def notice_text(restarted_ms: int) -> str:
    at = time.strftime("%H:%M:%S", time.gmtime(restarted_ms / 1000))
    return (
        f"{LEAD}{at} UTC. Lines you sent in the last seconds before that "
        "which still show no delivery tick (receipt) were not received: please send them again."
    )


class Succession:
    """Who owns the domain now, and whether the previous owner stopped cleanly."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, token: str) -> None:
        self._token = token
        domain = settings.xmpp_component_domain
        self._owner_key = settings.redis_key("gw", "owner", domain)
        self._pending_key = settings.redis_key("gw", "restart-notice", domain)
        self._claim = redis.register_script(_CLAIM)
        self._delete_if = redis.register_script(_DELETE_IF)

    async def claim(self) -> int | None:
        """Record us as the owner; the takeover time (ms) of a notice due, or None."""
        pending = await self._claim(
            keys=[self._owner_key, self._pending_key], args=[self._token, int(time.time() * 1000)]
        )
        return None if pending is None else int(pending)

    async def told(self, restarted_ms: int) -> None:
        """The notice for ``restarted_ms`` has reached the XMPP server (a newer one stays)."""
        await self._delete_if(keys=[self._pending_key], args=[restarted_ms])

    async def released(self) -> None:
        """A graceful stop: the next owner has nothing to tell."""
        await self._delete_if(keys=[self._owner_key], args=[self._token])


class TakeoverNotice:
    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        desk: Desk,
        component: GatewayComponent,
        token: str,
        caught_up: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._desk = desk
        self._component = component
        self._caught_up = caught_up
        self.succession = Succession(redis, settings, token)

    async def run(self, sites: set[str]) -> None:
        """Record this gateway as the owner; if the previous one died (or left a notice
        unsent), tell the operators of ``sites``' open conversations. Runs in the
        background of a takeover; Redis or XMPP away means waiting, not giving up."""
        while True:
            try:
                pending = await self.succession.claim()
                break
            except (RedisError, OSError) as exc:
                log.warning("cannot record the partition's owner (Redis unreachable); retrying: %s", exc)
                await asyncio.sleep(RETRY_S)
        if pending is None:
            return
        if self._caught_up is not None:
            # Lines held by the server during the takeover arrived right after our
            # handshake: receipted before the notice, they are not among those it names.
            await self._caught_up(CAUGHT_UP_S)
        done: set[tuple[str, str]] = set()
        while True:
            await self._component.ready.wait()
            try:
                told = await self._tell(sites, pending, done)
                await self.succession.told(pending)
            except (XmppUnavailable, RedisError, OSError) as exc:
                log.warning("restart notice not sent yet; retrying: %s", exc)
                await asyncio.sleep(RETRY_S)
                continue
            log.info("restart notice sent", extra={"notices": told, "restarted_ms": pending})
            return

    async def released(self) -> None:
        """Graceful stop (call before the lease is released)."""
        await self.succession.released()

    async def _tell(self, sites: set[str], restarted_ms: int, done: set[tuple[str, str]]) -> int:
        """One notice per (operator, open conversation), from the visitor's JID, in that
        conversation's window; returns how many, once the XMPP server has them all.
        ``done`` keeps those the server confirmed, so a retry after a lost stream does
        not repeat them."""
        text = notice_text(restarted_ms)
        written: list[tuple[str, str]] = []
        for conversation in await self._desk.routing.open_conversations_of(sites):
            jid = await self._desk.names.jid_of(conversation.visitor_id)
            for operator in conversation.recipients:
                if (operator, conversation.conversation_id) in done:
                    continue
                self._desk.info(jid, operator, text)
                written.append((operator, conversation.conversation_id))
                if len(written) >= BATCH:
                    await self._component.confirm()
                    done.update(written)
                    written.clear()
        await self._component.confirm()
        done.update(written)
        return len(done)
