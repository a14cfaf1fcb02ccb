"""`make cluster`: the multi-host layout on one machine, one network namespace per host.

Hosts (tools/netns.py: a bridge, a veth pair and an address each on a private /24):
  edge        HAProxy: :8080 over the frontends, :8081 over the status images, :8082 the console
  frontend1/2 rpc_frontend + status_image
  gateway1/2  im_gateway, HABLA_GATEWAY_PARTITIONS=2 (the partitions spread over both)
  worker      transcript_worker + console + the development SMTP sink
  broker1/2/3 the 3-node RabbitMQ cluster (tools/rabbit_cluster.py; quorum queues), a node each
  redis1/2    Redis master / replica (tools/sentinel.py; Sentinel may swap them)
  sentinel1/2/3  a Sentinel each (quorum 2)
  db          MariaDB, its own datadir in a temp folder (tools/mariadb.py)
  xmpp        Prosody (tools/prosody.py), c2s :5222 with STARTTLS

The root namespace is on the bridge (.1), so a browser and an XMPP client on this machine reach the edge and
the XMPP server. Ctrl-C, or any failure while starting, stops every process and removes
every namespace, link and temp folder.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from libs.common import db, partitions
from libs.common.db import site_store
from libs.common.settings import Settings
from tools import haproxy, mariadb, netns, prosody, rabbit_cluster, sentinel
from tools.supervise import Child, run_until_signalled

ROOT = Path(__file__).resolve().parents[1]
HOSTS = [
    "edge",
    "frontend1",
    "frontend2",
    "gateway1",
    "gateway2",
    "worker",
    "broker1",
    "broker2",
    "broker3",
    "redis1",
    "redis2",
    "sentinel1",
    "sentinel2",
    "sentinel3",
    "db",
    "xmpp",
]
# Which services run on which host (services/<name>); the SMTP sink is a development helper.
SERVICES = {
    "frontend1": ["services.rpc_frontend", "services.status_image"],
    "frontend2": ["services.rpc_frontend", "services.status_image"],
    "gateway1": ["services.im_gateway"],
    "gateway2": ["services.im_gateway"],
    "worker": ["tools.smtp_sink", "services.transcript_worker", "services.console"],
}
PARTITIONS = 2
OPERATOR_USER = "operator"


@dataclass
class Layout:
    net: netns.Net
    dir: Path
    closers: list[Callable[[], None]] = field(default_factory=list)  # run last first
    children: list[Child] = field(default_factory=list)
    settings: Settings | None = None
    demo: dict[str, str] = field(default_factory=dict)
    folders: list[Path] = field(default_factory=list)  # the servers' temp folders (for the test)
    # The servers, for the failover tests (which kill and restart them on their hosts).
    redis: sentinel.SentinelSet | None = None
    broker: rabbit_cluster.Cluster | None = None
    xmpp: prosody.ProsodyConfig | None = None
    # Settings on top of the layout's own (the failover tests raise the rate limits:
    # every test visitor comes from this machine's one address).
    extra_env: dict[str, str] = field(default_factory=dict)

    def address(self, host: str) -> str:
        return self.net.hosts[host].address

    def host_at(self, address: str) -> str:
        return next(host.name for host in self.net.hosts.values() if host.address == address)

    def kill_host(self, host: str) -> list[int]:
        """A host that dies: SIGKILL every process in its namespace at once (no goodbye,
        no ack, no lease released; its peers see its connections reset)."""
        return self.net.kill(host)

    def revive(self, host: str, timeout_s: float = 30) -> None:
        """Start the host's services again (what its init system would do after a reboot)."""
        mine = [child for child in self.children if child.name.endswith(f" on {host}")]
        deadline = time.monotonic() + timeout_s
        while not all(child.process.poll() is None for child in mine):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the services of {host} did not start again")
            for child in mine:
                child.check()  # notices the death, restarts after its back-off (1 s)
            time.sleep(0.2)

    def stop_children(self) -> None:
        for child in reversed(self.children):
            child.stop()
        for child in self.children:
            child.wait(timeout=15)
        self.children.clear()

    def close(self) -> None:
        self.stop_children()
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                closer()
        self.closers.clear()
        self.net.close()  # SIGKILLs anything still in a namespace, then removes them
        shutil.rmtree(self.dir, ignore_errors=True)


