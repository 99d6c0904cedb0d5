#!/usr/bin/env bash
# The production profile (issue 15): `make up` / `make status` / `make down`.
#
#   up      a project-local PostgreSQL cluster on 127.0.0.1:$AIS_PG_PORT (Dagster runs, event
#           logs, schedules and the ledger on it), then dagster-daemon and dagster-webserver in
#           the background with their PIDs in runtime/service/*.pid
#   status  PostgreSQL, both PIDs, the daemons' heartbeats through the webserver's GraphQL API
#   down    stop the webserver and the daemon (their whole process groups, by PID), then PostgreSQL
#
# Everything lives under runtime/service (owner-only). As a normal user the cluster is an
# initdb data directory there; as root (PostgreSQL refuses to run as root) it is a Debian
# cluster "ais_service" owned by the postgres user (pg_createcluster), data under /var/lib.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
UV=${UV:-uv}
RUNTIME=${AIS_RUNTIME_DIR:-$ROOT/runtime}
SVC=$RUNTIME/service
PG_PORT=${AIS_PG_PORT:-55440}       # CI's throwaway cluster 'aisci' uses 55432
WEB_PORT=${AIS_WEB_PORT:-3070}      # `make dev` uses 3000
CLUSTER=ais_service
PG_VER=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1 || true)
PG_BIN=/usr/lib/postgresql/$PG_VER/bin

umask 077
mkdir -p "$SVC/logs" "$SVC/dagster_home"

log() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { [ "$(id -u)" = "0" ]; }

psql_admin() {  # psql as the cluster's superuser, on the local socket
  if as_root; then
    runuser -u postgres -- "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
  else
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SVC/pg" -p "$PG_PORT" -U postgres -d postgres "$@"
  fi
}

pg_up() {
  [ -n "$PG_VER" ] || die "PostgreSQL is not installed (apt-get install postgresql)"
  if [ ! -s "$SVC/pg_password" ]; then
    "$UV" run python -c "import secrets; print(secrets.token_urlsafe(24))" > "$SVC/pg_password"
  fi
  local pw; pw=$(cat "$SVC/pg_password")
  if as_root; then
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VER $CLUSTER"; then
      pg_createcluster -q "$PG_VER" "$CLUSTER" -p "$PG_PORT" -- --auth-host=scram-sha-256 --auth-local=peer >/dev/null
      # conf.d is included by Debian's postgresql.conf
      echo "listen_addresses = '127.0.0.1'" > "/etc/postgresql/$PG_VER/$CLUSTER/conf.d/ais_service.conf"
    fi
    pg_ctlcluster "$PG_VER" "$CLUSTER" start >/dev/null 2>&1 || pg_ctlcluster "$PG_VER" "$CLUSTER" status >/dev/null
  else
    if [ ! -f "$SVC/pg/data/PG_VERSION" ]; then
      mkdir -p "$SVC/pg"
      "$PG_BIN/initdb" -q -D "$SVC/pg/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    fi
    if ! "$PG_BIN/pg_ctl" -D "$SVC/pg/data" status >/dev/null 2>&1; then
      "$PG_BIN/pg_ctl" -D "$SVC/pg/data" -l "$SVC/logs/postgresql.log" -w -s \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $SVC/pg" start
    fi
  fi
  for _ in $(seq 1 30); do "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 1; done
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL did not come up on 127.0.0.1:$PG_PORT"
  psql_admin -c "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='ais') THEN CREATE ROLE ais LOGIN; END IF; END\$\$;" \
             -c "ALTER ROLE ais PASSWORD '$pw'"
  for db in ais_dagster ais_ledger; do
    psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 || psql_admin -c "CREATE DATABASE $db OWNER ais"
  done
  # libpq reads the password from here: no secret in a URL, a file or a process's arguments
  printf '127.0.0.1:%s:*:ais:%s\n' "$PG_PORT" "$pw" > "$SVC/pgpass"
}

