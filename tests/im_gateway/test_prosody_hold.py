"""mod_habla_hold (deploy/prosody-modules): stanzas to a component domain wait, in order,
while no component stream is connected, instead of bouncing.

Against a real Prosody of each test's own (tools/prosody.py, ~50 ms to start), a bare
slixmpp component standing in for a gateway process and a strict operator client: the
component connects, goes away (its socket aborted, as a SIGKILL leaves it), the operator
writes to a visitor JID of the domain during the gap, and the next component stream
gets every line, first and in order, while the client sees no error. The same scenario
without the module is the control: Prosody bounces every line ("Component unavailable").
Also: a stanza held past ``habla_hold_seconds`` is bounced as Prosody would; beyond the
caps (stanzas, per sender, bytes) the extra ones bounce at once; a component handing its
domain over asks for the hold while still connected (services.im_gateway.component).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError

from services.im_gateway import component as gateway_component
from services.im_gateway.component import HOLD_NS, GatewayComponent
from tests.im_gateway.operator_client import OperatorClient
from tools import ejabberd, prosody

SECRET = "hold-test-secret"
# How long a test waits for something to happen before it fails: a deadline, generous
# so a loaded machine does not fail a test that works (no test here asserts speed).
DEADLINE_S = 30.0
# A hold time no test outlives: a bounce seen under it came from something else (a cap,
# the module unloading), not from the hold running out.
HOLD_FOREVER_S = 3600


class Component:
    """A bare component: records the bodies it gets, in arrival order."""

    def __init__(self, cfg: prosody.ProsodyConfig) -> None:
        self.xmpp = ComponentXMPP(cfg.component_domain, SECRET, "127.0.0.1", cfg.component_port)  # type: ignore[no-untyped-call]
        self.bodies: list[str] = []
        self.first: str = ""  # the first stanza's kind and body, after the handshake
        self._up = asyncio.Event()
        self.xmpp.add_event_handler("session_start", lambda _e: self._up.set())
        self.xmpp.add_event_handler("message", self._on_message)

    def _on_message(self, msg: Any) -> None:
        if msg["body"]:
            self.bodies.append(msg["body"])

    async def connect(self) -> Component:
        self.xmpp.connect()
        await asyncio.wait_for(self._up.wait(), DEADLINE_S)
        return self

    def kill(self) -> None:
        """What a SIGKILL leaves: the socket closes, no stream close."""
        assert self.xmpp.transport is not None
        self.xmpp.transport.abort()


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="habla-hold-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def server(
    folder: Path, *, hold: bool = True, shell: bool = False, **options: int | float
) -> AsyncIterator[tuple[prosody.ProsodyConfig, list[OperatorClient]]]:
    """A Prosody (with or without the module, with its options) and two logged-in operators."""
    cfg = prosody.ProsodyConfig(
        dir=folder,
        domain="hold.test",
        component_domain="chat.hold.test",
        component_secret=SECRET,
        c2s_port=prosody.free_port(),
        component_port=prosody.free_port(),
        privileged=False,
        hold=hold,
        hold_options=tuple(options.items()),
        extra_modules=("admin_shell",) if shell else (),
    )
    process = await asyncio.to_thread(prosody.start, cfg)
    operators: list[OperatorClient] = []
    try:
        for n in range(2):
            user, password = f"op{n}", uuid.uuid4().hex[:12]
            await asyncio.to_thread(prosody.register, cfg, user, password)
            client = OperatorClient(f"{user}@{cfg.domain}", password, "127.0.0.1", cfg.c2s_port)
            client.xmpp.auto_authorize = False  # strict, as a real client
            operators.append(await client.start())
        yield cfg, operators
    finally:
        for client in operators:
            await client.stop()
        await asyncio.to_thread(prosody.stop, process)


def errors(client: OperatorClient) -> list[tuple[str, str]]:
    return [(r.stanza_id, r.error) for r in client.received if r.kind == "message" and r.error]


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def say(client: OperatorClient, cfg: prosody.ProsodyConfig, lines: list[str]) -> None:
    for body in lines:
        client.say(f"amber-otter-412@{cfg.component_domain}", body, stanza_id=body, receipt=True)


@pytest.mark.parametrize("hold", [True, False], ids=["with-module", "without-module"])
async def test_lines_sent_while_no_component_is_connected_reach_the_next_one_in_order(folder: Path, hold: bool) -> None:
    async with server(folder, hold=hold) as (cfg, (operator, _)):
        first = await Component(cfg).connect()
        say(operator, cfg, ["before"])
        await until(lambda: first.bodies == ["before"], "the first component got the line")
        first.kill()
        await asyncio.sleep(0.3)  # Prosody has seen the socket close
        gap = [f"gap-{n}" for n in range(20)]
        say(operator, cfg, gap)
        await asyncio.sleep(1.5)  # a takeover's gap (2-3 s after a SIGKILL in production)
        if not hold:
            # The control: Prosody bounces each of them, "Component unavailable".
            await until(lambda: len(errors(operator)) == len(gap), f"bounced: {errors(operator)}")
            assert {e for _, e in errors(operator)} == {"remote-server-timeout"}
            return
        assert errors(operator) == [], "a line bounced while no component was connected"
        second = await Component(cfg).connect()
        say(operator, cfg, ["after"])
        await until(lambda: len(second.bodies) == len(gap) + 1, f"second component got {second.bodies}")
        assert second.bodies == [*gap, "after"], "held lines first, in order, each once"
        await asyncio.sleep(0.3)
        assert errors(operator) == []
        assert first.bodies == ["before"]


async def test_a_line_held_past_the_hold_time_bounces_as_prosody_would(folder: Path) -> None:
    async with server(folder, habla_hold_seconds=1) as (cfg, (operator, _)):
        (await Component(cfg).connect()).kill()
        await asyncio.sleep(0.3)
        sent = time.monotonic()
        say(operator, cfg, ["late-1", "late-2"])
        await asyncio.sleep(0.6)
        assert errors(operator) == [], "bounced before the hold time"
        await until(lambda: len(errors(operator)) == 2, "held lines bounced after the hold time")
        # A lower bound, not a speed: held at least the hold time (load only lengthens it).
        assert time.monotonic() - sent >= 1.0
        assert errors(operator) == [("late-1", "remote-server-timeout"), ("late-2", "remote-server-timeout")]
        component = await Component(cfg).connect()
        say(operator, cfg, ["fresh"])
        await until(lambda: component.bodies == ["fresh"], f"got {component.bodies}")


async def test_beyond_its_caps_the_hold_bounces_at_once_and_keeps_what_it_holds(folder: Path) -> None:
    async with server(
        folder,
        habla_hold_seconds=HOLD_FOREVER_S,
        habla_hold_max_stanzas=5,
        habla_hold_max_per_sender=3,
        habla_hold_max_bytes_per_sender=4096,
    ) as (cfg, (first, second)):
        (await Component(cfg).connect()).kill()
        await asyncio.sleep(0.3)
        say(first, cfg, ["a1", "a2", "a3", "a4", "a5"])  # 3 held (per sender), 2 bounced
        await until(lambda: len(errors(first)) == 2, f"first operator's bounces: {errors(first)}")
        say(second, cfg, ["x" * 5000])  # larger than a sender may have held: bounced
        say(second, cfg, ["b1", "b2", "b3"])  # 2 held (5 in all), 1 bounced
        await until(lambda: len(errors(second)) == 2, f"second operator's bounces: {errors(second)}")
        # By the caps: the hold time does not run out in this test.
        assert [i for i, _ in errors(first)] == ["a4", "a5"]
        assert [i for i, _ in errors(second)] == ["x" * 5000, "b3"]
        assert {e for _, e in errors(first) + errors(second)} == {"remote-server-timeout"}
        component = await Component(cfg).connect()
        await until(lambda: len(component.bodies) == 5, f"got {component.bodies}")
        assert component.bodies == ["a1", "a2", "a3", "b1", "b2"]
        await asyncio.sleep(0.3)
        assert len(errors(first)) == len(errors(second)) == 2


async def test_unloading_the_module_bounces_what_it_holds(folder: Path) -> None:
    async with server(folder, shell=True, habla_hold_seconds=HOLD_FOREVER_S) as (cfg, (operator, _)):
        (await Component(cfg).connect()).kill()
        await asyncio.sleep(0.3)
        say(operator, cfg, ["held-1", "held-2"])
        await asyncio.sleep(0.5)
        assert errors(operator) == []
        unloaded = await asyncio.to_thread(
            subprocess.run,
            ["prosodyctl", "--config", str(cfg.config_file), "shell",
             f"module:unload('habla_hold', '{cfg.component_domain}')"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "unloaded from 1 host" in unloaded.stdout, unloaded.stdout + unloaded.stderr
        # By the unload: the hold time does not run out in this test.
        await until(lambda: len(errors(operator)) == 2, f"bounced on unload: {errors(operator)}")
        assert errors(operator) == [("held-1", "remote-server-timeout"), ("held-2", "remote-server-timeout")]


async def test_a_component_handing_over_asks_for_the_hold_before_it_closes(folder: Path) -> None:
    async with server(folder) as (cfg, (operator, _)):
        giver = await Component(cfg).connect()
        # Nobody but the connected component may ask (an operator tries it first).
        iq = operator.xmpp.make_iq_set(ito=cfg.component_domain)
        iq.xml.append(iq.xml.makeelement(f"{{{HOLD_NS}}}hold", {}))
        with pytest.raises(IqError) as refused:
            await iq.send(timeout=DEADLINE_S)  # type: ignore[no-untyped-call]
        assert refused.value.iq["error"]["condition"] == "forbidden"
        say(operator, cfg, ["before"])
        await until(lambda: giver.bodies == ["before"], "the giver got the line")
        iq = giver.xmpp.make_iq_set(ito=cfg.component_domain, ifrom=cfg.component_domain)
        iq.xml.append(iq.xml.makeelement(f"{{{HOLD_NS}}}hold", {}))
        await iq.send(timeout=DEADLINE_S)  # type: ignore[no-untyped-call]
        say(operator, cfg, ["during-1", "during-2"])
        # The giver still gets answers to its own requests (its barrier pings).
        ping = giver.xmpp.make_iq_get(ito=cfg.domain, ifrom=cfg.component_domain)
        ping.xml.append(ping.xml.makeelement("{urn:xmpp:ping}ping", {}))
        await ping.send(timeout=DEADLINE_S)  # type: ignore[no-untyped-call]
        await asyncio.sleep(0.3)
        assert giver.bodies == ["before"], "nothing routed after the hold reaches the giver"
        giver.xmpp.disconnect()
        await asyncio.sleep(0.3)
        receiver = await Component(cfg).connect()
        await until(lambda: receiver.bodies == ["during-1", "during-2"], f"got {receiver.bodies}")
        assert errors(operator) == []


@pytest.mark.parametrize("hold", [True, False], ids=["with-module", "without-module"])
async def test_the_gateway_knows_whether_the_server_holds_for_it(folder: Path, hold: bool) -> None:
    """GatewayComponent.ask_hold: granted by the module; without it (as on ejabberd) the
    request comes back to the component itself, is answered feature-not-implemented, and
    the gateway refuses new lines while it stops, as before."""
    async with server(folder, hold=hold) as (cfg, _):
        assert await _gateway_asks_hold(cfg.component_domain, cfg.component_port, cfg.domain) is hold


async def test_on_ejabberd_the_gateway_knows_there_is_no_hold(folder: Path) -> None:
    """ejabberd has no such module: the request is refused quickly (no 2 s timeout added
    to every handover), and the gateway keeps refusing new lines while it stops."""
    if not ejabberd.available():
        pytest.skip("ejabberd is not installed (scripts/setup.sh installs Debian's)")
    cfg = ejabberd.EjabberdConfig(
        dir=folder,
        domain="hold.test",
        component_domain="chat.hold.test",
        component_secret=SECRET,
        c2s_port=ejabberd.free_port(),
        component_port=ejabberd.free_port(),
        http_port=ejabberd.free_port(),
        privileged=False,
    )
    process = await asyncio.to_thread(ejabberd.start, cfg)
    try:
        assert await _gateway_asks_hold(cfg.component_domain, cfg.component_port, cfg.domain) is False
    finally:
        await asyncio.to_thread(ejabberd.stop, process, cfg)


async def _gateway_asks_hold(domain: str, port: int, server_domain: str) -> bool:
    """A gateway's GatewayComponent.ask_hold against the server on ``port``: its answer,
    which must be an answer (granted or refused), not ask_hold's timeout running out.
    HOLD_TIMEOUT_S is made longer than the test's deadline, so an unanswered request
    fails the test instead of passing for a refusal."""
    gateway = GatewayComponent(domain, SECRET, "127.0.0.1", port, server=server_domain)
    gateway.connect()
    try:
        await asyncio.wait_for(gateway.ready.wait(), DEADLINE_S)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gateway_component, "HOLD_TIMEOUT_S", HOLD_FOREVER_S)
            try:
                return await asyncio.wait_for(gateway.ask_hold(), DEADLINE_S)
            except TimeoutError:
                raise AssertionError(f"the hold request got no answer in {DEADLINE_S} s") from None
    finally:
        await gateway.stop()
