"""`make run`: the whole suite on this machine, with a demo site and an operator login.

Starts Prosody (generated config under .habla/prosody), migrates MySQL, creates the demo
site and operator once (remembered in .habla/demo.env), starts every service that
exists (`services/<name>/__main__.py`) plus development helpers, prints what a person
needs, and stops everything it started on Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from libs.common import db, partitions
from libs.common.db import site_store
from libs.common.settings import Settings
from tools import nginx, prosody
from tools.supervise import Child, run_until_signalled

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_USER = "operator"

# Development-only processes started alongside the services, if their module exists:
# (module, description). The SMTP sink keeps sent mail readable under .habla/mail.
DEV_HELPERS: list[tuple[str, str]] = [("tools.smtp_sink", "SMTP sink (mail saved to .habla/mail)")]


def _read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def _demo(settings: Settings, cfg: prosody.ProsodyConfig, state: Path) -> dict[str, str]:
    """The demo site, operator account and password: made once, then reused."""
    demo_env = state / "demo.env"
    known = _read_env(demo_env)
    password = known.get("HABLA_DEMO_OPERATOR_PASSWORD") or secrets.token_urlsafe(12)
    operator_jid = f"{OPERATOR_USER}@{cfg.domain}"
    prosody.register(cfg, OPERATOR_USER, password)
    engine = db.engine(settings)
    with engine.begin() as conn:
        site_id = known.get("HABLA_DEMO_SITE_ID", "")
        try:
            site_store.get_site(conn, site_id)
        except (ValueError, site_store.NotFound):
            account = site_store.account_for_email(conn, "demo@habla.localhost")
            site_id = site_store.create_site(
                conn,
                account,
                "Habla demo",
                transcript_emails=["demo@habla.localhost"],
                allowed_domains=["127.0.0.1", "localhost"],
            ).id
        if operator_jid not in dict(site_store.site_operators(conn, site_id)):
            site_store.add_operator(conn, site_id, operator_jid, "Demo operator")
    engine.dispose()
    demo = {
        "HABLA_DEMO_SITE_ID": site_id,
        "HABLA_DEMO_URL": f"{settings.public_url}/demo",
        "HABLA_CONSOLE_URL": f"{settings.console_public_url}/account/",
        "HABLA_DEMO_OPERATOR_JID": operator_jid,
        "HABLA_DEMO_OPERATOR_PASSWORD": password,
        "HABLA_DEMO_XMPP_HOST": "127.0.0.1",
        "HABLA_DEMO_XMPP_PORT": str(cfg.c2s_port),
        "HABLA_DEMO_STATUS_IMAGE": f"{settings.status_public_url}/status/{site_id}/image.png",
        "HABLA_DEMO_MAIL_DIR": str(state / "mail"),
    }
    demo_env.write_text(
        "# Written by `make run`; read by scripts. Not committed.\n" + "".join(f"{k}={v}\n" for k, v in demo.items())
    )
    return demo


def secret_key(state: Path) -> str:
    """`make run`'s token-signing key: random, made once, kept in .habla/ (owner-only).

    The built-in default is public (it is in the source), so anyone could forge a
    visitor's token with it; a key per checkout keeps even a demo honest.
    """
    path = state / "secret_key"
    if path.exists() and len(key := path.read_text().strip()) >= 32:
        return key
    key = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(key + "\n")
    return key


def _status_image_behind_nginx(settings: Settings, state: Path, env: dict[str, str]) -> list[Child]:
    """The status image as in production: nginx on its public port serves the files it
    writes (tools/nginx.py), Tornado on a free port answers the rest."""
    backend = nginx.free_port()
    files = Path(settings.status_files_dir or state / "status-files").resolve()
    status_env = {**env, "HABLA_STATUS_PORT": str(backend), "HABLA_STATUS_FILES_DIR": str(files)}
    front = nginx.StatusNginx(state / "nginx", files, settings.status_port, [backend], host=settings.status_host)
    return [
        Child(
            "status_image",
            lambda: subprocess.Popen([sys.executable, "-m", "services.status_image"], cwd=ROOT, env=status_env),
        ),
        Child("nginx (status image)", lambda: nginx.start(front)),
    ]


def _services() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def _module_exists(module: str) -> bool:
    return (ROOT / (module.replace(".", "/") + ".py")).exists()


def main() -> int:
    settings = Settings.from_env()
    state = (ROOT / settings.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    print("habla: migrating MySQL …", flush=True)
    try:
        db.migrate(settings)
    except sa.exc.OperationalError as exc:
        print(f"habla: cannot reach MySQL ({exc.orig}); is MariaDB running on 127.0.0.1:3306?", file=sys.stderr)
        return 1
    cfg = prosody.ProsodyConfig(
        dir=state / "prosody",
        domain=settings.xmpp_domain,
        component_domain=settings.xmpp_component_domain,
        partition_domains=tuple(partitions.all_domains(settings)),
        component_secret=settings.xmpp_component_secret,
        c2s_port=settings.xmpp_c2s_port,
        component_port=settings.xmpp_component_port,
        tls=True,
    )
    print(f"habla: starting Prosody on 127.0.0.1:{cfg.c2s_port} (component port {cfg.component_port}) …", flush=True)
    try:
        xmpp = prosody.start(cfg)
    except RuntimeError as exc:
        print(f"habla: {exc}", file=sys.stderr)
        return 1
    children = [Child("prosody", lambda: prosody.start(cfg), running=xmpp)]
    demo = _demo(settings, cfg, state)
    env = {
        **os.environ,
        "HABLA_XMPP_C2S_PORT": str(cfg.c2s_port),
        # A key of the caller's own is kept; the built-in default is replaced.
        "HABLA_SECRET_KEY": (
            settings.secret_key if settings.secret_key != Settings.from_env({}).secret_key else secret_key(state)
        ),
    }

    def starter(module: str) -> Callable[[], subprocess.Popen[bytes]]:
        return lambda: subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env)

    for module, what in DEV_HELPERS:
        if _module_exists(module):
            children.append(Child(what, starter(module)))
    for name in _services():
        if name == "status_image" and nginx.binary() is not None:
            children += _status_image_behind_nginx(settings, state, env)
        else:
            children.append(Child(name, starter(f"services.{name}")))

    print(
        f"""
Habla is running. Ctrl-C stops everything.

  Demo page         {demo["HABLA_DEMO_URL"]}
  Site id           {demo["HABLA_DEMO_SITE_ID"]}
  Status image      {demo["HABLA_DEMO_STATUS_IMAGE"]}
  Owner console     {demo["HABLA_CONSOLE_URL"]}  (sign up there to make sites of your own)
  Operator login    {demo["HABLA_DEMO_OPERATOR_JID"]}  password {demo["HABLA_DEMO_OPERATOR_PASSWORD"]}
  XMPP server       {demo["HABLA_DEMO_XMPP_HOST"]} port {demo["HABLA_DEMO_XMPP_PORT"]}
                    (STARTTLS, self-signed certificate: accept it once in your client)
  Sent mail         {demo["HABLA_DEMO_MAIL_DIR"]}
  Services          {", ".join(_services()) or "none yet"}

Log in with any XMPP client (Gajim, Dino, profanity …) as the operator and add
{demo["HABLA_DEMO_SITE_ID"]}@{partitions.site_domain(settings, demo["HABLA_DEMO_SITE_ID"], None)}
if it is not in your roster yet.
These values are also in {state / "demo.env"}.
""",
        flush=True,
    )

    # A dead service is reported and restarted with a back-off (tools/supervise.py).
    run_until_signalled(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
