"""Issue 11's reproductions against the frontend: each gets a clear 4xx (never a 5xx)
and the service answers normally afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import tornado.httpclient
import tornado.httpserver
import tornado.testing
import tornado.websocket

from libs.common.settings import Settings
from libs.common.web import http_server_options
from services.rpc_frontend.app import make_app
from tests.rpc_frontend.conftest import Api, RunningFrontend, StartFrontend

SURROGATE = '"\\ud800"'  # a lone surrogate, as JSON escapes it (valid JSON, not valid text)


async def assert_healthy(api: Api) -> None:
    """The service still does its job after the hostile request."""
    visitor = await api.session()
    sent = await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": "healthy-0001", "body": "hi"})
    assert sent["seq"] >= 1


def error_of(response: tornado.httpclient.HTTPResponse) -> dict[str, Any]:
    assert 400 <= response.code < 500, (response.code, response.body)
    body: dict[str, Any] = json.loads(response.body)
    assert body["error"] and body["status"] == response.code
    return body


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/messages", '{"token": TOKEN, "message_id": "lone-surrogate-1", "body": SURROGATE}'),
        ("/visitor", '{"token": TOKEN, "name": SURROGATE}'),
        ("/session", '{"token": TOKEN, "page": {"url": "http://127.0.0.1/", "title": SURROGATE}}'),
        (
            "/offline",
            '{"message_id": "lone-surrogate-2", "name": SURROGATE, "email": "a@b.example", "body": "hello"}',
        ),
    ],
)
async def test_lone_surrogate_is_a_400(api: Api, path: str, template: str) -> None:
    visitor = await api.session()
    raw = template.replace("TOKEN", json.dumps(visitor["token"])).replace("SURROGATE", SURROGATE)
    response = await api.call("POST", path, raw=raw.encode())
    assert response.code == 400, (response.code, response.body)
    assert "text" in error_of(response)["error"]
    await assert_healthy(api)


async def test_deeply_nested_body_is_a_400(api: Api) -> None:
    response = await api.call("POST", "/messages", raw=b"[" * 30_000)
    assert response.code == 400
    error_of(response)
    await assert_healthy(api)


async def test_garbage_origin_is_a_403(api: Api) -> None:
    response = await api.call("GET", "/status", headers={"Origin": "http://["})
    assert response.code == 403
    error_of(response)
    await assert_healthy(api)


@pytest.mark.parametrize("after", ["9223372036854775807", "-1", "1e3", "abc", "٣"])
async def test_absurd_after_is_a_400(api: Api, after: str) -> None:
    visitor = await api.session()
    sent = await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": "absurd-after-1", "body": "x"})
    for path in ("/messages", "/poll"):
        response = await api.call(
            "GET", f"{path}?token={visitor['token']}&conversation_id={sent['conversation_id']}&after={after}"
        )
        assert response.code == 400, (path, response.code, response.body)
        assert "after" in error_of(response)["error"]
    await assert_healthy(api)


@pytest.mark.parametrize("token", ["x.é", "é", "\u00ff.\u00ff", "a" * 5000, ".", "x." + "0" * 32])
async def test_odd_token_is_a_401(api: Api, token: str) -> None:
    response = await api.call("POST", "/typing", {"token": token, "typing": True})
    assert response.code == 401, (response.code, response.body)
    error_of(response)
    await assert_healthy(api)


@pytest.mark.parametrize("message_id", ["abcdefgh\n", "abcdefgh\r", "\nabcdefgh", "abcdefg\u0663"])
async def test_message_id_must_match_whole(api: Api, message_id: str) -> None:
    visitor = await api.session()
    response = await api.call("POST", "/messages", {"token": visitor["token"], "message_id": message_id, "body": "x"})
    assert response.code == 400
    assert "message_id" in error_of(response)["error"]


@pytest.mark.parametrize("site", ["١٢٣٤-١٢٣٤٥-١٢-١٢٣٤", "1234-12345-12-1234%0A"])
async def test_unicode_digit_site_id_is_a_404(fe: RunningFrontend, api: Api, site: str) -> None:
    response = await Api(fe.url, site).call("GET", "/status")
    assert response.code == 404
    assert "site id" in error_of(response)["error"]
    await assert_healthy(api)


@pytest.mark.parametrize(("method", "path"), [("PUT", "/session"), ("DELETE", "/messages"), ("PATCH", "/status")])
async def test_wrong_method_is_a_405_with_allow(api: Api, method: str, path: str) -> None:
    response = await api.call(method, path, raw=b"{}" if method != "DELETE" else None)
    assert response.code == 405
    error_of(response)
    allow = {m.strip() for m in response.headers["Allow"].split(",")}
    assert method not in allow and "OPTIONS" in allow


async def test_wrong_method_on_a_page_is_a_405_with_allow(fe: RunningFrontend, api: Api) -> None:
    client = tornado.httpclient.AsyncHTTPClient()
    for path in ("/embed.js", "/preview/" + api.site_id, "/api/sites/" + api.site_id + "/ws"):
        response = await client.fetch(f"{fe.url}{path}", method="POST", body=b"", raise_error=False)
        assert response.code == 405, path
        assert "GET" in response.headers["Allow"]
    await assert_healthy(api)


async def test_websocket_frames_of_every_kind_get_answers(fe: RunningFrontend, api: Api) -> None:
    visitor = await api.session()
    url = fe.url.replace("http", "ws") + f"/api/sites/{api.site_id}/ws?token={visitor['token']}"
    socket = await tornado.websocket.websocket_connect(url)
    frames: list[str | bytes] = [
        b"\xff\xfe\x00",  # binary, not UTF-8
        b'{"type": "ping"}',  # binary but fine
        "[" * 30_000,
        '{"type": "send", "message_id": "ws-surrogate-1", "body": ' + SURROGATE + "}",
        '{"type": {"nested": []}}',
        '{"type": "send", "message_id": ["x"], "body": {"a": 1}}',
        '{"type": "typing", "typing": "yes"}',
        "null",
        "1e999999",
    ]
    for frame in frames:
        await socket.write_message(frame, binary=isinstance(frame, bytes))
    await socket.write_message(json.dumps({"type": "ping"}))
    errors = 0
    while True:
        reply = await socket.read_message()
        assert reply is not None, "the server closed the socket"
        event = json.loads(reply)
        if event["type"] == "error":
            assert 400 <= event["status"] < 500, event
            errors += 1
        if event["type"] == "pong" and errors >= len(frames) - 1:
            break
    socket.close()
    await assert_healthy(api)


# --- limits before work ---------------------------------------------------------------------
@contextlib.contextmanager
def counting_statements(engine: sa.Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


def own_prefix(settings: Settings) -> str:
    """Counters of this test alone (every test asks from 127.0.0.1); they expire in a minute."""
    return f"{settings.redis_prefix}{uuid.uuid4().hex[:8]}:"


async def test_a_scan_of_unknown_site_ids_is_refused_before_mysql(
    start_frontend: StartFrontend, engine: sa.Engine, settings: Settings
) -> None:
    fe = await start_frontend("scan", ip_unknown_sites_per_min=5, redis_prefix=own_prefix(settings))
    codes = []
    with counting_statements(engine) as statements:
        for n in range(30):  # distinct ids: the "no such site" cache cannot help
            codes.append((await Api(fe.url, f"9{n:03d}-00000-00-0000").call("GET", "/status")).code)
    assert codes[:5] == [404] * 5 and set(codes[5:]) == {429}, codes
    assert len(statements) <= 5 * 2, statements  # at most the misses let through (site + operators)


async def test_the_per_ip_limit_comes_before_any_lookup(
    start_frontend: StartFrontend, engine: sa.Engine, settings: Settings
) -> None:
    fe = await start_frontend("ipfirst", ip_requests_per_min=3, redis_prefix=own_prefix(settings))
    with counting_statements(engine) as statements:
        codes = [(await Api(fe.url, f"8{n:03d}-00000-00-0000").call("GET", "/status")).code for n in range(10)]
    assert codes == [404] * 3 + [429] * 7
    assert len(statements) <= 3 * 2


async def test_page_views_are_limited_per_visitor(start_frontend: StartFrontend, site_id: str) -> None:
    fe = await start_frontend("pv", visitor_pageviews_per_min=5)
    api = Api(fe.url, site_id)
    visitor = await api.session()
    codes = []
    for n in range(10):
        page = {"url": f"http://127.0.0.1/p{n}", "title": "p"}
        codes.append((await api.call("POST", "/pageview", {"token": visitor["token"], "page": page})).code)
    assert codes.count(200) == 5 and codes[-1] == 429, codes
    # A session call that records a page counts against the same visitor.
    response = await api.call("POST", "/session", {"token": visitor["token"], "page": {"url": "http://127.0.0.1/x"}})
    assert response.code == 429


# --- what leaks, who frames, who dawdles ------------------------------------------------------
async def test_visitor_tokens_never_reach_the_access_log(
    fe: RunningFrontend, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tornado.access")
    visitor = await api.session()
    token = visitor["token"]
    await api.ok("GET", f"/messages?token={token}&after=0")
    await api.call("GET", f"/poll?conversation_id=&token={token}x&after=0")  # a 401, logged as a warning
    socket = await tornado.websocket.websocket_connect(
        fe.url.replace("http", "ws") + f"/api/sites/{api.site_id}/ws?token={token}"
    )
    socket.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any("/messages?token=…&after=0" in line for line in lines), lines
    assert any(" 401 " in f" {line} " for line in lines), lines
    visitor_id = token.partition(".")[0]
    assert not [line for line in lines if visitor_id in line], lines


async def test_only_the_console_may_frame_the_preview(fe: RunningFrontend, api: Api) -> None:
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(f"{fe.url}/preview/{api.site_id}")
    console = fe.settings.console_public_url.rstrip("/")
    assert response.headers["Content-Security-Policy"] == f"frame-ancestors {console}"
    assert f'"console_origin": "{console}"' in response.body.decode()


async def test_slow_clients_are_cut_off(api: Api, fe: RunningFrontend) -> None:
    """A request head or body that never finishes is closed (timeouts shortened here)."""
    server = tornado.httpserver.HTTPServer(make_app(fe.frontend), **http_server_options(1024, idle_s=0.5, body_s=0.5))
    sock, port = tornado.testing.bind_unused_port()
    server.add_sockets([sock])
    try:
        stalled = (
            b"GET /api/sites/x/status HTTP/1.1\r\nHost: a\r\n",  # the head never ends
            b"POST /x HTTP/1.1\r\nContent-Length: 900\r\n\r\n{",  # the body never arrives
        )
        for start in stalled:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(start)
            await writer.drain()
            # Closed by the server (read() returns at EOF), with a 400 at most, never a 200.
            answer = await asyncio.wait_for(reader.read(), 30)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")  # over the body limit
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(), 30)).startswith(b"HTTP/1.1 4")
        writer.close()
    finally:
        server.stop()
        await server.close_all_connections()
    await assert_healthy(api)
