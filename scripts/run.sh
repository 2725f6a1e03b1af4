#!/usr/bin/env bash
# `make run`: set up everything a fresh machine lacks, then run every process in the Procfile.
#
#   scripts/run.sh              # all processes in the Procfile
#   scripts/run.sh web worker   # only these (honcho process names)
#
# Settings (environment, with defaults):
#   PORT=8000  FLOWER_PORT=5555  WEB_WORKERS=2  WEB_THREADS=16
#   FLOWER_BASIC_AUTH            Flower's user:password; if unset, a random password is kept
#                                in $VAR_DIR/secrets/flower-basic-auth (never on a command line)
#   VAR_DIR=<repo>/var           SQLite databases, the private Redis's data, token keys
#                                ($VAR_DIR/auth) and local credentials ($VAR_DIR/credentials)
#   REDIS_URL                    use this Redis; if unset, start a private one on
#   REDIS_PORT=6380              127.0.0.1:$REDIS_PORT with its data in $VAR_DIR/redis
#   <SERVICE>_DATABASE_URL       one per service the workflows name (`python -m app.services`:
#                                ORDERS_, PRODUCTS_, ...); default: SQLite files in $VAR_DIR
#   SEED=1                       load the demo catalogue when the products table is empty
#
# Needs no terminal. SIGTERM or Ctrl-C stops every process it started, the private Redis too.
# Two copies run side by side when they differ in PORT, FLOWER_PORT, REDIS_PORT and VAR_DIR.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

export PORT=${PORT:-8000}
export FLOWER_PORT=${FLOWER_PORT:-5555}
VAR_DIR=${VAR_DIR:-$root/var}
VAR_DIR=$(realpath -m -- "$VAR_DIR")
export VAR_DIR
REDIS_PORT=${REDIS_PORT:-6380}
SEED=${SEED:-1}

log() { echo "==> $*" >&2; }

scripts/ensure-venv.sh
export PATH="$root/.venv/bin:$PATH"
export PYTHONUNBUFFERED=1
mkdir -p "$VAR_DIR"

redis_pid=""
honcho_pid=""

stop_redis() {
    [[ -n $redis_pid ]] || return 0
    if kill -0 "$redis_pid" 2>/dev/null; then
        log "stopping the private Redis on port $REDIS_PORT"
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 \
            || kill -TERM "$redis_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$redis_pid" 2>/dev/null || true
    fi
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
}

