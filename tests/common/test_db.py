"""Migrations and the shared site/operator queries against the real MariaDB."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from libs.common import cli, db, siteids
from libs.common.db import site_store
from libs.common.settings import Settings


@pytest.fixture
def scratch_settings(settings: Settings) -> Iterator[Settings]:
    """A second, empty database for migration tests."""
    import dataclasses

    name = f"habla_scratch_{uuid.uuid4().hex[:8]}"
    scratch = dataclasses.replace(settings, mysql_url=f"mysql+pymysql://root:@127.0.0.1:3306/{name}?charset=utf8mb4")
    yield scratch
    server = sa.create_engine("mysql+pymysql://root:@127.0.0.1:3306/")
    with server.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    server.dispose()


def _tables(settings: Settings) -> set[str]:
    engine = db.engine(settings)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_migrations_go_up_and_down_and_match_the_tables(scratch_settings: Settings) -> None:
    db.migrate(scratch_settings)
    assert _tables(scratch_settings) == set(db.metadata.tables)
    engine = db.engine(scratch_settings)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
    engine.dispose()
    assert diff == [], f"tables in libs/common/db differ from the migrations: {diff}"
    db.downgrade(scratch_settings, "base")
    assert _tables(scratch_settings) == set()
    db.migrate(scratch_settings)
    assert _tables(scratch_settings) == set(db.metadata.tables)


def _habla(settings: Settings, *argv: str) -> str:
    out = io.StringIO()
    cli.run(list(argv), settings, out)
    return out.getvalue()


def test_cli_creates_sites_and_operators(settings: Settings) -> None:
    created = _habla(
        settings,
        "site",
        "create",
        "--name",
        "Shoe shop",
        "--transcript-email",
        "owner@shop.test",
        "--domain",
        "shop.test",
    )
    site_id = created.split()[2]
    assert siteids.is_site_id(site_id)
    assert "/embed.js" in created and f"/status/{site_id}/image.png" in created
    assert f"{site_id}  Shoe shop" in _habla(settings, "site", "list")
    assert "now answers" in _habla(settings, "operator", "add", site_id, "Ana@LocalHost", "--name", "Ana")
    assert _habla(settings, "operator", "list", site_id) == "ana@localhost  Ana\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["operator", "add", "12-34", "ana@localhost"], "'12-34' is not a site id: expected four groups of digits"),
        (["operator", "add", "9999-99999-99-9999", "ana@localhost"], "no site 9999-99999-99-9999"),
        (["site", "show", "not-a-site"], "is not a site id"),
        (["site", "create", "--name", "x", "--id", "1-2-3-4"], "is not a site id"),
    ],
)
def test_cli_refuses_bad_site_ids(settings: Settings, argv: list[str], message: str) -> None:
    with pytest.raises(cli.CommandError, match=message):
        _habla(settings, *argv)


def test_cli_refuses_a_duplicate_operator_and_a_bad_jid(settings: Settings) -> None:
    site_id = _habla(settings, "site", "create", "--name", "Dup").split()[2]
    _habla(settings, "operator", "add", site_id, "bo@localhost")
    with pytest.raises(cli.CommandError, match=f"bo@localhost is already an operator of site {site_id}"):
        _habla(settings, "operator", "add", site_id, "BO@localhost")
    with pytest.raises(cli.CommandError, match="is not a bare XMPP address"):
        _habla(settings, "operator", "add", site_id, "bo@localhost/phone")


def test_cli_main_prints_one_clear_error_and_exits_2(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HABLA_MYSQL_URL", settings.mysql_url)
    assert cli.main(["operator", "add", "bad", "ana@localhost"]) == 2
    assert capsys.readouterr().err.startswith("habla: error: 'bad' is not a site id")


def test_cli_says_when_mysql_is_unreachable(settings: Settings) -> None:
    import dataclasses

    nowhere = dataclasses.replace(settings, mysql_url="mysql+pymysql://root:@127.0.0.1:1/habla")
    with pytest.raises(cli.CommandError, match=r"cannot use MySQL at .* Is MariaDB running"):
        _habla(nowhere, "site", "list")


def test_cli_moves_a_site_to_another_component_domain_and_back(settings: Settings, engine: sa.Engine) -> None:
    site_id = _habla(settings, "site", "create", "--name", "Moved").split()[2]
    with engine.connect() as conn:
        assert site_id in site_store.sites_of_xmpp_domain(
            conn, settings.default_component_domain, settings.default_component_domain
        )
    assert "is now served on chat-b.example.org" in _habla(
        settings, "site", "set-xmpp-domain", site_id, "Chat-B.example.org"
    )
    with engine.connect() as conn:
        assert site_store.sites_of_xmpp_domain(conn, "chat-b.example.org", settings.default_component_domain) == [
            site_id
        ]
        assert site_id not in site_store.sites_of_xmpp_domain(
            conn, settings.default_component_domain, settings.default_component_domain
        )
    assert "(default)" in _habla(settings, "site", "set-xmpp-domain", site_id, "default")
    for bad in ("chat b.example", "a" * 191, "chat..example", "chat-.example", "chat.exa\x01mple"):
        with pytest.raises(cli.CommandError, match="is not a component domain"):
            _habla(settings, "site", "set-xmpp-domain", site_id, bad)


def test_cli_shows_the_partition_domain_of_a_site(settings: Settings) -> None:
    import dataclasses

    from libs.common import partitions

    site_id = _habla(settings, "site", "create", "--name", "Partitioned").split()[2]
    shown = _habla(settings, "site", "show", site_id)
    assert f"XMPP: {settings.default_component_domain} (default)" in shown  # P = 1: as before
    four = dataclasses.replace(settings, gateway_partitions=4)
    n = partitions.partition_of(site_id, 4)
    domain = f"p{n}.{settings.default_component_domain}"
    shown = _habla(four, "site", "show", site_id)
    assert f"XMPP: {domain} (default, partition {n} of 4)" in shown
    assert f"operators add {site_id}@{domain}" in shown
    _habla(four, "site", "set-xmpp-domain", site_id, "chat-b.example.org")
    assert f"operators add {site_id}@chat-b.example.org" in _habla(four, "site", "show", site_id)
