"""Text that may enter an XML 1.0 document: what goes into every outgoing XMPP stanza.

XML 1.0's ``Char`` production allows tab, LF, CR, U+0020-U+D7FF, U+E000-U+FFFD and
U+10000-U+10FFFF. Anything else in a stanza makes the XMPP server close the whole
component stream with ``not-well-formed`` (checked on Prosody 0.12 and ejabberd 23.01,
see servers.md): one visitor typing ``\\x01`` would cut every operator of the domain.
So forbidden characters are removed, not escaped (XML 1.0 has no escape for them:
``&#1;`` is just as ill-formed). In a Python ``str`` a surrogate code point can only be
a lone one (a pair is decoded into one code point above U+FFFF), so the whole
surrogate block goes.

``one_line`` is for fields shown on one line (names, page titles and URLs, presence
status, ``!info`` fields): CR, LF and the other line breaks become a space, so nobody
can fake extra lines in what an operator reads.
"""

from __future__ import annotations

import re

# C0 controls except \t \n \r; all surrogates (only lone ones exist in a str); the
# two non-characters U+FFFE and U+FFFF.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Line breaks in the sense of str.splitlines (plus tab, which no single-line field
# wants): CR, LF, VT, FF, the file/group/record separators, NEL, LS and PS. A run
# of them becomes one space.
_BREAKS = re.compile("[\t\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")
# What is forbidden and no line break: removed before folding, so the breaks on
# either side of it fold into one space.
_FORBIDDEN_NOT_BREAK = re.compile("[\x00-\x08\x0e-\x1b\x1f\ud800-\udfff\ufffe\uffff]")


def clean(text: str) -> str:
    """``text`` minus what XML 1.0 forbids; everything else untouched."""
    return _FORBIDDEN.sub("", text)


def one_line(text: str) -> str:
    """``clean(text)`` with line breaks (and tabs) folded to single spaces."""
    # VT, FF and the separators are both breaks and forbidden: a break between two
    # words must leave a space, not glue them together.
    return _BREAKS.sub(" ", _FORBIDDEN_NOT_BREAK.sub("", text))
