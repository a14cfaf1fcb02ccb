"""A multipart/alternative (plain text + HTML) email written straight to wire bytes.

``email.message.EmailMessage`` parses every header it is given and re-folds every
header it writes: building and flattening one transcript took about 70% of the email
consumer's time (a profile at ~60 transcripts/s). Our mails always have the same
shape, so they are written here directly: headers we built ourselves (RFC 2047
encoded words where they are not ASCII), CRLF line ends, and each body in the
cheapest encoding every SMTP server takes: 7bit when it is ASCII with lines under
the 998-octet limit, else quoted-printable in UTF-8 (``binascii``, in C). The HTML
part is made ASCII first (other characters become character references, which mean
the same to a browser), so it usually goes as 7bit: a third of the lines of its
quoted-printable form, and every SMTP server reads a mail line by line.

Safety does not depend on the callers alone: ``compose`` refuses any header value
holding a CR or LF (header injection), as ``EmailMessage`` did.
"""

from __future__ import annotations

import binascii
import re
import secrets
from email.header import Header

# RFC 5322: lines SHOULD stay within 78 characters; Header folds encoded words to fit.
_FOLD_AT = 76


class HeaderInjection(ValueError):
    """A header value with a line break: never written."""


def header_value(name: str, value: str) -> str:
    """``value`` ready for the wire after ``name: `` (folded; RFC 2047 if not ASCII)."""
    if "\r" in value or "\n" in value:
        raise HeaderInjection(f"line break in the {name} header")
    if value.isascii() and len(name) + 2 + len(value) <= _FOLD_AT:
        return value
    charset = "us-ascii" if value.isascii() else "utf-8"
    return Header(value, charset, maxlinelen=_FOLD_AT, header_name=name).encode(linesep="\r\n")


# 7bit carries printable ASCII, tabs and line ends, in lines of at most 998 octets
# (RFC 5321 4.5.3.1.6; CRLF excluded).
_NOT_7BIT = re.compile(r"[^\t\n\x20-\x7e]")
_LINE_MAX = 998


def _body(text: str, boundary: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, CRLF-ended body) for one part."""
    # One kind of line end, so that every line break is seen as one.
    normal = text.replace("\r\n", "\n").replace("\r", "\n")
    if _NOT_7BIT.search(normal) is None and max(map(len, normal.split("\n"))) <= _LINE_MAX and boundary not in normal:
        return "7bit", normal.encode("ascii").replace(b"\n", b"\r\n")
    # "=" is always encoded as "=3D", so no quoted-printable body holds the boundary.
    encoded = binascii.b2a_qp(normal.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")


def compose(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    """The wire form of a mail with these headers (values already encoded with
    ``header_value`` or plain ASCII without line breaks), a plain part and an HTML part."""
    boundary = f"=_habla_{secrets.token_hex(12)}"
    text_encoding, text_body = _body(text, boundary)
    html_encoding, html_body = _body(html.encode("ascii", "xmlcharrefreplace").decode("ascii"), boundary)
    lines = []
    for name, value in headers:
        # Folded values carry CRLF + whitespace (a continuation); anything else is injection.
        if "\n" in value.replace("\r\n ", "").replace("\r\n\t", "") or "\r" in value.replace("\r\n", ""):
            raise HeaderInjection(f"line break in the {name} header")
        lines.append(f"{name}: {value}")
    lines += [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="utf-8"',
        f"Content-Transfer-Encoding: {text_encoding}",
        "",
        "",
    ]
    head = "\r\n".join(lines).encode("ascii")
    middle = "\r\n".join(
        [
            "",
            f"--{boundary}",
            'Content-Type: text/html; charset="utf-8"',
            f"Content-Transfer-Encoding: {html_encoding}",
            "",
            "",
        ]
    ).encode("ascii")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return head + text_body + middle + html_body + tail
