"""Consumer of transcript_worker.closer: ends a conversation at once on an operator's
``end``/``block`` or the visitor's "end chat"; everything else on the queue is ignored."""

from __future__ import annotations

import logging

from libs.common import codec, topology
from libs.common.messaging import Envelope, Permanent
from libs.common.sitedir import SiteDirectory, UnknownSite
from services.transcript_worker.closing import CLOSING_ACTIONS, Busy, Closer

log = logging.getLogger(__name__)


class CloserConsumer:
    spec = topology.CLOSER
    manual_ack = False
    # Nearly every delivery here is a VisitorEvent that closes nothing (a widget boot's
    # ARRIVED, an IDENTIFIED), acknowledged at once: those settled in one event-loop turn
    # leave as one `multiple` ack instead of a frame and a syscall each.
    batch_acks = True

    def __init__(self, closer: Closer, sites: SiteDirectory) -> None:
        self._closer = closer
        self._sites = sites

    async def consume(self, envelope: Envelope) -> None:
        struct = envelope.struct
        if envelope.type_name == "OperatorAction" and struct.action in CLOSING_ACTIONS:
            reason, operator_jid = CLOSING_ACTIONS[struct.action], struct.operator_jid
        elif envelope.type_name == "VisitorEvent" and struct.kind == codec.VisitorEventKind.ENDED_CHAT:
            reason, operator_jid = "VISITOR_ENDED", None
        else:
            return  # typing, page changes …: not ours
        if not struct.conversation_id:
            raise Permanent(f"{envelope.type_name} ends a chat but names no conversation")
        try:
            await self._sites.get(struct.site_id)
        except UnknownSite as exc:
            raise Permanent(str(exc)) from exc
        try:
            await self._closer.close(struct.conversation_id, struct.site_id, struct.visitor_id, reason, operator_jid)
        except Busy:
            # A live worker is closing this conversation right now: nothing left for us
            # (if it dies, the repair pass of the idle sweep finishes its close).
            log.info("conversation being closed by another worker", extra={"conversation": struct.conversation_id})
