"""XEP-0115 verification strings (pure)."""

from __future__ import annotations

from services.im_gateway import disco


def test_caps_ver_matches_the_xep_0115_worked_example() -> None:
    # XEP-0115 §5.2: this identity and these features hash to this string.
    exodus = disco.Entity(
        "client",
        "pc",
        "Exodus 0.9.1",
        (
            "http://jabber.org/protocol/caps",
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "http://jabber.org/protocol/muc",
        ),
    )
    assert exodus.ver == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_each_kind_of_jid_has_its_own_caps() -> None:
    assert disco.entity_of("amber-otter-412") is disco.VISITOR
    assert disco.entity_of("4324-24618-10-8812") is disco.BOT
    assert disco.entity_of("") is disco.DOMAIN
    assert len({disco.VISITOR.ver, disco.BOT.ver, disco.DOMAIN.ver}) == 3
    element = disco.caps_element("amber-otter-412")
    assert element.get("ver") == disco.VISITOR.ver and element.get("hash") == "sha-1"
