"""Two owners: neither ever sees or changes the other's sites, even by guessing ids
in URLs. Unknown and foreign sites get the same 404, so ids cannot be probed."""

from __future__ import annotations

import sqlalchemy as sa

from libs.common import theme
from libs.common.db import site_store
from tests.console.conftest import Client, text
from tests.console.test_conversations import archive_conversation
from tests.console.test_theme import theme_form


async def test_an_owner_never_sees_or_changes_another_owners_site(make_client: object, engine: sa.Engine) -> None:
    alice: Client = make_client()  # type: ignore[operator]
    bob: Client = make_client()  # type: ignore[operator]
    alice_site = await alice.sign_up(site_name="Alice's shop")
    bob_site = await bob.sign_up(site_name="Bob's shop")
    await alice.post(f"/account/sites/{alice_site}/operators", {"jid": "ana@example.org"})
    conversation = archive_conversation(engine, alice_site, [("visitor", "secret question", False)])

    listing = text(await bob.get("/account/sites"))
    assert "Bob's shop" in listing.replace("&#39;", "'") and alice_site not in listing and "Alice" not in listing

    unknown = await bob.get("/account/sites/9999-99999-99-9999")
    for path in (
        f"/account/sites/{alice_site}",
        f"/account/sites/{alice_site}/theme",
        f"/account/sites/{alice_site}/operators",
        f"/account/sites/{alice_site}/conversations",
        f"/account/sites/{alice_site}/conversations/{conversation}",
        # Alice's conversation under Bob's own site id:
        f"/account/sites/{bob_site}/conversations/{conversation}",
    ):
        response = await bob.get(path)
        assert response.code == 404, path
        assert text(response).replace(alice_site, "") == text(response), path
        assert "secret question" not in text(response) and "ana@example.org" not in text(response)
        assert text(response).count("<h1>") == text(unknown).count("<h1>")  # same page as an unknown id

    for path, data in (
        (
            f"/account/sites/{alice_site}",
            {"name": "Pwned", "allowed_domains": "", "transcript_emails": "bob@evil.example"},
        ),
        (f"/account/sites/{alice_site}/theme", theme_form(colour_header_background="#000000")),
        (f"/account/sites/{alice_site}/operators", {"jid": "bob@evil.example"}),
        (f"/account/sites/{alice_site}/operators/remove", {"jid": "ana@example.org"}),
    ):
        response = await bob.post(path, data)
        assert response.code == 404, path

    with engine.connect() as conn:
        site = site_store.get_site(conn, alice_site)
        assert site.name == "Alice's shop" and site.transcript_emails != ["bob@evil.example"]
        assert site.theme == theme.default_theme()
        assert site_store.site_operators(conn, alice_site) == [("ana@example.org", "ana")]
    # Alice still sees and manages her own site.
    assert (await alice.get(f"/account/sites/{alice_site}/conversations/{conversation}")).code == 200


async def test_malformed_site_ids_are_not_found(client: Client) -> None:
    await client.sign_up()
    for site_id in ("1", "%3Cscript%3E", "1234-12345-12-1234%27%20OR%201=1", "..", "1234-12345-12-12345"):
        response = await client.get(f"/account/sites/{site_id}/theme")
        assert response.code == 404, site_id
        assert "<script>" not in text(response)


async def test_unknown_pages_get_the_console_404(client: Client) -> None:
    response = await client.get("/account/nothing-here")
    assert response.code == 404 and "Content-Security-Policy" in response.headers
