"""Acknowledgements of one consumer's channel written together (``Bus.consume(batch_acks=True)``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage


class AckBatch:
    """Acknowledgements of one consumer's channel, written together.

    A consumer that settles many messages at once (the gateway acknowledges every
    line one barrier ping confirmed) would write one basic.ack frame each, a syscall
    each. Asked for in one event-loop turn, they go out as one ``multiple`` ack for
    the longest run of the oldest unsettled deliveries, plus single acks for the rest.

    Safe because the broker's unacknowledged deliveries at or below that tag are
    exactly this run: every delivery is recorded here before anything else happens
    to it (tags only grow on a channel, and deliveries reach the consumer in order),
    every acknowledgement of the consumer passes here, and flushes are written one
    after another (a later ``multiple`` ack never overtakes an earlier single one). A
    new channel (after a reconnect) starts afresh: the old one's deliveries come back
    from the broker, and acks waiting for it fail as a closed channel's would.
    """

    def __init__(self) -> None:
        self._channel: Any = None
        # delivery tag -> its ack waiter once asked for (None: still being handled),
        # in delivery order
        self._unsettled: dict[int, asyncio.Future[None] | None] = {}
        self._scheduled = False
        self._writing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, message: AbstractIncomingMessage) -> None:
        if message.channel is not self._channel:
            self._fail(self._unsettled, "the channel was replaced before the ack was written")
            self._channel, self._unsettled = message.channel, {}
        if message.delivery_tag is not None:
            self._unsettled[message.delivery_tag] = None

    def forget(self, message: AbstractIncomingMessage) -> None:
        """A delivery already nacked, with no ack asked for: no longer in the way of a
        ``multiple`` ack for the deliveries behind it."""
        tag = message.delivery_tag
        if message.channel is self._channel and tag in self._unsettled and self._unsettled[tag] is None:
            del self._unsettled[tag]

    async def ack(self, message: AbstractIncomingMessage) -> None:
        tag = message.delivery_tag
        if message.channel is not self._channel or tag is None or tag not in self._unsettled:
            await message.ack()  # not tracked here: as aio-pika would
            return
        waiter = self._unsettled[tag]
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._unsettled[tag] = waiter
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._start_flush)
        await asyncio.shield(waiter)

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._tasks.add(task)  # referenced until done (the loop keeps tasks weakly)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        async with self._writing:
            self._scheduled = False
            channel, asked = self._channel, {t: w for t, w in self._unsettled.items() if w is not None}
            upto = None  # the longest run of the oldest unsettled deliveries, all asked for
            for tag, waiter in self._unsettled.items():
                if waiter is None:
                    break
                upto = tag
            for tag in asked:
                del self._unsettled[tag]
            try:
                if upto is not None:
                    await channel.basic_ack(delivery_tag=upto, multiple=True)
                for tag in asked:
                    if upto is None or tag > upto:
                        await channel.basic_ack(delivery_tag=tag)
            except Exception as exc:
                self._fail(asked, f"{exc.__class__.__name__}: {exc}")
                return
            for waiter in asked.values():
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    @staticmethod
    def _fail(waiting: Mapping[int, asyncio.Future[None] | None], why: str) -> None:
        for waiter in waiting.values():
            if waiter is not None and not waiter.done():
                waiter.set_exception(aiormq.exceptions.ChannelInvalidStateError(why))
