"""A real nginx (tools/nginx.py) serving the files the status image writes, Tornado behind
it as the fallback, against this run's real Redis and MariaDB."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import state
from libs.common.db import sites
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.presence import OperatorPresence, site_status_key
from services.status_image import cache as cache_module
from services.status_image.files import StatusFiles, nginx_etag
from tests.redis_server import PrivateRedis
from tests.status_image.conftest import StatusServer, top_colour
from tests.status_image.test_hostile_input import MATH_DIGITS
from tools import daemons, nginx

Start = Callable[..., Awaitable[StatusServer]]
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(nginx.binary() is None, reason="scripts/setup.sh installs nginx-light")


@dataclass
class Stack:
    tornado: StatusServer  # the service itself
    edge: StatusServer  # the same service seen through nginx
    files: StatusFiles

    async def settled_on(self, site_id: str, online: bool) -> None:
        """Wait until the service knows the site's new state and has written it out."""
        deadline = time.monotonic() + 2.0
        while (entry := self.tornado.cache.lookup(site_id)) is None or entry.online != online:
            assert time.monotonic() < deadline, "the service never saw the change"
            await asyncio.sleep(0.01)
        await self.files.settled()


def _nginx_in_front(tmp_path: Path, backend_url: str) -> tuple[nginx.StatusNginx, subprocess.Popen[bytes]]:
    port = urlsplit(backend_url).port
    assert port is not None
    server = nginx.StatusNginx(tmp_path / "nginx", tmp_path / "files", nginx.free_port(), [port])
    return server, nginx.start(server)