def _servers(layout: Layout) -> Settings:
    """MariaDB, Redis + Sentinels, RabbitMQ, Prosody on their hosts: the services' settings."""
    net, subnet = layout.net, layout.net.subnet
    with net.inside("db"):
        database = mariadb.start(host=layout.address("db"))
    layout.closers.append(database.close)
    layout.folders.append(database.dir)
    db_password = secrets.token_urlsafe(16)
    mariadb.add_user(database, "habla", db_password, "habla", f"{subnet}.%")

    redis_set = sentinel.start(
        replicas=1,
        sentinels=3,
        data_hosts=[layout.address("redis1"), layout.address("redis2")],
        sentinel_hosts=[layout.address(f"sentinel{i}") for i in (1, 2, 3)],
        inside=lambda address: net.inside(layout.host_at(address)),
    )
    layout.redis = redis_set
    layout.closers.append(redis_set.close)
    layout.folders.append(redis_set.dir)

    brokers = ["broker1", "broker2", "broker3"]
    broker = rabbit_cluster.start(
        3, hosts=[layout.address(b) for b in brokers], inside=lambda i: net.inside(brokers[i])
    )
    layout.broker = broker
    layout.closers.append(broker.close)
    layout.folders.append(broker.dir)
    # Hex: a urlsafe token may start with "-", which rabbitmqctl takes for an option.
    amqp_password = secrets.token_hex(16)
    with net.inside("broker1"):
        first = broker.nodes[0]
        broker.ctl(first, "add_user", "habla", amqp_password)
        broker.ctl(first, "add_vhost", "habla")
        broker.ctl(first, "set_permissions", "-p", "habla", "habla", ".*", ".*", ".*")

    edge = layout.address("edge")
    base = Settings.from_env({})
    settings = Settings.from_env(
        {
            "HABLA_AMQP_URL": ",".join(node.url("habla", "habla", amqp_password) for node in broker.nodes),
            "HABLA_AMQP_QUORUM": "true",
            "HABLA_REDIS_URL": f"redis://{layout.address('redis1')}:{redis_set.data[0].port}/0",
            "HABLA_REDIS_SENTINELS": redis_set.addresses,
            "HABLA_REDIS_MASTER_NAME": redis_set.master_name,
            "HABLA_REDIS_WAIT_MS": "1000",
            "HABLA_MYSQL_URL": f"mysql+pymysql://habla:{db_password}@{database.host}:{database.port}/habla?charset=utf8mb4",
            "HABLA_SECRET_KEY": secrets.token_urlsafe(48),
            "HABLA_PUBLIC_URL": f"http://{edge}:8080",
            "HABLA_STATUS_PUBLIC_URL": f"http://{edge}:8081",
            "HABLA_CONSOLE_PUBLIC_URL": f"http://{edge}:8082",
            "HABLA_XMPP_COMPONENT_HOST": layout.address("xmpp"),
            "HABLA_GATEWAY_PARTITIONS": str(PARTITIONS),
            "HABLA_TRUSTED_PROXIES": edge,
            "HABLA_DRAIN_S": "2",
            "HABLA_STATE_DIR": str(layout.dir / "state"),
            **layout.extra_env,
        }
    )
    cfg = prosody.ProsodyConfig(
        dir=layout.dir / "prosody",
        domain=settings.xmpp_domain,
        component_domain=settings.xmpp_component_domain,
        partition_domains=tuple(partitions.all_domains(settings)),
        component_secret=settings.xmpp_component_secret,
        c2s_port=base.xmpp_c2s_port,
        component_port=base.xmpp_component_port,
        interface=layout.address("xmpp"),
        tls=True,
    )
    with net.inside("xmpp"):
        xmpp = prosody.start(cfg, timeout_s=30)
    layout.xmpp = cfg
    layout.closers.append(lambda: prosody.stop(xmpp))
    db.migrate(settings)
    layout.demo = _demo(layout, settings, cfg)
    return settings


def _demo(layout: Layout, settings: Settings, cfg: prosody.ProsodyConfig) -> dict[str, str]:
    """A demo site and its operator account (fresh each time: the layout keeps no data)."""
    password = secrets.token_hex(8)  # passed to prosodyctl: never a leading "-"
    operator_jid = f"{OPERATOR_USER}@{cfg.domain}"
    prosody.register(cfg, OPERATOR_USER, password)
    engine = db.engine(settings)
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, "demo@habla.localhost")
        site_id = site_store.create_site(
            conn,
            account,
            "Habla demo",
            transcript_emails=["demo@habla.localhost"],
            allowed_domains=["127.0.0.1", "localhost", layout.address("edge")],
        ).id
        site_store.add_operator(conn, site_id, operator_jid, "Demo operator")
    engine.dispose()
    return {
        "site_id": site_id,
        "operator_jid": operator_jid,
        "operator_password": password,
        "bot_jid": f"{site_id}@{partitions.site_domain(settings, site_id, None)}",
    }


