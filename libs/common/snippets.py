"""The HTML a site owner pastes: the async widget snippet and the no-JS status image."""

from __future__ import annotations

import json
from html import escape

from libs.common.siteids import check_site_id


def embed_snippet(public_url: str, site_id: str) -> str:
    """The asynchronous loader: queues API calls until /embed.js arrives, never blocks.

    An async ``<script src>`` appended to the host page still delays the page's
    ``load`` event until it arrives, so a stalled server would hold the host page
    hostage. As in Olark's LightningJS, the snippet instead writes a hidden iframe
    whose own ``onload`` adds /embed.js: by then the frame has finished loading, so
    nothing of ours is pending in the host page's load, and our code runs in a window
    of its own.
    """
    check_site_id(site_id)
    # JSON string literal, with "<" escaped so the URL can never close the script tag.
    base = json.dumps(public_url.rstrip("/")).replace("<", "\\u003c")
    return (
        "<!-- Habla live chat -->\n"
        "<script>\n"
        "(function(w,d,u,id){w.habla=w.habla||function(){(w.habla.q=w.habla.q||[]).push(arguments)};\n"
        "w.habla.site=id;w.habla.base=u;var f=d.createElement('iframe');f.title='';f.tabIndex=-1;\n"
        "f.setAttribute('aria-hidden','true');f.style.display='none';(d.body||d.documentElement).appendChild(f);\n"
        "var fd=f.contentWindow.document;fd.open();\n"
        "fd.write('<body onload=\"var s=document.createElement(&quot;script&quot;);'+\n"
        "'s.src=parent.habla.base+&quot;/embed.js&quot;;document.body.appendChild(s)\">');fd.close();})\n"
        f"(window,document,{base},'{site_id}');\n"
        "</script>\n"
    )


def status_image_html(public_url: str, status_url: str, site_id: str) -> str:
    """A status image inside a link to the hosted chat page, for pages without JavaScript."""
    check_site_id(site_id)
    chat = escape(f"{public_url.rstrip('/')}/chat/{site_id}", quote=True)
    image = escape(f"{status_url.rstrip('/')}/status/{site_id}/image.png", quote=True)
    img = f'<img src="{image}" alt="Live chat" width="160" height="40">'
    return f'<a href="{chat}" target="_blank" rel="noopener">{img}</a>\n'
