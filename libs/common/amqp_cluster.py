"""Connecting to one of several RabbitMQ nodes, and moving to another when it goes away.

Part of the messaging façade: only ``libs.common.messaging`` imports this module.

aio-pika's robust connection reconnects, restores its channels, queues, bindings and
consumers, but always to the one URL it was made with: when that node is down for good
the service waits for it forever. ``NodeRotatingConnection`` is that same robust
connection with a list of node URLs: every reconnection attempt goes to the next node
in the list, so a service whose node was stopped is back on a survivor after one
attempt per dead node (RECONNECT_INTERVAL_S apart) and its channels and consumers are
restored there as they would be on the old one. Quorum queues are cluster-wide, so the
queues are the same ones, with the same messages.

How it hooks in (aio-pika 9-10, checked in robust_connection.py): each attempt of the
reconnect loop first sets ``transport = None`` and then connects to ``self.url``. So
``url`` is the current node and ``transport = None`` after the first attempt advances
it. tests/cluster/test_rabbit_failover.py proves the behaviour against a real cluster,
so an aio-pika upgrade that changes the loop fails there, not in production.
"""

from __future__ import annotations

import random
from typing import Any

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection, UnderlayConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

# Between attempts of the reconnect loop when there are several nodes: a dead node costs
# this much before the next one is tried; a few cheap TCP connects a second at most.
RECONNECT_INTERVAL_S = 1


class NodeRotatingConnection(RobustConnection):
    """A robust connection that reconnects to the next node of its list each attempt."""

    def __init__(self, urls: list[URL], start: int, **kwargs: Any) -> None:
        self._urls = list(urls)
        self._index = start % len(self._urls)
        self._attempted = False
        super().__init__(self._urls[self._index], **kwargs)

    @property
    def url(self) -> URL:
        return self._urls[self._index]

    @url.setter
    def url(self, value: URL) -> None:
        # Set by Connection.__init__, and by update_secret with a new password: the
        # nodes of one cluster share their users, so every URL gets it.
        value = URL(value)
        if value.password is not None and value.password != self._urls[self._index].password:
            self._urls = [url.with_password(value.password) for url in self._urls]
        self._urls[self._index] = value

    @property
    def transport(self) -> UnderlayConnection | None:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: UnderlayConnection | None) -> None:
        if value is None and "_transport" in self.__dict__:
            # A new attempt (or a close). The first attempt keeps the starting node;
            # every later one moves on: the node we had just went away, or the
            # previous attempt failed.
            if self._attempted:
                self._index = (self._index + 1) % len(self._urls)
            self._attempted = True
        self.__dict__["_transport"] = value

    @property
    def node_url(self) -> URL:
        """The node in use (or being tried), password hidden."""
        url = self.url
        return url.with_password("******") if url.password else url


def node_index(connection: AbstractRobustConnection) -> int | None:
    """Which of its URLs ``connection`` uses (None: a single-URL connection)."""
    return connection._index if isinstance(connection, NodeRotatingConnection) else None


async def connect(urls: list[str], *, start: int | None = None, **kwargs: Any) -> AbstractRobustConnection:
    """A robust connection to the first node that answers, starting at ``start`` or a
    random one so the services of a deployment spread over the nodes. One URL:
    aio-pika's own."""
    if len(urls) == 1:
        single: AbstractRobustConnection = await aio_pika.connect_robust(urls[0], **kwargs)
        return single
    if start is None:
        start = random.randrange(len(urls))
    error: BaseException | None = None
    for offset in range(len(urls)):
        connection = NodeRotatingConnection(
            [URL(url) for url in urls], start + offset, reconnect_interval=RECONNECT_INTERVAL_S, **kwargs
        )
        try:
            await connection.connect()
        except CONNECTION_EXCEPTIONS as exc:
            error = exc
            await connection.close()
            continue
        return connection
    assert error is not None
    raise error
