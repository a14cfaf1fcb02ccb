"""The physical baselines of the chat figures, measured in the same run.

* Bare confirmed publishes with aio-pika: persistent, mandatory, each awaiting the
  broker's confirm, into a durable quorum queue of the run's own vhost (the kind of
  queue Habla's consumers read), from as many tasks as there are visitors. What the
  frontend's "sent" costs at least.
* A bare slixmpp component: a strict client sends N lines to a ComponentXMPP that only
  records them, and the component sends N to the client. What the gateway's two
  directions cost at least. The stack's Prosody serves the gateway's component domain
  already (one connection per domain) and adding a domain needs a restart, so this
  runs on a Prosody started from the same generated config (tools/prosody.py: same
  binary, modules and network settings) on free ports, stopped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import time
import uuid

import aio_pika
from slixmpp import JID

from bench.bench_gateway import Echo
from bench.e2e_chat import SEND_BURST, StrictOperator, wait_until
from libs.common.settings import Settings
from tools import prosody, sandbox

# About a ChatMessage's Thrift size with a short line.
BODY = b"x" * 120


async def bare_publishes(settings: Settings, tasks: int, per_task: int) -> float:
    """Confirmed publishes/s from ``tasks`` concurrent publishers."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        name = f"bench-e2e.bare-{uuid.uuid4().hex[:6]}"
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind(exchange, routing_key="line")

        async def publish_all() -> None:
            for _ in range(per_task):
                message = aio_pika.Message(
                    BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=uuid.uuid4().hex
                )
                await exchange.publish(message, routing_key="line", mandatory=True)

        began = time.perf_counter()
        await asyncio.gather(*(publish_all() for _ in range(tasks)))
        rate = tasks * per_task / (time.perf_counter() - began)
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        return rate
    finally:
        await connection.close()


@dataclasses.dataclass
class ComponentRates:
    client_to_component: float
    component_to_client: float
    # rate -> (client -> component, component -> client) one-way latencies, ms
    paced: dict[float, tuple[list[float], list[float]]] = dataclasses.field(default_factory=dict)


async def bare_component(settings: Settings, lines: int, rates: list[float], seconds: float) -> ComponentRates:
    cfg = sandbox.prosody_config(settings)
    own = sandbox.with_prosody_ports(settings, cfg)
    process = await asyncio.to_thread(prosody.start, cfg)
    echo: Echo | None = None
    client: StrictOperator | None = None
    try:
        password = uuid.uuid4().hex[:12]
        await asyncio.to_thread(prosody.register, cfg, "bare", password)
        client = bare = await StrictOperator(f"bare@{own.xmpp_domain}", password, "127.0.0.1", cfg.c2s_port).start()
        echo = component = Echo(own)
        component.connect()
        await asyncio.wait_for(component.ready.wait(), 15)
        target = f"echo@{own.xmpp_component_domain}"

        began = time.perf_counter()  # Echo stamps arrivals with perf_counter
        for i in range(lines):
            bare.say(target, f"c{i}")
            if i % SEND_BURST == SEND_BURST - 1:
                await asyncio.sleep(0)
        await wait_until(lambda: len(component.arrivals) >= lines, 60, "lines at the bare component")
        to_component = lines / (max(component.arrivals.values()) - began)

        bodies = [f"e{i}" for i in range(lines)]
        began = time.monotonic()
        for i, body in enumerate(bodies):
            component.send_message(mto=JID(bare.jid), mbody=body, mtype="chat", mfrom=target)
            if i % SEND_BURST == SEND_BURST - 1:
                await asyncio.sleep(0)
        await wait_until(lambda: all(b in bare.arrived for b in bodies), 60, "lines at the bare client")
        to_client = lines / (max(bare.arrived[b] for b in bodies) - began)
        rates_found = ComponentRates(to_component, to_client)
        for rate in rates:
            rates_found.paced[rate] = await _paced(bare, component, target, rate, seconds)
        return rates_found
    finally:
        if client is not None:
            await client.stop()
        if echo is not None:
            echo.disconnect(wait=1.0)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(echo.disconnected, 5)
        await asyncio.to_thread(prosody.stop, process)
        shutil.rmtree(cfg.dir, ignore_errors=True)


async def _paced(
    bare: StrictOperator, component: Echo, target: str, rate: float, seconds: float
) -> tuple[list[float], list[float]]:
    """Both ways at once at ``rate`` lines/s, as e2e_chat.paced does through the suite."""
    tag = uuid.uuid4().hex[:6]
    to_component: dict[str, float] = {}  # perf_counter, as Echo stamps
    to_client: dict[str, float] = {}  # monotonic, as StrictOperator stamps
    start = time.monotonic()
    for i in range(max(1, round(rate * seconds))):
        if (delay := start + i / rate - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        to_component[f"pc {tag} {i}"] = time.perf_counter()
        bare.say(target, f"pc {tag} {i}")
        to_client[f"pe {tag} {i}"] = time.monotonic()
        component.send_message(mto=JID(bare.jid), mbody=f"pe {tag} {i}", mtype="chat", mfrom=target)
    await wait_until(lambda: all(b in component.arrivals for b in to_component), 60, "paced lines at the component")
    await wait_until(lambda: all(b in bare.arrived for b in to_client), 60, "paced lines at the client")
    return (
        [(component.arrivals[b] - t) * 1000 for b, t in to_component.items()],
        [(bare.arrived[b] - t) * 1000 for b, t in to_client.items()],
    )
