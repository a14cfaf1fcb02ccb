"""The HTML a site owner pastes: the async widget snippet and the no-JS status image."""

from __future__ import annotations

from html import escape

from libs.common.siteids import check_site_id


def embed_snippet(public_url: str, site_id: str) -> str:
    """The asynchronous loader: queues API calls until /embed.js arrives, never blocks."""
    check_site_id(site_id)
    base = escape(public_url.rstrip("/"), quote=True)
    return (
        "<!-- Habla live chat -->\n"
        "<script>\n"
        "(function(w,d,s,u,id){w.habla=w.habla||function(){(w.habla.q=w.habla.q||[]).push(arguments)};\n"
        "w.habla.site=id;var e=d.createElement(s);e.async=1;e.src=u+'/embed.js';\n"
        "d.getElementsByTagName(s)[0].parentNode.appendChild(e);})\n"
        f"(window,document,'script','{base}','{site_id}');\n"
        "</script>\n"
    )


def status_image_html(public_url: str, status_url: str, site_id: str) -> str:
    """A status image inside a link to the hosted chat page, for pages without JavaScript."""
    check_site_id(site_id)
    chat = escape(f"{public_url.rstrip('/')}/chat/{site_id}", quote=True)
    image = escape(f"{status_url.rstrip('/')}/status/{site_id}/image.png", quote=True)
    img = f'<img src="{image}" alt="Live chat" width="160" height="40">'
    return f'<a href="{chat}" target="_blank" rel="noopener">{img}</a>\n'
