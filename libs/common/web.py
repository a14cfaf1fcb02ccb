"""What every Tornado service of Habla shares about HTTP itself (not about its pages)."""

from __future__ import annotations

import tornado.web

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
