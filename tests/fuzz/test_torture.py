"""Unicode torture strings through every visitor field, to the widget, the email and
the console: accepted byte-exact or refused with a clear 400, never a 5xx, and shown
as text (HTML-escaped) everywhere a person sees them."""

from __future__ import annotations

import html
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import markupsafe
import sqlalchemy as sa

from libs.common import codec
from libs.common.db import site_store
from libs.common.sitedir import SiteConfig
from services.transcript_worker import rendering
from tests.console.conftest import Client, client, console_server, text  # noqa: F401 (fixtures)
from tests.console.test_conversations import archive_conversation
from tests.fuzz.conftest import FuzzTarget

MARKUP = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</textarea><b>x</b>", "&lt;&amp;"]
TORTURE = [
    *MARKUP,
    "\u202eRTL override\u202c",
    "Z\u0351\u0364\u0301a\u0302\u0313l\u0360g\u0347o" * 3,  # stacked combining marks
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family \U0001f3f3\ufe0f\u200d\U0001f308",
    "\ufeffBOM\u200b zero\u2060width\u00a0nbsp",
    "\U0001d573\U0001d58a\U0001d591\U0001d591\U0001d594 astral",
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd mixed bidi",
    "line\nbreak\r\nand\ttab",
    "\x00\x01\x07\x1b[31m ANSI and C0",
    "\u2028\u2029 separators",
    "{{7*7}} ${7*7} %s%n %(x)s",
    "'; DROP TABLE messages; --",
    "\U0010ffff\ufffe\uffff nonchars",
    "e\u0301 vs \u00e9",
    "x" * 1999,
]


def _call(target: FuzzTarget, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{target.url}/api/sites/{target.site_id}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_torture_strings_round_trip_through_the_api(fuzz_target: FuzzTarget) -> None:
    status, visitor = _call(fuzz_target, "POST", "/session", {"page": {"url": "http://127.0.0.1/t", "title": "t"}})
    assert status == 200
    token = visitor["token"]
    sent: dict[int, str] = {}
    requests = 0
    for n, torture in enumerate(TORTURE):
        for path, body in (
            ("/session", {"token": token, "page": {"url": f"http://127.0.0.1/{n}", "title": torture}}),
            ("/pageview", {"token": token, "page": {"url": "http://127.0.0.1/?q=" + torture, "referrer": torture}}),
            ("/visitor", {"token": token, "name": torture[:200], "phone": torture[:200]}),
            (
                "/offline",
                {"message_id": f"torture-{n:04d}", "name": torture[:200], "email": "a@b.example", "body": torture},
            ),
            ("/messages", {"token": token, "message_id": f"torture-line-{n:04d}", "body": torture}),
        ):
            status, answer = _call(fuzz_target, "POST", path, body)
            requests += 1
            assert status in (200, 400), (path, torture, status, answer)
            if status == 400:
                assert answer["error"], answer
            elif path == "/messages":
                sent[answer["seq"]] = torture
    assert sent, "no line was accepted"
    status, log = _call(fuzz_target, "GET", f"/messages?token={token}&after=0")
    assert status == 200
    shown = {entry["seq"]: entry["body"] for event in log["events"] for entry in event["entries"] if "seq" in entry}
    for seq, torture in sent.items():
        assert shown.get(seq) == torture  # byte-exact: nothing dropped, doubled or normalised
    assert fuzz_target.alive() and fuzz_target.server_errors_logged() == []
    print(f"torture: {requests} requests, {len(sent)} lines round-tripped, 0 server errors")


def test_the_widget_only_ever_writes_text() -> None:
    """The widget renders every string with textContent/attributes: no HTML sink at all."""
    source = (Path(__file__).resolve().parents[2] / "services/rpc_frontend/static/widget.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source, sink


def test_site_names_are_escaped_on_the_hosted_pages(fuzz_target: FuzzTarget, engine: sa.Engine) -> None:
    for torture in MARKUP:
        with engine.begin() as conn:
            account = site_store.account_for_email(conn, "torture@shop.example")
            site_id = site_store.create_site(conn, account, torture).id
        for path in (f"/chat/{site_id}", f"/preview/{site_id}", f"/demo?site={site_id}"):
            with urllib.request.urlopen(fuzz_target.url + path, timeout=30) as response:
                page = response.read().decode()
            assert torture not in page and html.escape(torture) in page, (path, torture)


def test_the_email_shows_torture_as_text() -> None:
    site = SiteConfig("4324-24618-10-8812", "Shop", {}, [], ["owner@shop.example"], [("ana@example.org", "Ana")])
    for torture in TORTURE:
        note = codec.OfflineMessage(
            message_id=f"n-{uuid.uuid4().hex}",
            site_id=site.site_id,
            visitor_id="v1",
            name=torture[:200],
            email="bob@visitor.example",
            body=torture,
            sent_at_ms=1_790_000_000_000,
            page_url="http://shop.example/?q=" + torture,
        )
        outgoing = rendering.offline_email(note, site, "transcripts@habla.example")
        assert b"\r\nBcc:" not in outgoing.data  # no header injection, no encoding failure
        mail = outgoing.parsed()
        assert not mail.defects and mail["Reply-To"].addresses[0].addr_spec == "bob@visitor.example"
        body_html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
        for markup in MARKUP:
            if markup in torture:
                assert markup not in body_html


async def test_the_console_shows_torture_as_text(client: Client, engine: sa.Engine) -> None:  # noqa: F811
    site_id = await client.sign_up()
    lines = [("visitor", torture, False) for torture in TORTURE] + [("operator", m, True) for m in MARKUP]
    for markup in MARKUP:
        conversation_id = archive_conversation(engine, site_id, lines, visitor_name=markup)
        listing = text(await client.get(f"/account/sites/{site_id}/conversations"))
        assert markup not in listing and str(markupsafe.escape(markup)) in listing
        page = await client.get(f"/account/sites/{site_id}/conversations/{conversation_id}")
        assert page.code == 200
        for torture in MARKUP:
            assert torture not in text(page)
