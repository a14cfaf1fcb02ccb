"""Issue 11's reproductions against the console: clear 4xx answers, never a 500."""

from __future__ import annotations

import urllib.parse

import pytest

from tests.console.conftest import PASSWORD, Client, text, unique_email


@pytest.mark.parametrize(
    "target",
    ["/account/sites\r\nSet-Cookie: x=1", "/account/\n", "/account/\x00", "/account/sites\u2028", "/account/ é"],
)
async def test_log_in_with_control_characters_in_next_goes_home(make_client: object, target: str) -> None:
    email = unique_email()
    await make_client().sign_up(email)  # type: ignore[operator]
    client: Client = make_client()  # type: ignore[operator]
    page = await client.get("/account/login?next=" + urllib.parse.quote(target))
    assert page.code == 200
    response = await client.post("/account/login", {"email": email, "password": PASSWORD, "next": target})
    assert response.code == 302, text(response)
    # Tornado strips surrounding whitespace and some controls; what is left is printable.
    location = response.headers["Location"]
    assert location.startswith("/account/") and location.isprintable() and " " not in location
    assert "x" not in client.cookies


async def test_wrong_method_is_a_405_with_allow(client: Client) -> None:
    response = await client.post("/account/", {})  # with the CSRF token: only the method is wrong
    assert response.code == 405
    assert response.headers["Allow"] == "GET"
