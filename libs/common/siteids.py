"""Site ids in the Hab.la shape, e.g. 4324-24618-10-8812 (4-5-2-4 digits)."""

from __future__ import annotations

import re
import secrets

# ASCII digits only ("\d" also matches "١٢٣٤") and always fullmatch ("$" would let a
# trailing newline through).
SITE_ID_RE = re.compile(r"[0-9]{4}-[0-9]{5}-[0-9]{2}-[0-9]{4}")


def new_site_id() -> str:
    # ~10^14 combinations; creation retries on the rare collision (primary key).
    return "-".join(
        str(low + secrets.randbelow(high - low))
        for low, high in ((1000, 10000), (10000, 100000), (10, 100), (1000, 10000))
    )


def is_site_id(text: str) -> bool:
    return isinstance(text, str) and SITE_ID_RE.fullmatch(text) is not None


def check_site_id(text: str) -> str:
    """Return ``text`` if it is a well-formed site id, else raise ValueError saying why."""
    if not is_site_id(text):
        raise ValueError(f"{text!r} is not a site id: expected four groups of digits like 4324-24618-10-8812")
    return text
