"""Who is speaking in an operator's chat window: Habla itself, or the visitor.

Command replies and notices ("The visitor ended the chat", "Bob took this chat") are
sent from the visitor's JID, type chat, into the same conversation window the
operator is answering in: a bot contact or a "normal"/"headline" message would open
another window (Gajim, Psi) or a popup, and the operator would lose the context.
What marks them is a prefix, ``[Habla] ``, and that a visitor cannot produce it:
any line of a visitor's message that starts with an opening bracket (after
whitespace and invisible format characters, with look-alike forms folded by NFKC)
is shown quoted, ``> [Habla] …``. Any bracket, not only "[Habla]": letters that
merely look alike (a Cyrillic a, U+0430) survive every normalisation, brackets do not.
Parentheses are left alone; "(smiles)" is ordinary chat.
"""

from __future__ import annotations

import unicodedata

PREFIX = "[Habla] "
QUOTE = "> "


def from_habla(text: str) -> str:
    """A line Habla itself says to an operator."""
    return PREFIX + text


def _could_pass_for_habla(line: str) -> bool:
    # NFKC folds full-width and other compatibility forms of "[" into "[".
    for ch in unicodedata.normalize("NFKC", line):
        if ch.isspace() or unicodedata.category(ch) == "Cf":  # invisible in a client
            continue
        return unicodedata.category(ch) == "Ps" and ch != "("
    return False


def from_visitor(body: str) -> str:
    """A visitor's line as the operator sees it: lines that could pass for Habla's
    own are quoted, so only Habla's lines start with a bracket. Linear in the
    body's length (bounded by the message size limit)."""
    return "\n".join(QUOTE + line if _could_pass_for_habla(line) else line for line in body.split("\n"))
