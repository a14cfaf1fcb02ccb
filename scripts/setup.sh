#!/usr/bin/env bash
# Idempotent set-up for a Debian 12 machine: system packages, backing servers, the
# virtual environment. `make run` and `make test` both start here.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

# 1. System packages the project runs or tests against (installed only if missing).
need=()
command -v prosody >/dev/null || need+=(prosody)
# mod_privilege (XEP-0356): the gateway keeps operators' rosters itself.
[ -f /usr/lib/prosody/modules/mod_privilege/mod_privilege.lua ] || need+=(prosody-modules)
# The second XMPP server the gateway's tests run against (started per run, never as a service).
command -v ejabberdctl >/dev/null || need+=(ejabberd)
command -v thrift >/dev/null || need+=(thrift-compiler)
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
command -v redis-server >/dev/null || need+=(redis-server)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
# Postfix's smtp-sink (C), the SMTP sink bench/bench_worker.py measures the worker against
# (tools/smtp_sink, Python, is slower than the worker). Only where no other mail server is
# installed (postfix would replace it), and preseeded "No configuration": no main.cf is
# written, so Postfix itself never starts (its init script and unit need main.cf).
postfix_sink=0
if [ ! -x /usr/sbin/smtp-sink ] && [ ! -e /usr/sbin/sendmail ]; then need+=(postfix); postfix_sink=1; fi
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  [ "$postfix_sink" = 0 ] || echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. Backing servers on 127.0.0.1: start any that is installed but not answering.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 0.5; done; return 1; }
if ! port_open 5672; then
  say "starting RabbitMQ"; rabbitmq-server -detached >/dev/null 2>&1 || true
  rabbitmqctl await_startup >/dev/null 2>&1 || wait_port 5672 60
fi
if ! port_open 6379; then
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
  wait_port 6379 20
fi
if ! port_open 3306; then
  say "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_port 3306 60
fi
for p in 5672 6379 3306; do port_open $p || { say "nothing answers on 127.0.0.1:$p"; exit 1; }; done

# 3. The virtual environment, rebuilt only when a requirements file changed.
stamp=$(cat requirements-dev.txt libs/common/requirements.txt services/*/requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.habla-stamp 2>/dev/null)" != "$stamp" ]; then
  say "installing Python packages into .venv"
  python3 -m venv .venv
  # pip's chatter goes to a log; its tail is shown only if an install fails.
  log=.venv/pip-install.log
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -r requirements-dev.txt \
         && .venv/bin/pip install -q --no-deps -e .; } >"$log" 2>&1; then
    tail -n 30 "$log"; say "pip install failed; the whole log is $log"; exit 1
  fi
  echo "$stamp" > .venv/.habla-stamp
fi
