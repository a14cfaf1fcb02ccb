#!/bin/sh
# Start Redis as the Sentinels see the group now (docker-compose's redis and redis-replica):
# the replica of the master they name, or a master if they name this server. Started as
# configured instead, a server whose master role passed to its replica while it was down
# comes back a master, and the Sentinels make it a replica only 8-18 s later; until it
# has the copy the master has no replica and every chat line is refused (README, "Redis
# with Sentinel"). When no Sentinel answers (the first start) it starts as configured: a
# replica of $HABLA_REDIS_START_REPLICAOF ("host port") if set, else a master.
# Arguments: redis-server's own (e.g. --appendonly yes).
set -eu
me=$(hostname -i 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true)
my_port=6379
previous=""
for arg in "$@"; do
    [ "$previous" = "--port" ] && my_port=$arg
    previous=$arg
done
master=""
for sentinel in $(echo "${HABLA_REDIS_SENTINELS:-}" | tr ',' ' '); do
    named=$(timeout 2 redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" --raw \
        SENTINEL GET-MASTER-ADDR-BY-NAME "${HABLA_REDIS_MASTER_NAME:-habla}" 2>/dev/null || true)
    host=$(echo "$named" | sed -n 1p)
    port=$(echo "$named" | sed -n 2p)
    case "$port" in
        '' | *[!0-9]*) continue ;;
    esac
    master="$host $port"
    break
done
if [ -z "$master" ]; then
    replicaof=${HABLA_REDIS_START_REPLICAOF:-no one}
elif [ "${master#* }" = "$my_port" ] && echo "$me" | grep -qxF "${master% *}"; then
    replicaof="no one"
else
    replicaof=$master
fi
echo "redis-start: the Sentinels name ${master:-no master}; starting with replicaof $replicaof" >&2
# The image's entrypoint (when there is one) drops root and owns /data as for a plain
# `redis-server` command.
if command -v docker-entrypoint.sh >/dev/null 2>&1; then
    set -- docker-entrypoint.sh redis-server "$@"
else
    set -- redis-server "$@"
fi
# Replicas get their copy at once: one replica needs no 5 s wait for others to share it.
# shellcheck disable=SC2086 # "host port" and "no one" are two words each
exec "$@" --repl-diskless-sync-delay 0 --replicaof $replicaof