service_env() {
  export DAGSTER_HOME=$SVC/dagster_home
  export PGPASSFILE=$SVC/pgpass
  export AIS_RUNTIME_DIR=$RUNTIME
  export AIS_DAGSTER_PG_URL="postgresql+psycopg2://ais@127.0.0.1:$PG_PORT/ais_dagster"
  export AIS_LEDGER_URL="postgresql+psycopg2://ais@127.0.0.1:$PG_PORT/ais_ledger"
  export DAGSTER_DISABLE_TELEMETRY=true DBT_SEND_ANONYMOUS_USAGE_STATS=false GX_ANALYTICS_ENABLED=false
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_bg() {  # name, command...: its own session (process group), PID recorded
  local name=$1; shift
  if alive "$SVC/$name.pid"; then log "$name already running (pid $(cat "$SVC/$name.pid"))"; return; fi
  setsid "$@" >"$SVC/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$SVC/$name.pid"
  log "$name started (pid $!, log $SVC/logs/$name.log)"
}

stop_bg() {  # backgrounded Dagster ignores SIGINT/SIGTERM: TERM the group, then KILL it
  local name=$1 pidf=$SVC/$1.pid
  if ! alive "$pidf"; then rm -f "$pidf"; return; fi
  local pid; pid=$(cat "$pidf")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidf"
  log "$name stopped (pid $pid)"
}

graphql() {
  curl -fsS -m 10 -H 'Content-Type: application/json' "http://127.0.0.1:$WEB_PORT/graphql" -d "$1"
}

up() {
  pg_up
  cp ais_pipelines/service/dagster.service.yaml "$SVC/dagster_home/dagster.yaml"
  service_env
  # Byte-compile once: a launched run re-imports the code location, compiling it every time
  # when no .pyc exists (PYTHONDONTWRITEBYTECODE) costs seconds per run.
  "$UV" run python -m compileall -q -j 0 .venv/lib/python3.*/site-packages ais_pipelines assets sensors resources \
    >/dev/null 2>&1 || true
  "$UV" run dagster instance migrate >/dev/null
  start_bg daemon "$UV" run dagster-daemon run -w workspace.yaml
  start_bg webserver "$UV" run dagster-webserver -w workspace.yaml -h 127.0.0.1 -p "$WEB_PORT"
  for _ in $(seq 1 120); do curl -fsS -m 2 "http://127.0.0.1:$WEB_PORT/server_info" >/dev/null 2>&1 && break; sleep 1; done
  curl -fsS -m 2 "http://127.0.0.1:$WEB_PORT/server_info" >/dev/null || die "webserver not answering; see $SVC/logs/webserver.log"
  log "up: Dagster UI http://127.0.0.1:$WEB_PORT  ·  PostgreSQL 127.0.0.1:$PG_PORT (ais_dagster, ais_ledger)"
  log "     DAGSTER_HOME=$SVC/dagster_home  ·  logs $SVC/logs  ·  check: make status  ·  stop: make down"
}

status() {
  local ok=0
  if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then log "postgresql  up   127.0.0.1:$PG_PORT"
  else log "postgresql  DOWN 127.0.0.1:$PG_PORT"; ok=1; fi
  for name in daemon webserver; do
    if alive "$SVC/$name.pid"; then log "$(printf '%-11s' "$name") up   pid $(cat "$SVC/$name.pid")"
    else log "$(printf '%-11s' "$name") DOWN"; ok=1; fi
  done
  local q='{"query":"{ instance { runQueuingSupported daemonHealth { allDaemonStatuses { daemonType healthy } } } }"}'
  if out=$(graphql "$q" 2>/dev/null); then
    printf '%s' "$out" | "$UV" run python -c '
import json, sys
inst = json.load(sys.stdin)["data"]["instance"]
print("run queue   " + ("queued (QueuedRunCoordinator)" if inst["runQueuingSupported"] else "NOT QUEUED"))
for d in inst["daemonHealth"]["allDaemonStatuses"]:
    print("  %-24s %s" % (d["daemonType"], "healthy" if d["healthy"] else "UNHEALTHY"))
sys.exit(0 if inst["runQueuingSupported"] else 1)' || ok=1
  else
    log "graphql     no answer on http://127.0.0.1:$WEB_PORT/graphql"; ok=1
  fi
  return $ok
}

down() {
  stop_bg webserver
  stop_bg daemon
  if [ -n "$PG_VER" ]; then
    if as_root; then
      pg_ctlcluster "$PG_VER" "$CLUSTER" stop 2>/dev/null || true
    elif [ -f "$SVC/pg/data/PG_VERSION" ]; then
      "$PG_BIN/pg_ctl" -D "$SVC/pg/data" -m fast -s stop 2>/dev/null || true
    fi
  fi
  log "down: webserver, daemon and PostgreSQL stopped (data kept; delete with make clean)"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) die "usage: ais_pipelines/service/service.sh up|status|down" ;;
esac