cleanup() {
    local status=$?
    # Ignore, not reset: a second signal must not cut the cleanup short. (A SIGTERM to the
    # process group reaches this script twice: once directly, once forwarded by make.)
    trap '' INT TERM HUP
    trap - EXIT
    if [[ -n $honcho_pid ]] && kill -0 "$honcho_pid" 2>/dev/null; then
        log "stopping the processes"
        kill -TERM "$honcho_pid" 2>/dev/null || true
        # honcho sends SIGTERM to each process group and SIGKILLs what is left after 5s.
        wait "$honcho_pid" 2>/dev/null || true
    fi
    stop_redis
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

if [[ -z ${REDIS_URL:-} ]]; then
    scripts/ensure-redis.sh
    if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        echo "something already answers on 127.0.0.1:$REDIS_PORT; set REDIS_PORT or REDIS_URL" >&2
        exit 1
    fi
    mkdir -p "$VAR_DIR/redis"
    log "starting a private Redis on 127.0.0.1:$REDIS_PORT (data in $VAR_DIR/redis)"
    # In its own session, so a Ctrl-C on the terminal does not stop Redis before the
    # processes that use it; cleanup shuts it down after them.
    setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$VAR_DIR/redis" \
        --appendonly yes --appendfsync everysec --save "" --daemonize no \
        --logfile "$VAR_DIR/redis/redis.log" </dev/null &
    redis_pid=$!
    for _ in $(seq 100); do
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        kill -0 "$redis_pid" 2>/dev/null \
            || { echo "redis-server exited; see $VAR_DIR/redis/redis.log" >&2; exit 1; }
        sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 \
        || { echo "redis-server did not answer; see $VAR_DIR/redis/redis.log" >&2; exit 1; }
    export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
fi

# Where everything is, set explicitly: no process falls back to a default of its own.
# The services are the workflows' (app/workflows.py), not a list kept here.
services=$(python -m app.services) || { echo "could not list the services" >&2; exit 1; }
database_vars=""
for service in $services; do
    var="$(printf '%s' "$service" | tr '[:lower:]' '[:upper:]')_DATABASE_URL"
    database_vars+=" $var"
    if [[ -z ${!var:-} ]]; then
        export "$var=sqlite:///$VAR_DIR/$service.db"
    fi
done

log "migrating the databases"
python -m app.schema
if [[ $SEED == 1 ]]; then
    python -m app.seed
fi

# What every later command needs to reach this system from a plain shell: `saga-dlq`,
# `python -m dlq`, `python -m app.auth` and `make demo` read it (config/localenv.py).
export SAGA_CLI="$root/.venv/bin/saga-dlq"
# Every process runs the saga the same way; the CLI's requeue too (README: two modes).
export SAGA_MODE=${SAGA_MODE:-orchestration}
env_file=$VAR_DIR/saga.env
{
    echo "# written by make run at $(date -u '+%Y-%m-%d %H:%M:%S UTC'); read by saga-dlq, make demo"
    # Every service's URL, from the same list as above: a service added to a workflow is
    # written here too, with no name to add to this script.
    for var in REDIS_URL $database_vars VAR_DIR PORT FLOWER_PORT SAGA_CLI SAGA_MODE; do
        printf '%s=%q\n' "$var" "${!var}"
    done
    printf 'AUTH_DIR=%q\n' "${AUTH_DIR:-$VAR_DIR/auth}"
} > "$env_file.tmp"
chmod 600 "$env_file.tmp" && mv "$env_file.tmp" "$env_file"

# Token keys and local development credentials (one token per file, readable by you only).
export AUTH_DIR=${AUTH_DIR:-$VAR_DIR/auth}
credentials=$VAR_DIR/credentials
python -m app.auth dev-credentials --dir "$credentials" >&2

# Flower's login: from the environment if given, else a random one kept in a file. Either
# way it reaches Flower through its environment, never through a command line.
if [[ -n ${FLOWER_BASIC_AUTH:-} ]]; then
    flower_login="the FLOWER_BASIC_AUTH you set"
else
    export FLOWER_BASIC_AUTH_FILE=$VAR_DIR/secrets/flower-basic-auth
    if [[ ! -s $FLOWER_BASIC_AUTH_FILE ]]; then
        mkdir -p "$VAR_DIR/secrets" && chmod 700 "$VAR_DIR/secrets"
        (umask 077 && python -c 'import secrets; print("operator:" + secrets.token_urlsafe(18))' \
            >"$FLOWER_BASIC_AUTH_FILE")
    fi
    flower_login="user:password in $FLOWER_BASIC_AUTH_FILE"
fi
# The same login as a curl config file: `curl -K var/secrets/flower.curlrc ...` keeps it
# off curl's command line.
mkdir -p "$VAR_DIR/secrets" && chmod 700 "$VAR_DIR/secrets"
(umask 077 && printf 'user = "%s"\n' "${FLOWER_BASIC_AUTH:-$(cat "$FLOWER_BASIC_AUTH_FILE")}" \
    >"$VAR_DIR/secrets/flower.curlrc")

redis_shown=$(printf '%s' "$REDIS_URL" | sed -E 's#//[^@/]*@#//***@#')
cat <<EOF

  API     http://127.0.0.1:$PORT   (GET /healthz, GET /products, POST /orders)
  Flower  http://127.0.0.1:$FLOWER_PORT   (login: $flower_login;
          for curl: curl -K $VAR_DIR/secrets/flower.curlrc http://127.0.0.1:$FLOWER_PORT/api/workers)
  Redis   $redis_shown
  Data    $VAR_DIR
  Config  $env_file (saga-dlq, python -m dlq, make demo read it from any shell)
  Tokens  $credentials/{customer-1,customer-2,admin,operator}.{token,header}
          (more: python -m app.auth issue-token --role customer --user 7)

  Try it (curl reads the Authorization header from the file):
    curl -H @$credentials/customer-1.header http://127.0.0.1:$PORT/orders
    make demo

EOF

honcho=(honcho start -f "$root/Procfile" -d "$root" -p "$PORT")
[[ -t 1 ]] || honcho+=(--no-colour)
if [[ -z $redis_pid ]]; then
    # Nothing of ours to clean up afterwards: honcho takes the signals itself.
    trap - INT TERM HUP EXIT
    exec "${honcho[@]}" "$@" </dev/null
fi
"${honcho[@]}" "$@" </dev/null &
honcho_pid=$!
wait "$honcho_pid"
