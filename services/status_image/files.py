"""Every tracked site's answers as files, for nginx to serve (``HABLA_STATUS_FILES_DIR``).

Layout under the directory, which is nginx's ``root`` (URIs map one to one)::

    status/<site_id>/image.png     the image in the site's look and current state
    status/<site_id>.json          {"online": …, "operators_available": …}
    .tmp/                          files being written; never served

A file is written in ``.tmp`` and renamed over the old one (``os.replace``: atomic on one
filesystem), so nginx reads either the old bytes or the new ones, never a torn file.

**ETag.** nginx makes a static file's ETag from its mtime and size. Each file's mtime is
set to a number taken from a hash of its bytes, so the ETag names the content: it changes
whenever the bytes do (a real mtime has one-second resolution: two changes within a
second with the same size, 1 → 2 operators, would keep the ETag and a revalidating
browser would keep the stale answer), and it is the same whichever instance wrote the
file and across restarts (no needless re-downloads). The nginx config drops
Last-Modified and ignores If-Modified-Since, which would show that made-up date.

**Writing.** The cache hands over a site's new bodies on every change; one task writes
the sites handed over in a worker thread, batch after batch, so the event loop never
waits on the disk (Redis going down changes every site at once) and two writes of one
path never race (the latest bodies win). A file that cannot be written is removed, so
nginx falls back to Tornado rather than serve a stale state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

from libs.common import siteids
from services.status_image import metrics

log = logging.getLogger(__name__)

# Bodies to write for a site, or None: remove its files (unknown site, no longer tracked).
Bodies = tuple[bytes, bytes] | None

# Temp files older than this were left by a writer that died mid-write: removed at start.
STALE_TEMP_S = 60.0
# 31 bits: an mtime every filesystem stores (before 2038); with the size in the ETag too,
# two different answers of one site share an ETag with odds of about 1 in 2 billion.
MTIME_BITS = 31


def content_mtime(body: bytes) -> int:
    """The mtime that makes nginx's ETag ("<mtime hex>-<size hex>") name these bytes."""
    digest = hashlib.sha1(body, usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") & ((1 << MTIME_BITS) - 1)


def nginx_etag(body: bytes) -> str:
    """The ETag nginx sends for a file written here (tests and the bench compare it)."""
    return f'"{content_mtime(body):x}-{len(body):x}"'


class StatusFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._status = root / "status"
        self._tmp = root / ".tmp"
        self._status_prefix = f"{self._status}/"  # os.path on a str: ~3 µs, pathlib ~8 µs
        # Unique per process (containers all run as pid 1): names temp files.
        self._prefix = f"{uuid.uuid4().hex[:12]}-"
        self._pending: dict[str, Bodies] = {}
        self._written: dict[str, tuple[bytes, bytes]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    # --- called by the cache (event loop) ----------------------------------------------

    def start(self) -> None:
        for folder in (self.root, self._status, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)  # nginx's workers run as another user
        now = time.time()
        for temp in self._tmp.iterdir():
            try:
                if now - temp.stat().st_mtime > STALE_TEMP_S:
                    temp.unlink()
            except OSError:
                pass  # another instance's temp file, renamed or removed meanwhile
        self._task = asyncio.create_task(self._write_forever())

    def publish(self, site_id: str, image: bytes, json_body: bytes, *, force: bool = False) -> None:
        """Write the site's answers soon (at once if the loop is idle)."""
        bodies = (image, json_body)
        if not force and site_id not in self._pending and self._written.get(site_id) == bodies:
            return
        self._mark(site_id, bodies)

    def withdraw(self, site_id: str, *, force: bool = False) -> None:
        """Remove the site's files: nginx sends its requests to Tornado again. ``force``:
        even if this instance did not write them."""
        if force or site_id in self._written or site_id in self._pending:
            self._mark(site_id, None)

    def missing(self, site_id: str) -> bool:
        """True if the site has no file and none is on its way (another instance removed it)."""
        return site_id not in self._pending and not os.path.exists(f"{self._status_prefix}{site_id}.json")

    def on_disk(self) -> list[str]:
        """Site ids with files, whoever wrote them (blocking: run in a thread)."""
        try:
            names = os.listdir(self._status)
        except OSError:
            return []
        return [name[:-5] for name in names if name.endswith(".json") and siteids.is_site_id(name[:-5])]

    async def settled(self) -> None:
        """Wait until every change handed over so far is on disk."""
        while self._pending or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    async def stop(self) -> None:
        """Remove the files of every site this instance wrote, then stop writing."""
        for site_id in [*self._written, *self._pending]:
            self._mark(site_id, None)
        try:
            await asyncio.wait_for(self.settled(), 5.0)
        except TimeoutError:
            log.warning("status files not all removed before stopping")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _mark(self, site_id: str, bodies: Bodies) -> None:
        self._pending[site_id] = bodies
        self._idle.clear()
        self._wake.set()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            try:
                done = await asyncio.to_thread(self._write_batch, batch)
            except Exception:
                log.exception("writing status files failed")
                done = {}
            for site_id, bodies in done.items():
                if bodies is None:
                    self._written.pop(site_id, None)
                else:
                    self._written[site_id] = bodies
            if not self._pending:
                self._idle.set()

    # --- worker thread -------------------------------------------------------------------

    def _write_batch(self, batch: dict[str, Bodies]) -> dict[str, Bodies]:
        """Write or remove each site's files; returns what is now on disk per site."""
        done: dict[str, Bodies] = {}
        for site_id, bodies in batch.items():
            if bodies is None:
                self._remove(site_id)
                done[site_id] = None
                continue
            try:
                self._write_site(site_id, *bodies)
                done[site_id] = bodies
                metrics.FILES_WRITTEN.inc()
            except OSError as exc:
                metrics.FILE_ERRORS.inc()
                log.warning(
                    "cannot write a site's status files; Tornado answers it",
                    extra={"site": site_id, "error": repr(exc)[:200]},
                )
                self._remove(site_id)  # never leave the previous state to be served
                done[site_id] = None
        return done

    def _write_site(self, site_id: str, image: bytes, json_body: bytes) -> None:
        folder = self._status / site_id
        for target, body in ((folder / "image.png", image), (self._status / f"{site_id}.json", json_body)):
            temp = self._temp(body)
            try:
                try:
                    os.replace(temp, target)
                except FileNotFoundError:  # the site's folder: new, or just removed by a peer
                    folder.mkdir(exist_ok=True)
                    folder.chmod(0o755)
                    os.replace(temp, target)
            except OSError:
                temp.unlink(missing_ok=True)
                raise

    def _temp(self, body: bytes) -> Path:
        temp = self._tmp / f"{self._prefix}{uuid.uuid4().hex[:8]}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: nginx's workers must read it
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        mtime = content_mtime(body)
        os.utime(temp, (mtime, mtime))
        return temp

    def _remove(self, site_id: str) -> None:
        folder = self._status / site_id
        for target in (self._status / f"{site_id}.json", folder / "image.png"):
            try:
                target.unlink(missing_ok=True)
            except OSError as exc:
                metrics.FILE_ERRORS.inc()
                log.error("cannot remove a site's status file", extra={"file": str(target), "error": repr(exc)[:200]})
        with contextlib.suppress(OSError):  # gone already, or a peer has just written into it again
            folder.rmdir()
