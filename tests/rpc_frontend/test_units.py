"""Pure logic of the frontend: origins, delivery events, asset sizes, the snippet, pages."""

from __future__ import annotations

import gzip
import json
import re

import pytest
import tornado.httpclient

from libs.common import codec, snippets
from services.rpc_frontend.delivery import events_for
from services.rpc_frontend.handlers.pages import Assets, script_json
from services.rpc_frontend.origins import origin_allowed
from tests.rpc_frontend.conftest import RunningFrontend

# The budgets: loader "well under 2 KB", widget "under 60 KB", both gzipped.
LOADER_BUDGET_BYTES = 1024
WIDGET_BUDGET_BYTES = 60 * 1024


@pytest.mark.parametrize(
    ("origin", "domains", "allowed"),
    [
        (None, ["shop.example"], True),  # not a cross-site browser request
        ("https://shop.example", ["shop.example"], True),
        ("http://www.shop.example:8000", ["shop.example"], True),
        ("https://SHOP.example", ["shop.example."], True),
        ("https://evilshop.example", ["shop.example"], False),
        ("https://shop.example.evil.example", ["shop.example"], False),
        ("null", ["shop.example"], False),
        ("null", [], False),
        ("https://anything.example", [], True),
        ("http://127.0.0.1:8080", ["shop.example"], True),  # our own pages
        ("javascript:alert(1)", [], False),
        ("https://shop.example", ["https://shop.example/"], True),  # owners paste URLs too
        ("https://shop.example", ["shop.example:8443"], True),
    ],
)
def test_origin_allowed(origin: str | None, domains: list[str], allowed: bool) -> None:
    assert origin_allowed(origin, "127.0.0.1:8080", domains) is allowed


def test_deliveries_become_widget_events() -> None:
    message = codec.ChatMessage(
        message_id="m", conversation_id="c", site_id="s", visitor_id="v", sender=2, body="hi", sent_at_ms=1, seq=3
    )
    assert events_for(codec.VisitorDelivery(visitor_id="v", site_id="s", conversation_id="c", message=message)) == [
        {"type": "log", "conversation_id": "c"}
    ]

    def action(name: str, value: str | None = None) -> list[dict[str, object]]:
        act = codec.OperatorAction(
            action_id="a",
            conversation_id="c",
            site_id="s",
            visitor_id="v",
            operator_jid="o@x",
            action=name,
            value=value,
            at_ms=1,
        )
        return events_for(codec.VisitorDelivery(visitor_id="v", site_id="s", action=act))

    assert action("typing") == [{"type": "typing", "typing": True}]
    assert action("stopped_typing") == [{"type": "typing", "typing": False}]
    assert action("push", "https://shop.example/sale") == [{"type": "push", "url": "https://shop.example/sale"}]
    assert action("ended") == [{"type": "ended", "conversation_id": "c"}, {"type": "log", "conversation_id": "c"}]
    assert action("block") == []  # operators' business, not the visitor's
    # A receipt is an entry in the log: the widget reads it from there (its tick).
    assert action("received", "line-1") == [{"type": "log", "conversation_id": "c"}]
    status = codec.SiteStatus(site_id="s", online=True, operators_available=2, at_ms=1)
    assert events_for(codec.VisitorDelivery(visitor_id="v", site_id="s", site_status=status)) == [
        {"type": "status", "online": True, "operators_available": 2}
    ]


def test_loader_and_widget_fit_their_size_budgets() -> None:
    assets = Assets.load("https://chat.habla.example")
    loader, widget = len(gzip.compress(assets.loader, 9)), len(gzip.compress(assets.widget_js, 9))
    print(f"embed.js {loader} B gzipped, widget.js (with CSS) {widget} B gzipped")
    assert loader < LOADER_BUDGET_BYTES
    assert widget < WIDGET_BUDGET_BYTES
    assert b"__HABLA_" not in assets.loader + assets.widget_js  # every placeholder filled
    assert b'"https://chat.habla.example"' in assets.loader


def test_script_json_cannot_close_a_script_element() -> None:
    text = script_json({"site": "</script><script>alert(1)</script>", "x": "<!--"})
    assert "<" not in text and ">" not in text
    assert json.loads(text)["site"] == "</script><script>alert(1)</script>"


def test_snippet_defines_the_queue_and_loads_from_a_frame() -> None:
    html = snippets.embed_snippet("https://chat.example/", "4324-24618-10-8812")
    assert "w.habla.site=id" in html and "(w.habla.q=w.habla.q||[]).push(arguments)" in html
    assert '"https://chat.example"' in html and "/embed.js" in html
    assert re.search(r"createElement\('iframe'\)", html)
    quoted = snippets.embed_snippet("https://x.example/</script>", "4324-24618-10-8812")
    assert "</script>\n</script>" not in quoted and quoted.count("</script>") == 1


async def test_assets_pages_and_openapi_are_served(fe: RunningFrontend, site_id: str) -> None:
    client = tornado.httpclient.AsyncHTTPClient()

    async def get(path: str) -> tornado.httpclient.HTTPResponse:
        return await client.fetch(f"{fe.url}{path}", raise_error=False, headers={"Accept-Encoding": "gzip"})

    loader = await get("/embed.js")
    assert loader.code == 200 and loader.headers["Content-Type"].startswith("text/javascript")
    assert "max-age=300" in loader.headers["Cache-Control"]
    version = re.search(rb"widget\.js\?v=([0-9a-f]+)", loader.body)
    assert version
    widget = await get(f"/widget.js?v={version.group(1).decode()}")
    assert widget.code == 200 and "immutable" in widget.headers["Cache-Control"]
    spec = json.loads((await get("/openapi.json")).body)
    assert spec["openapi"].startswith("3.") and "/api/sites/{site_id}/messages" in spec["paths"]
    for path in (f"/chat/{site_id}", f"/preview/{site_id}", f"/demo?site={site_id}"):
        page = await get(path)
        assert page.code == 200 and b"<!doctype html>" in page.body.lower(), path
    assert snippets.embed_snippet(fe.settings.public_url, site_id).encode() in (await get(f"/demo?site={site_id}")).body
    missing = await get("/chat/1111-22222-33-4444")
    assert missing.code == 404 and b"no site 1111-22222-33-4444" in missing.body
    health = await get("/healthz")
    assert health.code == 200 and json.loads(health.body)["checks"] == {
        "redis": "ok",
        "rabbitmq": "ok",
        "serving": "ok",
    }
    assert (await get("/nope")).code == 404
