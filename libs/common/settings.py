"""Every setting of every Habla service, read from environment variables only.

Defaults work on a development machine where RabbitMQ, Redis and MariaDB answer on
127.0.0.1 and `make run` has started Prosody. The README lists each variable; a test
checks that the README and this module agree.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


class SettingsError(ValueError):
    """An environment variable holds something unusable."""


def _env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, default)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


# The built-in key is public (it is in the source): with it anyone can forge a visitor's
# token or an owner's cookie. Only a development machine may run with it.
DEFAULT_SECRET_KEY = "dev-only-secret-change-me"
# 32 characters of a random key (secrets.token_urlsafe(24) and up) is 192+ bits: out of
# reach of guessing; shorter keys are usually a word someone typed.
MIN_SECRET_KEY_CHARS = 32
DEVELOPMENT = "development"
# Exit status for a refused configuration: EX_CONFIG from sysexits.h.
EXIT_CONFIG = 78


def _default_instance_id() -> str:
    # Unique per process on a host, readable in `rabbitmqctl list_queues`.
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """Typed settings; build with ``Settings.from_env()``. ``env`` names each variable."""

    # "development" (the default, for local runs and tests) or anything else, e.g.
    # "production": then every service refuses to start with a weak HABLA_SECRET_KEY.
    environment: str = field(default=DEVELOPMENT, metadata={"env": "HABLA_ENV"})

    # --- backing servers -------------------------------------------------------------
    # One broker, or the nodes of a RabbitMQ cluster comma-separated (a comma in a
    # password is written %2C): a service connects to one of them at random and moves
    # to the next when its node goes away (libs/common/amqp_cluster.py).
    amqp_url: str = field(default="amqp://guest:guest@127.0.0.1:5672/", metadata={"env": "HABLA_AMQP_URL"})
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata={"env": "HABLA_REDIS_URL"})
    # Redis behind Sentinel: the Sentinels' host:port, comma-separated, and the name
    # they know the master by. Set: services ask the Sentinels where the master is
    # (and again after a failover); HABLA_REDIS_URL then gives only the password and
    # database number. Empty: HABLA_REDIS_URL is the one Redis.
    redis_sentinels: str = field(default="", metadata={"env": "HABLA_REDIS_SENTINELS"})
    redis_master_name: str = field(default="habla", metadata={"env": "HABLA_REDIS_MASTER_NAME"})
    # With replicas: a conversation-log line is acknowledged only once a replica has it
    # too (WAIT 1 <ms>), so a failover to that replica cannot lose it; waited at most
    # this long (a replica on the same network confirms in about a millisecond), then
    # the write counts as failed and the caller retries it with the same message id.
    # 0: off (a single Redis, where the MySQL floor covers restarts).
    redis_wait_ms: int = field(default=0, metadata={"env": "HABLA_REDIS_WAIT_MS"})
    # Every Redis key and pub/sub channel starts with this, so several deployments
    # (or test runs) can share one Redis.
    redis_prefix: str = field(default="habla:", metadata={"env": "HABLA_REDIS_PREFIX"})
    mysql_url: str = field(
        default="mysql+pymysql://root:@127.0.0.1:3306/habla?charset=utf8mb4",
        metadata={"env": "HABLA_MYSQL_URL"},
    )

    # Where `make run` keeps Prosody's data, demo.env and sent mail (development only).
    state_dir: str = field(default=".habla", metadata={"env": "HABLA_STATE_DIR"})

    # --- behind a load balancer ----------------------------------------------------
    # A stopping frontend or status image answers 503 on /healthz this long before it
    # stops listening, so a load balancer probing /healthz (tools/haproxy.py: every
    # 0.5 s, 2 failures) takes it out first. 0: stop at once (no balancer).
    drain_s: int = field(default=0, metadata={"env": "HABLA_DRAIN_S"})
    # Addresses of the proxies in front of the frontends and status images, comma
    # separated. From these peers the client's address is the last X-Forwarded-For
    # entry (the one the proxy appended), so per-IP limits count visitors, not the
    # proxy. Empty: the peer address is the client (a forged header changes nothing).
    trusted_proxies: str = field(default="", metadata={"env": "HABLA_TRUSTED_PROXIES"})

    # --- logging ---------------------------------------------------------------------
    log_level: str = field(default="INFO", metadata={"env": "HABLA_LOG_LEVEL"})
    log_json: bool = field(default=False, metadata={"env": "HABLA_LOG_JSON"})

    # --- messaging -------------------------------------------------------------------
    # Unacknowledged messages a consumer holds at once: enough to batch MySQL writes
    # (archive batches up to 200), small enough that a crash redelivers little.
    amqp_prefetch: int = field(default=200, metadata={"env": "HABLA_AMQP_PREFETCH"})
    # Work queues are always quorum queues. On: retry and dead-letter queues are quorum
    # queues too (replicated). Needed on a cluster: a classic durable queue lives on one
    # node, and while that node is down declaring it fails, which stops every service
    # from reconnecting. Off by default because an existing broker already holds them
    # as classic queues and RabbitMQ refuses to redeclare a queue with another type.
    amqp_quorum: bool = field(default=False, metadata={"env": "HABLA_AMQP_QUORUM"})
    # Retry delays in ms for a failing handler, one per attempt; then dead-letter.
    amqp_retry_delays_ms: str = field(default="1000,5000,30000", metadata={"env": "HABLA_AMQP_RETRY_DELAYS_MS"})

    # --- rpc_frontend ----------------------------------------------------------------
    frontend_host: str = field(default="127.0.0.1", metadata={"env": "HABLA_FRONTEND_HOST"})
    frontend_port: int = field(default=8080, metadata={"env": "HABLA_FRONTEND_PORT"})
    # Names this instance's delivery queue; must be unique among running frontends.
    frontend_id: str = field(default_factory=_default_instance_id, metadata={"env": "HABLA_FRONTEND_ID"})
    # Frontend processes on the port (one per core); >1 makes `python -m services.rpc_frontend`
    # a supervisor of that many (services/rpc_frontend/processes.py).
    frontend_processes: int = field(default=1, metadata={"env": "HABLA_FRONTEND_PROCESSES"})
    public_url: str = field(default="http://127.0.0.1:8080", metadata={"env": "HABLA_PUBLIC_URL"})
    # Signs visitor tokens and account cookies. The default is for development only.
    secret_key: str = field(default=DEFAULT_SECRET_KEY, metadata={"env": "HABLA_SECRET_KEY"})
    # 30 minutes without a page view or heartbeat ends a visit (the web-analytics norm).
    session_ttl_s: int = field(default=1800, metadata={"env": "HABLA_SESSION_TTL_S"})
    max_message_chars: int = field(default=2000, metadata={"env": "HABLA_MAX_MESSAGE_CHARS"})
    # Lines (chat + offline form) one visitor may send per minute: a fast typist manages
    # about one line every 3 s, so 30 stops floods without ever touching a person.
    visitor_messages_per_min: int = field(default=30, metadata={"env": "HABLA_VISITOR_MESSAGES_PER_MIN"})
    # API requests per minute from one IP address: generous (600 = 10/s) because an
    # office or mobile carrier puts many visitors behind one address.
    ip_requests_per_min: int = field(default=600, metadata={"env": "HABLA_IP_REQUESTS_PER_MIN"})
    # Requests for site ids that do not exist, per IP per minute: a mistyped snippet
    # shows up a few times a minute; each miss may cost a MySQL query (the "no such
    # site" answer is then remembered 30 s), so a scan of ids stops here.
    ip_unknown_sites_per_min: int = field(default=20, metadata={"env": "HABLA_IP_UNKNOWN_SITES_PER_MIN"})
    # Page views one visitor may record per minute: people read a page for seconds at
    # least; 30 allows fast clicking through a single-page site.
    visitor_pageviews_per_min: int = field(default=30, metadata={"env": "HABLA_VISITOR_PAGEVIEWS_PER_MIN"})
    # The site /demo shows; empty: the ?site= query parameter, else the first site.
    demo_site_id: str = field(default="", metadata={"env": "HABLA_DEMO_SITE_ID"})

    # --- status_image ----------------------------------------------------------------
    status_host: str = field(default="127.0.0.1", metadata={"env": "HABLA_STATUS_HOST"})
    status_port: int = field(default=8081, metadata={"env": "HABLA_STATUS_PORT"})
    status_public_url: str = field(default="http://127.0.0.1:8081", metadata={"env": "HABLA_STATUS_PUBLIC_URL"})
    # Where the status image writes every site's answers as files for nginx to serve
    # (tools/nginx.py); empty: off, Tornado answers every request itself.
    status_files_dir: str = field(default="", metadata={"env": "HABLA_STATUS_FILES_DIR"})

    # --- console (site owners) -------------------------------------------------------
    # Its own origin, apart from the public widget API, so owner cookies never travel
    # with requests from the sites that embed the widget; 8082 follows 8080/8081.
    console_host: str = field(default="127.0.0.1", metadata={"env": "HABLA_CONSOLE_HOST"})
    console_port: int = field(default=8082, metadata={"env": "HABLA_CONSOLE_PORT"})
    # How browsers reach the console; an https:// URL makes its cookies Secure.
    console_public_url: str = field(default="http://127.0.0.1:8082", metadata={"env": "HABLA_CONSOLE_PUBLIC_URL"})

    # --- im_gateway / XMPP -----------------------------------------------------------
    # The component's domain: visitors and site bots are <name>@xmpp_component_domain.
    xmpp_component_domain: str = field(default="chat.localhost", metadata={"env": "HABLA_XMPP_COMPONENT_DOMAIN"})
    xmpp_component_secret: str = field(
        default="habla-dev-component-secret", metadata={"env": "HABLA_XMPP_COMPONENT_SECRET"}
    )
    xmpp_component_host: str = field(default="127.0.0.1", metadata={"env": "HABLA_XMPP_COMPONENT_HOST"})
    xmpp_component_port: int = field(default=5347, metadata={"env": "HABLA_XMPP_COMPONENT_PORT"})
    # The component domain of sites whose sites.xmpp_domain is NULL (every site made
    # before migration 0003, and new ones unless `habla site set-xmpp-domain` moves
    # them). Empty: this process's own HABLA_XMPP_COMPONENT_DOMAIN (one-domain set-ups).
    xmpp_default_component_domain: str = field(default="", metadata={"env": "HABLA_XMPP_DEFAULT_COMPONENT_DOMAIN"})
    # The XMPP server's own domain, where operator accounts live.
    xmpp_domain: str = field(default="localhost", metadata={"env": "HABLA_XMPP_DOMAIN"})
    xmpp_c2s_port: int = field(default=5222, metadata={"env": "HABLA_XMPP_C2S_PORT"})
    # An operator presence not refreshed for this long counts as unavailable, so a dead
    # gateway cannot leave a site online: 3 missed heartbeats of 30 s.
    presence_ttl_s: int = field(default=90, metadata={"env": "HABLA_PRESENCE_TTL_S"})
    presence_heartbeat_s: int = field(default=30, metadata={"env": "HABLA_PRESENCE_HEARTBEAT_S"})
    # Where the gateway's and the worker's /healthz and /metrics listen. They have no
    # authentication and show dependency errors, so loopback unless an operator opens
    # them on purpose (docker-compose sets 0.0.0.0 inside its private network).
    ops_host: str = field(default="127.0.0.1", metadata={"env": "HABLA_OPS_HOST"})
    gateway_metrics_port: int = field(default=9102, metadata={"env": "HABLA_GATEWAY_METRICS_PORT"})
    # The active gateway of a component domain holds this Redis lease, renewed every
    # ttl/3. A standby does not wait for it to expire: it takes over once the XMPP
    # server admits its component connection (the dead one's closed with it); the TTL
    # only bounds how long a holder cut off from Redis and XMPP keeps the token.
    gateway_lease_ttl_s: int = field(default=15, metadata={"env": "HABLA_GATEWAY_LEASE_TTL_S"})
    # Partitions (libs.common.partitions): sites on the default component domain are
    # spread over this many component domains p<N>.<domain> by a hash of the site id,
    # each with its own queues, XMPP connection and owner. 1 = no partitions (the
    # domain itself). Fixed per deployment: changing it moves sites (README).
    gateway_partitions: int = field(default=1, metadata={"env": "HABLA_GATEWAY_PARTITIONS"})
    # Which partitions this gateway process may own: "all" or numbers ("0,2,5"). It
    # claims free ones at start (those it owns least-loaded first) and stands by for
    # the others, taking them over when their owner dies.
    gateway_serve_partitions: str = field(default="all", metadata={"env": "HABLA_GATEWAY_SERVE_PARTITIONS"})
    # A followed visitor's page changes reach an operator at most once per this
    # interval (latest page wins): 2 s keeps a status line current while a visitor
    # clicking through 10 pages a second costs the operator one stanza per 2 s.
    gateway_presence_interval_ms: int = field(default=2000, metadata={"env": "HABLA_GATEWAY_PRESENCE_INTERVAL_MS"})
    # Presence stanzas sent to one operator per second, whatever the churn. Prosody's
    # stock mod_limits allows 10 kB/s per c2s connection and a visitor presence is
    # ~400 bytes: 5/s (2 kB/s) leaves most of that budget to chat lines.
    gateway_presence_ceiling_per_s: int = field(default=5, metadata={"env": "HABLA_GATEWAY_PRESENCE_CEILING_PER_S"})
    # Visitors the gateway keeps in one operator's roster per site (XEP-0356): those
    # chatting with or offered to them and those they follow always, then the site's
    # newest active visitors up to this many, so a busy site never bloats a roster.
    gateway_roster_cap: int = field(default=20, metadata={"env": "HABLA_ROSTER_CAP"})
    # Roster pushes (additions and removals) to one operator per second, whatever the
    # churn: each reaches every resource of the operator, like a presence, so the same
    # budget as gateway_presence_ceiling_per_s.
    gateway_roster_pushes_per_s: int = field(default=5, metadata={"env": "HABLA_ROSTER_PUSHES_PER_S"})
    # A new chat left unanswered this long marks its operator away for routing and is
    # offered to the others (a visitor who waits a minute usually leaves).
    gateway_answer_timeout_s: int = field(default=60, metadata={"env": "HABLA_GATEWAY_ANSWER_TIMEOUT_S"})
    # An operator line that cannot be logged (Redis) or published (RabbitMQ) is retried
    # this long, then bounced to the operator with an XMPP error their client shows:
    # long enough to ride out a Redis restart or a broker failover (seconds), short
    # enough that the operator knows while the visitor is still waiting.
    gateway_line_retry_s: int = field(default=20, metadata={"env": "HABLA_GATEWAY_LINE_RETRY_S"})

    # --- transcript_worker -----------------------------------------------------------
    worker_metrics_port: int = field(default=9103, metadata={"env": "HABLA_WORKER_METRICS_PORT"})
    # 30 minutes of silence closes a conversation (Olark's default idle timeout).
    conversation_idle_s: int = field(default=1800, metadata={"env": "HABLA_CONVERSATION_IDLE_S"})
    smtp_host: str = field(default="127.0.0.1", metadata={"env": "HABLA_SMTP_HOST"})
    smtp_port: int = field(default=8025, metadata={"env": "HABLA_SMTP_PORT"})
    smtp_user: str = field(default="", metadata={"env": "HABLA_SMTP_USER"})
    smtp_password: str = field(default="", metadata={"env": "HABLA_SMTP_PASSWORD"})
    smtp_starttls: bool = field(default=False, metadata={"env": "HABLA_SMTP_STARTTLS"})
    mail_from: str = field(default="Habla <transcripts@habla.localhost>", metadata={"env": "HABLA_MAIL_FROM"})
    # Which consumers this worker process runs (comma-separated): all by default; a
    # deployment may split them across processes (e.g. a process that only archives).
    worker_consumers: str = field(
        default="archive,closer,transcripts,email", metadata={"env": "HABLA_WORKER_CONSUMERS"}
    )
    # The archive writes a batch when it holds this many messages (the prefetch default,
    # so one full prefetch window is one transaction) ...
    archive_batch_size: int = field(default=200, metadata={"env": "HABLA_ARCHIVE_BATCH_SIZE"})
    # ... or when its oldest message has waited this long: 250 ms keeps a quiet site's
    # messages in MySQL well within a second while still batching bursts.
    archive_batch_ms: int = field(default=250, metadata={"env": "HABLA_ARCHIVE_BATCH_MS"})
    # How long the transcript builder waits (backing off) for the archive to catch up
    # with a closed conversation before handing the message to the retry queues: a
    # minute covers an archive batch, a MariaDB restart and a redelivery.
    transcript_wait_s: int = field(default=60, metadata={"env": "HABLA_TRANSCRIPT_WAIT_S"})
    # One SMTP attempt may take this long (connect + send): 30 s is aiosmtplib's
    # default read timeout and what slow corporate relays need.
    smtp_timeout_s: float = field(default=30.0, metadata={"env": "HABLA_SMTP_TIMEOUT_S"})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``env`` (default: os.environ); overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            if name not in env:
                continue  # dataclass default
            if f.type in ("int", int):
                values[f.name] = _env_int(env, name, 0)
            elif f.type in ("float", float):
                values[f.name] = _env_float(env, name, 0.0)
            elif f.type in ("bool", bool):
                values[f.name] = _env_bool(env, name, False)
            else:
                values[f.name] = _env_str(env, name, "")
        return cls(**values)

    def to_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment that makes ``from_env`` return these settings (for child
        processes): ``base`` (default os.environ) without its HABLA_* variables, plus ours."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("HABLA_")}
        for f in fields(self):
            value = getattr(self, f.name)
            env[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    def refuse_unsafe(self) -> None:
        """SettingsError if this configuration must not serve anyone outside development."""
        if self.environment == DEVELOPMENT:
            return
        if self.secret_key == DEFAULT_SECRET_KEY:
            raise SettingsError(
                f"HABLA_ENV={self.environment} but HABLA_SECRET_KEY is the public development default: "
                "anyone could forge visitor tokens; set it to a random string of "
                f"{MIN_SECRET_KEY_CHARS}+ characters (python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if len(self.secret_key) < MIN_SECRET_KEY_CHARS:
            raise SettingsError(
                f"HABLA_ENV={self.environment} but HABLA_SECRET_KEY has {len(self.secret_key)} characters; "
                f"use a random string of {MIN_SECRET_KEY_CHARS}+ "
                "(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )

    @property
    def amqp_urls(self) -> list[str]:
        """The broker nodes of HABLA_AMQP_URL, in the order given."""
        urls = [part.strip() for part in self.amqp_url.split(",") if part.strip()]
        if not urls:
            raise SettingsError("HABLA_AMQP_URL is empty; set it to amqp://user:password@host:5672/vhost")
        for url in urls:
            if not url.startswith(("amqp://", "amqps://")):
                raise SettingsError(f"HABLA_AMQP_URL: {url[:64]!r} is not an amqp:// or amqps:// URL")
        return urls

    @property
    def redis_sentinel_list(self) -> list[tuple[str, int]]:
        """(host, port) of each Sentinel in HABLA_REDIS_SENTINELS."""
        found = []
        for part in (p.strip() for p in self.redis_sentinels.split(",")):
            if not part:
                continue
            host, _, port = part.rpartition(":")
            if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(f"HABLA_REDIS_SENTINELS: {part[:64]!r} is not host:port")
            found.append((host.strip("[]"), int(port)))
        return found

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [part.strip() for part in self.trusted_proxies.split(",") if part.strip()]

    @property
    def retry_delays_ms(self) -> tuple[int, ...]:
        try:
            delays = tuple(int(part) for part in self.amqp_retry_delays_ms.split(",") if part.strip())
        except ValueError:
            raise SettingsError(
                f"HABLA_AMQP_RETRY_DELAYS_MS={self.amqp_retry_delays_ms!r} must be comma-separated milliseconds"
            ) from None
        return delays

    @property
    def default_component_domain(self) -> str:
        return self.xmpp_default_component_domain or self.xmpp_component_domain

    def redis_key(self, *parts: str) -> str:
        return self.redis_prefix + ":".join(parts)


def env_names() -> list[str]:
    """Every environment variable Habla reads (for the README check)."""
    return [f.metadata["env"] for f in fields(Settings)]
