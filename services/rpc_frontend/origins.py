"""Which browser origins may use a site's widget API (the site's allowed domains)."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_allowed(origin: str | None, own_host: str, allowed_domains: list[str]) -> bool:
    """True if a request with this ``Origin`` header may act for the site.

    No Origin: not a cross-site browser request (curl, server to server); the token
    still limits it to one visitor. Our own pages (hosted chat, preview) are always
    allowed. Otherwise the origin's host must be an allowed domain or a subdomain of
    one; an empty list allows any host, as the site owner chose.
    """
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError:  # "http://[" and other unparsable hosts
        return False
    if parts.scheme not in ("http", "https") or not hostname:
        return False  # "null" (sandboxed frames, files) or garbage: nobody we know
    if parts.netloc.lower() == own_host.lower():
        return True
    if not allowed_domains:
        return True
    host = hostname.lower().rstrip(".")
    for entry in allowed_domains:
        domain = _host_of(entry)
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _host_of(entry: str) -> str:
    """Host of an allowed-domain entry: shop.example, https://shop.example/ and shop.example:8080 agree."""
    entry = entry.strip().lower()
    try:
        parsed = urlsplit(entry if "://" in entry else "//" + entry)
        return (parsed.hostname or "").rstrip(".")
    except ValueError:  # an entry saved before the console checked them: matches nothing
        return ""