def _services(layout: Layout, settings: Settings) -> None:
    for host, modules in SERVICES.items():
        address = layout.address(host)
        env = settings.to_env()
        env.update(
            {
                "HABLA_FRONTEND_HOST": address,
                "HABLA_STATUS_HOST": address,
                "HABLA_CONSOLE_HOST": address,
                "HABLA_OPS_HOST": address,
                "HABLA_FRONTEND_ID": host,
                "PYTHONUNBUFFERED": "1",
            }
        )
        for module in modules:
            argv = [*layout.net.prefix(host), sys.executable, "-m", module]

            def start(argv: list[str] = argv, env: dict[str, str] = env) -> subprocess.Popen[bytes]:
                # A session of its own: Ctrl-C reaches only us, and we stop the services
                # in order (frontends drain behind the edge first).
                return subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)

            layout.children.append(Child(f"{module.rsplit('.', 1)[-1]} on {host}", start))


def _edge(layout: Layout, settings: Settings) -> None:
    edge = layout.address("edge")
    fronts = [layout.address("frontend1"), layout.address("frontend2")]
    balancer = haproxy.Balancer(
        layout.dir / "haproxy",
        [
            haproxy.Pool("web", 8080, [settings.frontend_port] * 2, host=edge, backend_hosts=fronts),
            haproxy.Pool("status", 8081, [settings.status_port] * 2, host=edge, backend_hosts=fronts),
            haproxy.Pool("console", 8082, [settings.console_port], host=edge, backend_hosts=[layout.address("worker")]),
        ],
    )
    with layout.net.inside("edge"):
        process = haproxy.start(balancer)
    layout.closers.append(lambda: haproxy.stop(process))


def _wait_ready(layout: Layout, timeout_s: float = 180) -> None:
    """Until the edge answers /healthz on each of its ports (some frontend is up behind it)."""
    edge = layout.address("edge")
    deadline = time.monotonic() + timeout_s
    for port in (8080, 8081, 8082):
        while True:
            try:
                with urllib.request.urlopen(f"http://{edge}:{port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers behind the edge's port {port}; see the services' output above")
            for child in layout.children:
                child.check()  # a service that died at start is restarted meanwhile
            time.sleep(0.5)


def up(env: dict[str, str] | None = None) -> Layout:
    """Bring the whole layout up; on any failure (or Ctrl-C) everything is removed again.
    ``env``: settings on top of the layout's (HABLA_* names)."""
    net = netns.create()
    layout = Layout(net, Path(tempfile.mkdtemp(prefix=f"habla-cluster-{net.tag}-")), extra_env=dict(env or {}))
    try:
        for host in HOSTS:
            net.add_host(host)
        layout.settings = _servers(layout)
        _services(layout, layout.settings)
        _edge(layout, layout.settings)
        _wait_ready(layout)
    except BaseException:
        layout.close()
        raise
    return layout


def banner(layout: Layout) -> str:
    assert layout.settings is not None
    s, demo = layout.settings, layout.demo
    hosts = "\n".join(f"    {h.name:<10} {h.address:<14} {h.netns}" for h in layout.net.hosts.values())
    return f"""
Habla cluster is running on {len(layout.net.hosts)} network-namespace hosts. Ctrl-C stops and removes everything.

  Demo page         {s.public_url}/demo
  Site id           {demo["site_id"]}
  Status image      {s.status_public_url}/status/{demo["site_id"]}/image.png
  Owner console     {s.console_public_url}/account/
  Operator login    {demo["operator_jid"]}  password {demo["operator_password"]}
  XMPP server       {layout.address("xmpp")} port {s.xmpp_c2s_port}  (STARTTLS, self-signed certificate)
  The bot           {demo["bot_jid"]} (gateway partitions: {PARTITIONS})

  Hosts (ip netns exec <namespace> … to look inside):
{hosts}
"""


def main() -> int:
    try:
        layout = up()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # reported; up() removed what it made
        print(f"habla: the cluster did not start ({exc}); everything it made is removed", file=sys.stderr)
        return 1
    try:
        print(banner(layout), flush=True)
        run_until_signalled(layout.children)
    finally:
        layout.close()
        print(f"habla: cluster removed (leftovers: {netns.leftovers(layout.net.tag) or 'none'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
