"""The XMPP connection: a slixmpp ComponentXMPP that reconnects with backoff.

Stanzas the gateway must not lose (chat lines for operators) are written to the
transport synchronously (``send_raw``), not through slixmpp's send queue; if the
stream is down, that raises XmppUnavailable and the message stays unacknowledged.
Written is not delivered, though: XEP-0114 has no acknowledgements, and bytes in a
socket die with the connection. ``confirm()`` is the barrier: an XEP-0199 ping to
the server, which handles a component's stanzas in order, so its answer means every
stanza written before it was routed. Only then is the RabbitMQ message acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import Iq, Message, Presence
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from slixmpp.xmlstream.tostring import tostring

from libs.common import xmlsafe
from services.im_gateway import metrics
from services.im_gateway.disco import caps_element
from services.im_gateway.outbox import XmppUnavailable

log = logging.getLogger(__name__)

# Reconnect backoff: first retry after 0.5 s (a restarting Prosody is back in ~50 ms,
# see servers.md), doubling up to 30 s so a long outage costs one attempt per 30 s.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0

# A server answers a ping in about a millisecond (servers.md); one unanswered for this
# long means a stream that is stuck, so the lines are sent again after a reconnect.
CONFIRM_TIMEOUT_S = 10.0
# A hold request (see ask_hold) unanswered for this long: the server has no hold.
HOLD_TIMEOUT_S = 2.0

CHATSTATES_NS = "http://jabber.org/protocol/chatstates"
RECEIPTS_NS = "urn:xmpp:receipts"
PING_NS = "urn:xmpp:ping"
# XEP-0359: the message id travels as origin-id too, so a client that receives a line
# twice (resent because the stream died before the barrier) shows it once.
SID_NS = "urn:xmpp:sid:0"
# mod_habla_hold (deploy/prosody-modules): a component handing its domain over asks the
# server to hold what is routed to it from now on, for the next component stream.
HOLD_NS = "urn:x-habla:component-hold:0"


class GatewayComponent(ComponentXMPP):
    """One component connection; ``ready`` is set while the stream is usable."""

    def __init__(self, domain: str, secret: str, host: str, port: int, server: str = "") -> None:
        super().__init__(domain, secret, host, port)  # type: ignore[no-untyped-call]
        # Where barrier pings go: the server's own domain (any answer will do, even
        # an error: it is the order that counts).
        self.ping_target = server or domain.split(".", 1)[-1]
        # Subscription requests are answered by services.im_gateway.roster (operators
        # only), never automatically: a stranger must not get the bot in their roster.
        self.auto_authorize = None
        self.auto_subscribe = False
        # slixmpp answers probes from its in-memory roster, which knows nothing of
        # subscriptions made before this process started, and so answers an operator's
        # probe with "unsubscribed" -- cutting the operator's subscription to the bot.
        # services.im_gateway.inbound answers probes instead.
        self.del_event_handler("presence_probe", self._handle_probe)
        # slixmpp's "message" event needs a <body/>; chat states (typing) come bodiless.
        self.register_plugin("xep_0085")
        self.ready = asyncio.Event()
        self._stopping = False
        self._backoff_s = BACKOFF_FIRST_S
        self._reconnect_task: asyncio.Task[None] | None = None
        self._standby = False  # while claiming the domain: no reconnect of our own
        self._attempt_over = asyncio.Event()
        # The barrier: stanzas written on stream number ``_stream`` so far, how many of
        # them a pong has covered, and the one ping in flight (shared by its waiters).
        self._stream = 0
        self._written = 0
        self._confirmed = 0
        self._ping: asyncio.Future[None] | None = None
        self._ping_tasks: set[asyncio.Task[None]] = set()
        # A hold request that comes back to us: the server routed it instead of holding.
        self.register_handler(
            Callback(
                "habla hold request",
                MatchXPath(f"{{{self.default_ns}}}iq/{{{HOLD_NS}}}hold"),
                self._on_hold_request,  # type: ignore[arg-type]
            )
        )
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("connection_failed", self._on_connection_failed)
        self.add_event_handler("reconnect_delay", self._cap_connect_delay)

    # --- lifecycle -----------------------------------------------------------------
    async def stop(self) -> None:
        self._stopping = True
        if self._reconnect_task:
            self._reconnect_task.cancel()
        self.ready.clear()
        if self.transport:
            await self.disconnect(wait=1.0)

    def _on_session_start(self, _event: Any) -> None:
        self._stream += 1
        self._written = self._confirmed = 0
        log.info("connected to the XMPP server as a component", extra={"domain": self.boundjid.bare})
        self._backoff_s = BACKOFF_FIRST_S
        self.ready.set()
        metrics.XMPP_CONNECTED.set(1)

    async def claim(self, within: float) -> bool:
        """One connection attempt as a standby. True once the stream is up: the server
        let us in, so no other gateway holds the domain. False if it refused (another
        gateway is connected: <conflict/>), could not be reached, or took too long."""
        self._stopping = False
        self._standby = True
        self._attempt_over.clear()
        self.connect()
        ready = asyncio.ensure_future(self.ready.wait())
        over = asyncio.ensure_future(self._attempt_over.wait())
        await asyncio.wait({ready, over}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        over.cancel()
        if self.ready.is_set():
            self._standby = False
            return True
        self.cancel_connection_attempt()
        if self.transport is not None:
            self.abort()
        return False

    def _on_disconnected(self, reason: Any) -> None:
        self.ready.clear()
        metrics.XMPP_CONNECTED.set(0)
        self._attempt_over.set()
        self._stream += 1  # whatever was written and not confirmed must be sent again
        if self._ping is not None and not self._ping.done():
            self._ping.set_exception(XmppUnavailable("the XMPP stream was lost before the server confirmed"))
        self._ping = None
        if self._stopping or self._standby:
            return
        delay = self._backoff_s * random.uniform(0.8, 1.2)  # jitter: shards do not reconnect in step
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        log.warning("XMPP stream lost; reconnecting", extra={"reason": str(reason), "in_s": round(delay, 2)})
        metrics.XMPP_RECONNECTS.inc()
        self._reconnect_task = asyncio.ensure_future(self._reconnect_after(delay))

    def _on_connection_failed(self, reason: Any) -> None:
        self._attempt_over.set()
        if self._standby:
            return  # the standby loop tries again in a second
        # slixmpp retries a failed TCP connect itself with its own backoff; we only log.
        log.warning("cannot reach the XMPP server's component port; retrying", extra={"reason": str(reason)})

    def _cap_connect_delay(self, _delay: float) -> None:
        # slixmpp's own retry of a refused TCP connect doubles up to 300 s; ours stops
        # at BACKOFF_MAX_S so a gateway is back within 30 s of the server's return.
        # (Called synchronously just before slixmpp sleeps for the delay.)
        self._connect_loop_wait = min(self._connect_loop_wait, BACKOFF_MAX_S)

    async def _reconnect_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._stopping:
            self.connect()

    # --- sending (services.im_gateway.outbox.Outbox) ----------------------------------
    def send_raw(self, data: str | bytes) -> None:
        """Every byte this component writes passes here (slixmpp's queued sends and
        our direct ones alike): the one place where text is made XML-safe
        (libs.common.xmlsafe), so no visitor field, command reply or plugin answer
        can make the server close the stream. Removing forbidden characters from
        the serialised stanza is exact: they cannot occur in markup, only in text."""
        if isinstance(data, str):
            data = xmlsafe.clean(data)
        super().send_raw(data)

    def _hand(self, stanza: Message | Presence) -> None:
        transport = self.transport
        if not self.ready.is_set() or transport is None or transport.is_closing():
            raise XmppUnavailable("the XMPP stream is down; will retry once reconnected")
        self.send_raw(tostring(stanza.xml, xmlns=self.default_ns, stream=self, top_level=True))
        self._written += 1
        metrics.STANZAS_SENT.labels(stanza.name).inc()

    def ticket(self) -> tuple[int, int]:
        """Where the stream is now (stream number, stanzas written): confirm(ticket)
        later covers everything written up to here."""
        return self._stream, self._written

    async def confirm(self, ticket: tuple[int, int] | None = None) -> None:
        """Return once the server has every stanza written so far on this stream (or up
        to ``ticket``); XmppUnavailable if the stream was lost first (then they must be
        sent again).

        One ping at a time: waiters whose stanzas it covers share it; those who wrote
        after it was sent share the next one (so a busy gateway pings once per batch).
        """
        stream, mark = ticket or (self._stream, self._written)
        if self._stream != stream:
            raise XmppUnavailable("the XMPP stream was lost before the server confirmed")
        while self._confirmed < mark:
            if self._stream != stream or not self.ready.is_set():
                raise XmppUnavailable("the XMPP stream was lost before the server confirmed")
            if self._ping is None:
                self._ping = self._start_ping()
            await asyncio.shield(self._ping)
        if self._stream != stream:
            raise XmppUnavailable("the XMPP stream was lost before the server confirmed")

    def _start_ping(self) -> asyncio.Future[None]:
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Nobody may be left to await a ping that failed: do not warn about it.
        answered.add_done_callback(lambda f: f.cancelled() or f.exception())
        task = asyncio.ensure_future(self._ping_server(answered, self._stream, self._written))
        self._ping_tasks.add(task)
        task.add_done_callback(self._ping_tasks.discard)
        return answered

    async def _ping_server(self, answered: asyncio.Future[None], stream: int, covers: int) -> None:
        started = time.perf_counter()
        try:
            iq = self.make_iq_get(ito=self.ping_target, ifrom=self.boundjid.bare)
            iq.xml.append(iq.xml.makeelement(f"{{{PING_NS}}}ping", {}))
            try:
                await iq.send(timeout=CONFIRM_TIMEOUT_S)  # type: ignore[no-untyped-call]
            except IqError:
                pass  # an error answer is an answer: everything before it was handled
            except IqTimeout:
                log.warning("the XMPP server did not answer a ping; reconnecting")
                if self._stream == stream:
                    self.abort_stream()
                return  # answered fails below: the lines are sent again after reconnecting
            if self._stream == stream and not answered.done():
                self._confirmed = max(self._confirmed, covers)
                answered.set_result(None)
                metrics.BARRIER_PINGS.labels("answered").inc()
                metrics.BARRIER_SECONDS.observe(time.perf_counter() - started)
        except Exception as exc:  # the stream broke under the send
            log.warning("barrier ping failed: %s", exc)
        finally:
            if not answered.done():
                metrics.BARRIER_PINGS.labels("stream_lost").inc()
                answered.set_exception(XmppUnavailable("the XMPP stream was lost before the server confirmed"))
            if self._ping is answered:
                self._ping = None

    async def ask_hold(self) -> bool:
        """Handing the domain over: ask the XMPP server to hold what it routes to the
        domain from now on for the next component stream (Prosody with
        mod_habla_hold, deploy/prosody-modules). True once it agreed: every stanza it
        routed to us before has arrived (it answers in order), nothing more will, so
        nothing needs refusing while we finish. False where the server has no hold
        (ejabberd, a Prosody without the module: the request comes back to us and we
        answer it feature-not-implemented, _on_hold_request), or the stream is down."""
        if not self.ready.is_set():
            return False
        iq = self.make_iq_set(ito=self.boundjid.bare, ifrom=self.boundjid.bare)
        iq.xml.append(iq.xml.makeelement(f"{{{HOLD_NS}}}hold", {}))
        try:
            await iq.send(timeout=HOLD_TIMEOUT_S)  # type: ignore[no-untyped-call]
        except (IqError, IqTimeout):
            return False
        except Exception as exc:  # the stream broke under the send
            log.warning("hold request failed: %s", exc)
            return False
        return True

    def _on_hold_request(self, iq: Iq) -> None:
        """Our own hold request, routed back to us (ejabberd, a Prosody without
        mod_habla_hold), or anyone else's: we hold nothing. (slixmpp's own
        feature-not-implemented answer does not come: the request's id matches the
        waiter of our own request, so slixmpp counts it as handled.)"""
        if iq["type"] in ("get", "set"):
            reply = iq.reply()  # type: ignore[no-untyped-call]
            reply["error"]["condition"] = "feature-not-implemented"
            reply["error"]["type"] = "cancel"
            reply.send()

    def abort_stream(self) -> None:
        """Drop a stuck stream; the disconnect handler reconnects."""
        if self.transport is not None:
            self.transport.abort()

    def chat(
        self,
        sender: str,
        to: str,
        body: str,
        *,
        stanza_id: str | None = None,
        request_receipt: bool = False,
        state: str | None = None,
    ) -> None:
        msg = self.make_message(mto=to, mbody=body, mtype="chat", mfrom=sender)
        if stanza_id:
            msg["id"] = stanza_id
            msg.xml.append(msg.xml.makeelement(f"{{{SID_NS}}}origin-id", {"id": stanza_id}))
            if request_receipt:  # XEP-0184 §5.3: only with an id the receipt can name
                msg.xml.append(msg.xml.makeelement(f"{{{RECEIPTS_NS}}}request", {}))
        if state:
            msg.xml.append(msg.xml.makeelement(f"{{{CHATSTATES_NS}}}{state}", {}))
        self._hand(msg)

    def presence(
        self, sender: str, to: str, *, show: str | None = None, status: str | None = None, kind: str | None = None
    ) -> None:
        # A status is shown on one line: a page title or URL must not fake more lines.
        status = xmlsafe.one_line(status) if status else status
        pres = self.make_presence(pshow=show, pstatus=status, pto=to, pfrom=sender, ptype=kind)  # type: ignore[arg-type]
        if kind is None:  # XEP-0115: clients learn what this JID supports without asking
            pres.xml.append(caps_element(pres["from"].user))
        self._hand(pres)

    def chat_state(self, sender: str, to: str, state: str) -> None:
        msg = self.make_message(mto=to, mtype="chat", mfrom=sender)
        msg.xml.append(msg.xml.makeelement(f"{{{CHATSTATES_NS}}}{state}", {}))
        self._hand(msg)

    def receipt(self, sender: str, to: str, stanza_id: str) -> None:
        msg = self.make_message(mto=to, mfrom=sender)
        msg.xml.append(msg.xml.makeelement(f"{{{RECEIPTS_NS}}}received", {"id": stanza_id}))
        self._hand(msg)

    def error(self, stanza: Message | Presence, condition: str, text: str, etype: str = "auth") -> None:
        """Answer ``stanza`` with an XMPP error (strangers, unknown visitors)."""
        if stanza["type"] == "error":
            return  # never answer an error with an error (RFC 6120 §8.3.1)
        reply = (
            stanza.reply(clear=True)  # type: ignore[no-untyped-call]
            if isinstance(stanza, Message)
            else self.make_presence(pto=stanza["from"], pfrom=stanza["to"])
        )
        # The same id (RFC 6120 §8.3.1): how a client knows which line failed.
        # (slixmpp's Message.reply drops it.)
        if stanza["id"]:
            reply["id"] = stanza["id"]
        reply["type"] = "error"
        reply["error"]["condition"] = condition
        reply["error"]["type"] = etype
        reply["error"]["text"] = text
        # If the stream is down the sender is told nothing more; they changed nothing either.
        with contextlib.suppress(XmppUnavailable):
            self._hand(reply)


def on(component: GatewayComponent, event: str, callback: Callable[[Any], Any]) -> None:
    """Register a handler (typed wrapper: slixmpp's own signature is untyped)."""
    component.add_event_handler(event, callback)
