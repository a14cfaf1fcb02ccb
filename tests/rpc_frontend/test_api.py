"""The widget's HTTP API against real Redis, RabbitMQ and MariaDB, including every
bad-input case of issue 3 (404, 400, 413, 429, 401, 403) and zero MySQL on chat paths."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from tests.rpc_frontend.conftest import Api, Captured, MakeSite, RunningFrontend, StartFrontend, operator_reply


async def test_session_records_page_view_and_arrival(api: Api, captured: Captured, site_id: str) -> None:
    first = await api.session(url="http://127.0.0.1/shoes?size=42")
    arrived = await captured.next("VisitorEvent", visitor_id=first["visitor_id"])
    assert arrived.kind == codec.VisitorEventKind.ARRIVED
    view = await captured.next("PageView", visitor_id=first["visitor_id"])
    assert (view.url, view.title, view.site_id) == ("http://127.0.0.1/shoes?size=42", "Shoes", site_id)
    assert first["theme"]["colours"]["header_background"].startswith("#")
    assert first["status"] == {"online": False, "operators_available": 0}
    again = await api.session(token=first["token"], url="http://127.0.0.1/boots")
    assert again["visitor_id"] == first["visitor_id"]  # the token survives navigation
    view = await captured.next("PageView", visitor_id=first["visitor_id"], url="http://127.0.0.1/boots")
    assert view.title == "Shoes"


async def test_send_publishes_after_log_and_retry_is_not_duplicated(
    api: Api, captured: Captured, settings: Settings, redis_client: aioredis.Redis
) -> None:
    visitor = await api.session(url="http://127.0.0.1/checkout")
    message_id = uuid.uuid4().hex
    sent = await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": message_id, "body": "Hello?"})
    assert (sent["seq"], sent["duplicate"]) == (1, False)
    message = await captured.next("ChatMessage", message_id=message_id)
    assert (message.body, message.seq, message.page_url) == ("Hello?", 1, "http://127.0.0.1/checkout")
    assert message.sender == codec.SenderKind.VISITOR
    assert message.conversation_id == sent["conversation_id"]
    log = ConversationLog(redis_client, settings)
    assert [e["body"] for e in await log.after(sent["conversation_id"], 0)] == ["Hello?"]

    retry = await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": message_id, "body": "Hello?"})
    assert (retry["seq"], retry["duplicate"], retry["conversation_id"]) == (1, True, sent["conversation_id"])
    assert len(await log.after(sent["conversation_id"], 0)) == 1
    second = await api.ok(
        "POST", "/messages", {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "Hi"}
    )
    assert (second["seq"], second["conversation_id"]) == (2, sent["conversation_id"])


async def _error(api: Api, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    response = await api.call(method, path, **kwargs)
    assert response.headers["Content-Type"].startswith("application/json")
    return response.code, json.loads(response.body), response.headers


async def test_unknown_and_malformed_site_ids_are_404_with_a_reason(fe: RunningFrontend) -> None:
    code, body, _ = await _error(Api(fe.url, "1111-22222-33-4444"), "POST", "/session", body={})
    assert code == 404 and "no site 1111-22222-33-4444" in body["error"]
    code, body, _ = await _error(Api(fe.url, "12-34"), "GET", "/status")
    assert code == 404 and "'12-34' is not a site id" in body["error"]


async def test_malformed_json_is_400(api: Api) -> None:
    code, body, _ = await _error(api, "POST", "/session", raw=b"{not json")
    assert code == 400 and "not valid JSON" in body["error"]
    code, body, _ = await _error(api, "POST", "/session", raw=b"[1, 2]")
    assert code == 400 and "JSON object" in body["error"]
    visitor = await api.session()
    code, body, _ = await _error(
        api, "POST", "/messages", body={"token": visitor["token"], "message_id": "x", "body": "hi"}
    )
    assert code == 400 and "message_id" in body["error"]
    code, body, _ = await _error(api, "POST", "/typing", body={"token": visitor["token"], "typing": "yes"})
    assert code == 400 and "typing must be true or false" in body["error"]


async def test_oversized_message_is_413(api: Api, settings: Settings) -> None:
    visitor = await api.session()
    too_long = "x" * (settings.max_message_chars + 1)
    code, body, _ = await _error(
        api, "POST", "/messages", body={"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": too_long}
    )
    assert code == 413 and f"limit is {settings.max_message_chars}" in body["error"]
    code, body, _ = await _error(api, "POST", "/messages", raw=b'{"pad": "' + b"x" * 70_000 + b'"}')
    assert code == 413


async def test_per_visitor_rate_limit_is_429_with_retry_after(start_frontend: StartFrontend, site_id: str) -> None:
    fe = await start_frontend("limited", visitor_messages_per_min=3)
    api = Api(fe.url, site_id)
    visitor = await api.session()
    for _ in range(3):
        await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "hi"})
    code, body, headers = await _error(
        api, "POST", "/messages", body={"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "hi"}
    )
    assert code == 429 and "too many messages" in body["error"]
    assert 1 <= int(headers["Retry-After"]) <= 60
    other = await api.session()  # another visitor is not affected
    await api.ok("POST", "/messages", {"token": other["token"], "message_id": uuid.uuid4().hex, "body": "hi"})


async def test_per_ip_rate_limit_holds_across_instances(start_frontend: StartFrontend, make_site: MakeSite) -> None:
    site = await make_site()  # a site of its own: the IP counter is per address, shared by instances
    first = await start_frontend("ip1", ip_requests_per_min=4)
    second = await start_frontend("ip2", ip_requests_per_min=4)
    # Another run's or test's hits from 127.0.0.1 may already count: clear the window.
    await first.frontend.redis.delete(first.settings.redis_key("rl", "ip", "127.0.0.1"))
    codes = [(await Api(fe.url, site).call("GET", "/status")).code for fe in (first, second, first, second, first)]
    assert codes == [200, 200, 200, 200, 429]
    response = await Api(second.url, site).call("GET", "/status")
    assert response.code == 429 and int(response.headers["Retry-After"]) >= 1
    await first.frontend.redis.delete(first.settings.redis_key("rl", "ip", "127.0.0.1"))


async def test_bad_or_foreign_token_is_401(api: Api, make_site: MakeSite) -> None:
    visitor = await api.session()
    forged = visitor["token"][:-1] + ("0" if visitor["token"][-1] != "0" else "1")
    code, body, _ = await _error(
        api, "POST", "/messages", body={"token": forged, "message_id": uuid.uuid4().hex, "body": "x"}
    )
    assert code == 401 and "token" in body["error"]
    other_site = Api(api.base, await make_site())
    code, _, _ = await _error(
        other_site, "POST", "/messages", body={"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "x"}
    )
    assert code == 401  # a token is only good on the site it was issued for


async def test_a_visitor_reads_only_their_own_conversation(api: Api) -> None:
    alice = await api.session()
    secret = await api.ok(
        "POST", "/messages", {"token": alice["token"], "message_id": uuid.uuid4().hex, "body": "my card is 4111"}
    )
    mallory = await api.session()
    stolen = await api.ok(
        "GET", f"/messages?token={mallory['token']}&conversation_id={secret['conversation_id']}&after=0"
    )
    assert stolen["events"] == [] and stolen["conversation_id"] == ""
    own = await api.ok("GET", f"/messages?token={alice['token']}&conversation_id=&after=0")
    assert [e["body"] for e in own["events"][0]["entries"]] == ["my card is 4111"]


async def test_origins_outside_allowed_domains_are_refused(fe: RunningFrontend, make_site: MakeSite) -> None:
    api = Api(fe.url, await make_site(["shop.example"]))
    for origin in ("https://shop.example", "https://www.shop.example", fe.url):
        response = await api.call("POST", "/session", body={}, headers={"Origin": origin})
        assert response.code == 200, origin
        assert response.headers["Access-Control-Allow-Origin"] == origin
    for origin in ("https://evil.example", "https://notshop.example", "null"):
        response = await api.call("POST", "/session", body={}, headers={"Origin": origin})
        assert response.code == 403, origin
        assert "may not use site" in json.loads(response.body)["error"]
    preflight = await api.call("OPTIONS", "/messages", headers={"Origin": "https://shop.example"})
    assert preflight.code == 204 and "POST" in preflight.headers["Access-Control-Allow-Methods"]
    anyone = Api(fe.url, await make_site([]))  # empty list: any origin
    assert (await anyone.call("POST", "/session", body={}, headers={"Origin": "https://elsewhere.example"})).code == 200


async def test_typing_identify_end_and_status(api: Api, captured: Captured) -> None:
    visitor = await api.session()
    vid = visitor["visitor_id"]
    await api.ok("POST", "/typing", {"token": visitor["token"], "typing": True})
    assert (
        await captured.next("VisitorEvent", visitor_id=vid, kind=codec.VisitorEventKind.TYPING)
    ).site_id == api.site_id
    known = await api.ok("POST", "/visitor", {"token": visitor["token"], "email": "ann@example.org", "name": "Ann"})
    assert known["visitor"] == {"email": "ann@example.org", "name": "Ann"}
    event = await captured.next("VisitorEvent", visitor_id=vid, kind=codec.VisitorEventKind.IDENTIFIED)
    assert (event.email, event.name) == ("ann@example.org", "Ann")
    code, body, _ = await _error(api, "POST", "/visitor", body={"token": visitor["token"], "email": "nope"})
    assert code == 400 and "email" in body["error"]
    assert (await api.ok("POST", "/end", {"token": visitor["token"]}))["ended"] is False  # nothing open yet
    sent = await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "hi"})
    assert (await api.ok("POST", "/end", {"token": visitor["token"]}))["ended"] is True
    ended = await captured.next("VisitorEvent", visitor_id=vid, kind=codec.VisitorEventKind.ENDED_CHAT)
    assert ended.conversation_id == sent["conversation_id"]
    assert await api.ok("GET", "/status") == {"online": False, "operators_available": 0}


async def test_offline_message_is_published_and_validated(api: Api, captured: Captured) -> None:
    visitor = await api.session()
    form = {
        "token": visitor["token"],
        "message_id": uuid.uuid4().hex,
        "name": "Ann",
        "email": "ann@example.org",
        "body": "Call me <b>back</b>",
        "page_url": "http://127.0.0.1/contact",
    }
    await api.ok("POST", "/offline", form)
    offline = await captured.next("OfflineMessage", message_id=form["message_id"])
    assert (offline.name, offline.email, offline.body, offline.visitor_id) == (
        "Ann",
        "ann@example.org",
        "Call me <b>back</b>",
        visitor["visitor_id"],
    )
    code, body, _ = await _error(api, "POST", "/offline", body={**form, "email": "not-an-address"})
    assert code == 400 and "email" in body["error"]


async def test_long_poll_wakes_on_a_delivery(
    api: Api, fe: RunningFrontend, settings: Settings, redis_client: aioredis.Redis
) -> None:
    visitor = await api.session()
    sent = await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "hi"})
    cid = sent["conversation_id"]
    poll = asyncio.ensure_future(api.ok("GET", f"/poll?token={visitor['token']}&conversation_id={cid}&after=1"))
    await asyncio.sleep(0.5)
    assert not poll.done()  # parked: nothing after seq 1 yet
    await operator_reply(
        fe.bus, settings, redis_client, api.site_id, visitor["visitor_id"], cid, "Hello there", fe.settings.frontend_id
    )
    answer = await asyncio.wait_for(poll, 10)
    entries = [e for event in answer["events"] if event["type"] == "entries" for e in event["entries"]]
    assert [(e["seq"], e["sender"], e["body"], e["operator_name"]) for e in entries] == [
        (2, "operator", "Hello there", "Alice")
    ]
    assert (answer["conversation_id"], answer["after"]) == (cid, 2)


async def test_chat_paths_issue_no_mysql_statements(api: Api, engine: sa.Engine, fe: RunningFrontend) -> None:
    await api.ok("GET", "/status")  # the site directory fills its Redis copy (one read, once an hour)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        visitor = await api.session()
        sent = await api.ok(
            "POST", "/messages", {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "hi"}
        )
        await api.ok("POST", "/typing", {"token": visitor["token"], "typing": True})
        await api.ok("GET", f"/messages?token={visitor['token']}&conversation_id={sent['conversation_id']}&after=0")
        await api.ok("GET", "/status")
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert statements == []


async def test_errors_carry_cors_headers_so_the_widget_can_read_them(
    start_frontend: StartFrontend, make_site: MakeSite, settings: Settings
) -> None:
    fe = await start_frontend("cors", visitor_messages_per_min=2)  # the 413 counts too
    api = Api(fe.url, await make_site(["shop.example"]))
    origin = {"Origin": "https://shop.example"}
    visitor = json.loads((await api.call("POST", "/session", body={}, headers=origin)).body)
    for body, code in (
        (
            {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "x" * (settings.max_message_chars + 1)},
            413,
        ),
        ({"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "first"}, 200),
        ({"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "second"}, 429),
    ):
        response = await api.call("POST", "/messages", body=body, headers=origin)
        assert response.code == code
        assert response.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]


async def test_departed_visitors_are_announced_once(
    start_frontend: StartFrontend, site_id: str, captured: Captured
) -> None:
    fe = await start_frontend("ttl", session_ttl_s=1)
    api = Api(fe.url, site_id)
    gone, stays = await api.session(), await api.session()
    await asyncio.sleep(1.5)
    await api.session(token=stays["token"])  # a heartbeat: this visit goes on
    assert await fe.frontend.chat.departures.sweep() >= 1
    left = await captured.next("VisitorEvent", kind=codec.VisitorEventKind.LEFT)
    assert left.visitor_id == gone["visitor_id"]
    await fe.frontend.chat.departures.sweep()  # announced once only
    await asyncio.sleep(0.3)
    later = [e.struct for e in captured.drain() if e.type_name == "VisitorEvent"]
    assert not [e for e in later if e.kind == codec.VisitorEventKind.LEFT]
