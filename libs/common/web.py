"""What every Tornado service of Habla shares about HTTP itself (not about its pages)."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import tornado.web
from tornado.log import app_log

# Tornado's stand-in for every verb a handler does not define (it answers 405).
_UNIMPLEMENTED = tornado.web.RequestHandler.get


def allowed_methods(handler: tornado.web.RequestHandler) -> list[str]:
    """The verbs this handler really answers, for a 405's ``Allow`` header (RFC 9110 15.5.6)."""
    return [
        method
        for method in handler.SUPPORTED_METHODS
        if getattr(type(handler), method.lower(), _UNIMPLEMENTED) is not _UNIMPLEMENTED
    ]


def set_allow_header(handler: tornado.web.RequestHandler) -> None:
    """Call from ``write_error`` for a 405: ``send_error`` has cleared the headers by then."""
    handler.set_header("Allow", ", ".join(allowed_methods(handler)))


# Query parameters that carry a credential (the widget's visitor token): never logged.
SECRET_PARAMETERS = frozenset({"token"})
access_log = logging.getLogger("tornado.access")


def redacted_uri(uri: str) -> str:
    """``uri`` with the value of every secret query parameter replaced by "…"."""
    path, question, query = uri.partition("?")
    if not question:
        return uri
    pairs = []
    for pair in query.split("&"):
        name, equals, _value = pair.partition("=")
        secret = equals and urllib.parse.unquote_plus(name) in SECRET_PARAMETERS
        pairs.append(f"{name}=…" if secret else pair)
    return f"{path}?{'&'.join(pairs)}"


def request_summary(handler: tornado.web.RequestHandler) -> str:
    request = handler.request
    return f"{request.method} {redacted_uri(request.uri or '')} ({request.remote_ip})"


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line (Application.log_request), with secrets redacted."""
    status = handler.get_status()
    log = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
    log("%d %s %.2fms", status, request_summary(handler), 1000.0 * handler.request.request_time())


class RedactedLogs(tornado.web.RequestHandler):
    """Mixin: Tornado's own error lines name the request without its secrets too."""

    def _request_summary(self) -> str:
        return request_summary(self)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)  # a warning line built from _request_summary
            return
        # Tornado's version also prints repr(self.request), which holds the raw URI.
        app_log.error("Uncaught exception %s", request_summary(self), exc_info=(typ, value, tb))


# Slow clients (issue 11): a connection that sends no complete request head within
# IDLE_S, or a body that does not arrive within BODY_S, is closed. Tornado's defaults are
# an hour each, so a few thousand sockets trickling bytes could hold every file
# descriptor. 60 s is under the common 75 s keep-alive of nginx and browsers' patience;
# a 64 KiB body in 30 s needs only ~2 KB/s, slower than any working phone link.
IDLE_S = 60.0
BODY_S = 30.0


def http_server_options(max_body_bytes: int, idle_s: float = IDLE_S, body_s: float = BODY_S) -> dict[str, Any]:
    """Keyword arguments for ``Application.listen``/``HTTPServer`` that every service uses."""
    return {"idle_connection_timeout": idle_s, "body_timeout": body_s, "max_body_size": max_body_bytes}
