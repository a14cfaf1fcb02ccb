"""`make cluster`'s layout (tools/cluster.py): every service and server on a network-namespace
host of its own, brought up with the same tooling. One visitor -> operator -> visitor round
trip through the edge (HAProxy) with a strict XMPP client on the XMPP host, then teardown:
no namespace, link, process or temp folder of the layout is left."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import tornado.httpclient

from tests.chat_load import Visitor
from tests.im_gateway.operator_client import OperatorClient
from tools import cluster, netns

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


async def _round_trip(layout: cluster.Layout) -> None:
    assert layout.settings is not None
    demo = layout.demo
    operator = OperatorClient(
        demo["operator_jid"], demo["operator_password"], layout.address("xmpp"), layout.settings.xmpp_c2s_port
    )
    assert operator.xmpp.auto_authorize is None and operator.xmpp.auto_subscribe is False  # the strict client
    await operator.start()
    http = tornado.httpclient.AsyncHTTPClient()
    stop = asyncio.Event()
    try:
        # The visitor reaches only the edge: HAProxy picks a frontend host.
        visitor = Visitor(0, demo["site_id"], layout.settings.public_url, http)
        await visitor.start()
        await asyncio.wait_for(visitor.send(0), 120)
        line = await operator.wait_for(lambda r: r.kind == "message" and r.body == "v0-0", within=120)
        assert line.sender.split("/")[0].endswith("chat.localhost")  # from its partition's domain
        receiving = asyncio.create_task(visitor.receive(stop))
        operator.say(line.sender.split("/")[0], "hello from the operator", stanza_id="o-1")
        deadline = time.monotonic() + 120
        while visitor.shown["hello from the operator"] == 0:
            assert time.monotonic() < deadline, f"the answer never reached the visitor: {visitor.shown}"
            assert not receiving.done(), receiving
            await asyncio.sleep(0.2)
        assert visitor.shown["hello from the operator"] == 1
        assert not [r for r in operator.received if r.kind == "message" and r.error]  # nothing bounced
        stop.set()
        await asyncio.wait_for(receiving, 60)
    finally:
        stop.set()
        http.close()
        await operator.stop()


def test_round_trip_through_the_edge_then_nothing_left() -> None:
    layout = cluster.up()
    tag = layout.net.tag
    try:
        assert len(layout.net.hosts) == len(cluster.HOSTS)
        asyncio.run(_round_trip(layout))
        pids = layout.net.pids()
        assert pids, "nothing runs in the hosts' namespaces"
        folders = [layout.dir, *layout.folders]
    finally:
        layout.close()
    assert netns.leftovers(tag) == []
    assert netns.alive(pids) == []
    assert [folder for folder in folders if folder.exists()] == []