@pytest.fixture
async def stack(start_server: Start, settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    files = StatusFiles(tmp_path / "files")
    tornado = await start_server(settings, files=files)
    server, process = _nginx_in_front(tmp_path, tornado.url)
    try:
        yield Stack(tornado, StatusServer(f"http://127.0.0.1:{server.port}", tornado.cache, tornado.renderer), files)
    finally:
        nginx.stop(process)


async def test_rendered_sites_are_served_by_nginx_and_show_each_change_on_the_next_request(
    stack: Stack, make_site: Callable[[], str], settings: Settings, redis_client: aioredis.Redis
) -> None:
    site_id = make_site()
    image_path, json_path = f"/status/{site_id}/image.png", f"/status/{site_id}.json"
    first = await stack.edge.fetch(image_path)  # not rendered yet: Tornado answers, and writes it
    assert first.code == 200 and top_colour(first.body) == "#8a8a8a"
    await stack.files.settled()

    image = await stack.edge.fetch(image_path)
    assert image.code == 200 and image.body == first.body
    assert image.headers["Etag"] == nginx_etag(image.body)  # nginx's ETag: served from the file
    assert image.headers["Content-Type"] == "image/png"
    assert image.headers["Cache-Control"] == "no-cache"
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert int(image.headers["Content-Length"]) == len(image.body)
    assert "Last-Modified" not in image.headers and "Access-Control-Allow-Origin" not in image.headers
    same = await stack.edge.fetch(image_path, headers={"If-None-Match": image.headers["Etag"]})
    assert (same.code, same.body, same.headers["Etag"]) == (304, b"", image.headers["Etag"])
    head = await stack.edge.fetch(image_path, method="HEAD")
    assert (head.code, head.body, head.headers["Content-Length"]) == (200, b"", image.headers["Content-Length"])

    answer = await stack.edge.fetch(json_path)
    assert json.loads(answer.body) == {"online": False, "operators_available": 0}
    assert answer.headers["Etag"] == nginx_etag(answer.body)
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert answer.headers["Cache-Control"] == "no-cache"

    presence = OperatorPresence(redis_client, settings)
    await presence.set_available([site_id], "ana@localhost", "laptop", True)
    await stack.settled_on(site_id, True)
    online = await stack.edge.fetch(image_path, headers={"If-None-Match": image.headers["Etag"]})
    assert online.code == 200 and top_colour(online.body) == "#2e8b57"
    assert online.headers["Etag"] == nginx_etag(online.body) != image.headers["Etag"]
    assert json.loads((await stack.edge.fetch(json_path)).body) == {"online": True, "operators_available": 1}

    # Same size, other content (1 → 2 operators), within the same second: a new ETag all
    # the same (an mtime-based one would not change), so a revalidating browser updates.
    one = await stack.edge.fetch(json_path)
    await presence.set_available([site_id], "bo@localhost", "phone", True)
    deadline = time.monotonic() + 2.0
    while (entry := stack.tornado.cache.lookup(site_id)) is None or entry.operators != 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await stack.files.settled()
    two = await stack.edge.fetch(json_path, headers={"If-None-Match": one.headers["Etag"]})
    assert two.code == 200 and json.loads(two.body)["operators_available"] == 2
    assert len(two.body) == len(one.body) and two.headers["Etag"] != one.headers["Etag"]

    await presence.set_available([site_id], "ana@localhost", "laptop", False)
    await presence.set_available([site_id], "bo@localhost", "phone", False)
    await stack.settled_on(site_id, False)
    offline = await stack.edge.fetch(image_path, headers={"If-None-Match": online.headers["Etag"]})
    assert offline.code == 200 and top_colour(offline.body) == "#8a8a8a"
    assert offline.headers["Etag"] == image.headers["Etag"]  # the same bytes as before: the same ETag
    assert json.loads((await stack.edge.fetch(json_path)).body) == {"online": False, "operators_available": 0}


async def test_an_expired_status_and_a_saved_theme_reach_the_files(
    stack: Stack,
    make_site: Callable[[], str],
    settings: Settings,
    engine: sa.Engine,
    redis_client: aioredis.Redis,
) -> None:
    site_id = make_site()
    await stack.edge.fetch(f"/status/{site_id}/image.png")
    # Written without an announcement, then removed as if expired: only the refresh sees it.
    await redis_client.set(site_status_key(settings, site_id), json.dumps({"online": True, "operators_available": 1}))
    await stack.settled_on(site_id, True)
    assert await stack.edge.is_online(site_id)
    await redis_client.delete(site_status_key(settings, site_id))
    await stack.settled_on(site_id, False)
    assert not await stack.edge.is_online(site_id)

    with engine.begin() as conn:
        conn.execute(
            sa.update(sites).where(sites.c.id == site_id).values(theme={"colours": {"offline_image": "#123456"}})
        )
    await SiteDirectory(redis_client, engine, settings).invalidate(site_id)  # what the console does
    deadline = time.monotonic() + 2.0
    while (
        (entry := stack.tornado.cache.lookup(site_id)) is None
        or entry.look is None
        or (top_colour(entry.look.offline.body) != "#123456")
    ):
        assert time.monotonic() < deadline, "the new theme never reached the service"
        await asyncio.sleep(0.01)
    await stack.files.settled()
    after = await stack.edge.fetch(f"/status/{site_id}/image.png")
    assert top_colour(after.body) == "#123456" and after.headers["Etag"] == nginx_etag(after.body)


@pytest.mark.parametrize(
    "site", ["١٢٣٤-١٢٣٤٥-١٢-١٢٣٤", "{real}\n", "{real}\r", MATH_DIGITS + "-12345-12-1234", "x" * 5000, "12-34"]
)
async def test_hostile_ids_through_nginx_get_the_services_404(
    stack: Stack, make_site: Callable[[], str], site: str
) -> None:
    real = make_site()
    await stack.edge.fetch(f"/status/{real}.json")  # rendered: its files exist
    await stack.files.settled()
    site = site.replace("{real}", real)
    for path in (f"/status/{quote(site)}.json", f"/status/{quote(site)}/image.png"):
        response = await stack.edge.fetch(path)
        assert response.code == 404, (path, response.code)
        assert "site id" in response.headers["X-Habla-Error"]  # Tornado's answer, passed through
    assert (await stack.edge.fetch(f"/status/{real}.json")).code == 200


async def test_nothing_but_the_two_answers_is_served_from_disk(stack: Stack, make_site: Callable[[], str]) -> None:
    site_id = make_site()
    assert (await stack.edge.fetch(f"/status/{site_id}.json")).code == 200
    await stack.files.settled()
    unknown = await stack.edge.fetch("/status/9999-99999-99-9999/image.png")
    assert (unknown.code, unknown.body) == (404, stack.tornado.renderer.neutral.body)
    assert "no site 9999-99999-99-9999" in unknown.headers["X-Habla-Error"]
    for path in (f"/status/{site_id}", f"/status/{site_id}/", "/status/", "/.tmp/", "/status/x/../../.tmp/"):
        response = await stack.edge.fetch(path)
        assert response.code == 404, (path, response.code)
        assert b"404: Not Found" in response.body, path  # Tornado's own 404 page, not a file
    # Climbing above the root: nginx refuses the URI itself before any lookup.
    assert (await stack.edge.fetch("/status/..%2F..%2F..%2Fetc%2Fpasswd.json")).code == 400
    # Other methods reach Tornado: its 405 with Allow, also for a site nginx serves.
    post = await stack.edge.fetch(f"/status/{site_id}.json", method="POST", body=b"x")
    assert post.code == 405
    assert {m.strip() for m in post.headers["Allow"].split(",")} == {"GET", "HEAD"}
    assert (await stack.edge.fetch(f"/status/{site_id}.json")).code == 200


async def test_files_leave_with_the_site_and_a_missing_file_is_written_again(
    stack: Stack, make_site: Callable[[], str]
) -> None:
    site_id = make_site()
    await stack.edge.fetch(f"/status/{site_id}.json")
    await stack.files.settled()
    json_file = stack.files.root / "status" / f"{site_id}.json"
    assert json_file.exists() and (stack.files.root / "status" / site_id / "image.png").exists()

    json_file.unlink()  # as another instance does when it lets the site go
    assert (await stack.edge.fetch(f"/status/{site_id}.json")).code == 200  # Tornado, from memory
    await stack.files.settled()
    assert json_file.exists()

    entry = stack.tornado.cache.lookup(site_id)
    assert entry is not None
    entry.used_at -= cache_module.IDLE_EVICT_S + 1  # not asked about for too long: let go
    await stack.tornado.cache.refresh()
    await stack.files.settled()
    assert not json_file.exists() and not (stack.files.root / "status" / site_id).exists()
    # Untracked, so no longer served from a file: Tornado answers and tracks it again.
    assert (await stack.edge.fetch(f"/status/{site_id}.json")).code == 200
    await stack.files.settled()
    assert json_file.exists()


async def test_files_left_by_a_dead_instance_are_adopted_and_corrected(
    start_server: Start, make_site: Callable[[], str], settings: Settings, tmp_path: Path
) -> None:
    """An instance killed with its files on disk: the next one keeps them right."""
    site_id = make_site()
    folder = tmp_path / "files" / "status" / site_id
    folder.mkdir(parents=True)
    (folder / "image.png").write_bytes(b"stale")
    (tmp_path / "files" / "status" / f"{site_id}.json").write_bytes(b'{"online": true, "operators_available": 3}')
    files = StatusFiles(tmp_path / "files")
    server = await start_server(settings, files=files)
    deadline = time.monotonic() + 5.0
    while server.cache.lookup(site_id) is None:  # adopted at start, before any request
        assert time.monotonic() < deadline, "the files on disk were not adopted"
        await asyncio.sleep(0.02)
    await files.settled()
    answer = json.loads((tmp_path / "files" / "status" / f"{site_id}.json").read_bytes())
    assert answer == {"online": False, "operators_available": 0}
    assert (folder / "image.png").read_bytes() == server.cache.default_look.offline.body

    await server.cache.stop()  # a clean stop takes its files away: nobody would update them
    assert not (tmp_path / "files" / "status" / f"{site_id}.json").exists()


@pytest.fixture
def module_with_nginx(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    port = nginx.free_port()
    env = {
        **os.environ,
        "HABLA_STATUS_PORT": str(port),
        "HABLA_STATUS_FILES_DIR": str(tmp_path / "files"),
        "HABLA_REDIS_URL": settings.redis_url,
        "HABLA_REDIS_PREFIX": settings.redis_prefix,
        "HABLA_MYSQL_URL": settings.mysql_url,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.status_image"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    edge = None
    try:
        _, edge = _nginx_in_front(tmp_path, f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{_.port}", process, tmp_path / "files"
    finally:
        if edge is not None:
            nginx.stop(edge)
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=15)


def test_the_service_module_writes_files_for_nginx_and_removes_them_on_sigterm(
    module_with_nginx: tuple[str, subprocess.Popen[str], Path], make_site: Callable[[], str]
) -> None:
    url, process, files = module_with_nginx
    site_id = make_site()
    deadline = time.monotonic() + 20
    etags: list[str] = []
    while len(etags) < 2 or etags[-1] != etags[-2]:  # Tornado's answer, then nginx's, stable
        try:
            with urllib.request.urlopen(f"{url}/status/{site_id}/image.png", timeout=5) as response:
                body = response.read()
                etags.append(response.headers["Etag"])
        except OSError:
            assert process.poll() is None, "the service exited"
        assert time.monotonic() < deadline, f"nginx never served the file: {etags}"
        time.sleep(0.1)
    assert etags[-1] == nginx_etag(body) and body.startswith(b"\x89PNG")
    assert (files / "status" / site_id / "image.png").read_bytes() == body
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)
    assert process.returncode == 0
    assert not (files / "status" / f"{site_id}.json").exists()


def _deploy_config(tmp_path: Path, port: int, files: Path, backend_port: int) -> Path:
    """deploy/nginx-status.conf as the container runs it, pointed at this test's
    folders and ports (user, pid, listen, root and the replicas' address swapped)."""
    text = (ROOT / "deploy" / "nginx-status.conf").read_text()
    for old, new in (
        ("user nginx;", "user root;"),  # the test's temp folders are private to root
        ("pid /var/run/nginx.pid;", f"pid {tmp_path}/nginx.pid;"),
        ("listen 8081;", f"listen 127.0.0.1:{port};"),
        ("root /srv/status-files;", f"root {files};"),
        ("http://status_image:8081", f"http://127.0.0.1:{backend_port}"),
        ("http {", f"http {{\n    client_body_temp_path {tmp_path}/body;\n    proxy_temp_path {tmp_path}/proxy;"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "deploy-nginx.conf"
    path.write_text(text)
    return path


def _run_checked(config: Path, prefix: Path, port: int) -> subprocess.Popen[bytes]:
    binary = nginx.binary()
    assert binary is not None
    # As the image runs it: `daemon off` on the command line, not in the file.
    command = [binary, "-g", "daemon off;", "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(config)]
    # Returned once nginx listens: a fetch before that is refused, not a 404 to retry.
    return daemons.start_checked("nginx", [*command, "-t"], command, lambda: daemons.listening("127.0.0.1", port), 10)


def test_the_deploy_config_reads_the_disk_exactly_like_the_generated_one() -> None:
    deploy = (ROOT / "deploy" / "nginx-status.conf").read_text()
    assert nginx.FILE_LOCATION in deploy


async def test_the_deploy_config_serves_files_and_falls_back(
    start_server: Start, settings: Settings, make_site: Callable[[], str], tmp_path: Path
) -> None:
    files = StatusFiles(tmp_path / "files")
    tornado = await start_server(settings, files=files)
    backend = urlsplit(tornado.url).port
    assert backend is not None
    port = nginx.free_port()
    config = _deploy_config(tmp_path, port, tmp_path / "files", backend)
    process = _run_checked(config, tmp_path, port)
    try:
        edge = StatusServer(f"http://127.0.0.1:{port}", tornado.cache, tornado.renderer)
        site_id = make_site()
        deadline = time.monotonic() + 10
        while (first := await edge.fetch(f"/status/{site_id}.json")).code != 200:
            assert time.monotonic() < deadline, (first.code, first.body)
            await asyncio.sleep(0.05)
        await files.settled()
        served = await edge.fetch(f"/status/{site_id}.json")
        assert served.headers["Etag"] == nginx_etag(served.body)
        assert served.headers["Access-Control-Allow-Origin"] == "*"
        assert served.headers["Cache-Control"] == "no-cache"
        unknown = await edge.fetch("/status/9999-99999-99-9999.json")
        assert unknown.code == 404 and "no site" in unknown.headers["X-Habla-Error"]
        post = await edge.fetch(f"/status/{site_id}.json", method="POST", body=b"")
        assert post.code == 405
        assert (await edge.fetch("/healthz")).code == 200
    finally:
        nginx.stop(process)


async def test_redis_down_turns_the_files_offline_and_back(
    start_server: Start,
    make_site: Callable[[], str],
    private_settings: Settings,
    private_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    files = StatusFiles(tmp_path / "files")
    server = await start_server(private_settings, files=files)
    json_file = tmp_path / "files" / "status"

    async def written(site_id: str, online: bool) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            await files.settled()
            path = json_file / f"{site_id}.json"
            if path.exists() and json.loads(path.read_bytes())["online"] is online:
                return
            assert time.monotonic() < deadline, f"{site_id}'s file never said online={online}"
            await asyncio.sleep(0.05)

    site_id = make_site()
    writer = state.connect(private_settings)
    try:
        await OperatorPresence(writer, private_settings).set_available([site_id], "ana@localhost", "laptop", True)
        assert (await server.fetch(f"/status/{site_id}.json")).code == 200
        await written(site_id, True)
        private_redis.kill()  # every site is answered offline: the files say so too
        await written(site_id, False)
        private_redis.start()
        await writer.connection_pool.disconnect()
        await OperatorPresence(writer, private_settings).set_available([site_id], "ana@localhost", "laptop", True)
        await written(site_id, True)
    finally:
        await writer.aclose()
