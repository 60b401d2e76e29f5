#!/usr/bin/env bash
# Test environment for berth: installs what is missing (apt), starts PostgreSQL,
# Redis and a Docker registry on loopback, builds and pushes the test images,
# then checks formatting and clippy lints and runs the whole test suite with
# cargo-nextest. The lint and the build run in the background while the
# services are set up.
#
#   scripts/test-env.sh [nextest run args...]  set up, lint (fmt, clippy), then cargo nextest run --workspace
#   scripts/test-env.sh --env-only             set up, print `export VAR=value` lines only
#       eval "$(scripts/test-env.sh --env-only)"
#
# Safe to run again: services already answering on their ports are reused,
# dead ones are restarted. Services are left running on purpose.
set -euo pipefail

PG_PORT=55432
REDIS_PORT=56379
REGISTRY_ADDR=127.0.0.1:55000
STATE=${BERTH_TEST_STATE_DIR:-/tmp/berth-test-env}
WAIT_SECS=60

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

ENV_ONLY=0
if [[ ${1:-} == --env-only ]]; then
  ENV_ONLY=1
  shift
  # Only the export lines may reach stdout; keep it as fd 3 and send
  # everything else (our logs, apt, docker, pg_ctl) to stderr.
  exec 3>&1 1>&2
fi

export BERTH_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:${PG_PORT}/postgres"
export BERTH_TEST_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}"
export BERTH_TEST_REGISTRY="$REGISTRY_ADDR"
export BERTH_TEST_IMAGE="$BERTH_TEST_REGISTRY/berth-test/app"
export BERTH_TEST_SLEEPER="$BERTH_TEST_REGISTRY/berth-test/sleeper"
# The app v1 image with a config label (a whole reference, tag included).
export BERTH_TEST_LABELLED_IMAGE="$BERTH_TEST_IMAGE:labelled"
# The API fuzzer (tests/fuzz_api.rs), installed below into a virtual environment.
SCHEMATHESIS_VERSION=4.32.5
export BERTH_TEST_SCHEMATHESIS="$STATE/venv/bin/schemathesis"
export BERTH_TEST_CHROMIUM=/usr/bin/chromium
export BERTH_TEST_CHROMEDRIVER=/usr/bin/chromedriver
EXPORTS=(BERTH_TEST_PG_BIN BERTH_TEST_DATABASE_URL BERTH_TEST_REDIS_URL BERTH_TEST_REGISTRY BERTH_TEST_IMAGE BERTH_TEST_SLEEPER BERTH_TEST_LABELLED_IMAGE BERTH_TEST_SCHEMATHESIS BERTH_TEST_CHROMIUM BERTH_TEST_CHROMEDRIVER)

log() { printf '[test-env] %s\n' "$*" >&2; }
die() { printf '[test-env] ERROR: %s\n' "$*" >&2; exit 1; }

# Poll a readiness command until it succeeds; on timeout, or as soon as the
# process we just started (pid, may be empty) has died, show the service log.
wait_for() { # name logfile pid cmd...
  local name=$1 logfile=$2 pid=$3; shift 3
  local deadline=$((SECONDS + WAIT_SECS)) why=""
  until "$@" >/dev/null 2>&1; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then why="exited"; fi
    ((SECONDS >= deadline)) && why="did not come up within ${WAIT_SECS}s"
    if [[ -n $why ]]; then
      log "$name $why; last lines of $logfile:"
      tail -n 40 "$logfile" >&2 2>/dev/null || true
      die "$name is not available"
    fi
    sleep 0.5
  done
  log "$name is up"
}

as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

mkdir -p "$STATE"
chmod 755 "$STATE" # the postgres user must be able to reach its data dir

# ------------------------------------------------------ lint and build
# Formatting first, then one build of every test target with clippy as the
# workspace's compiler: the lints are the same as `cargo clippy --workspace
# --all-targets -- -D warnings` (the benchmarks are compiled into the e2e
# tests), and dependencies are compiled once instead of once for clippy and
# once for the tests. It needs none of the services, so it runs while they
# are set up; a finding fails the run before any test.
BUILD_PID=
if ((!ENV_ONLY)); then
  # CI shells may not have rustup's bin dir on PATH.
  command -v cargo >/dev/null || PATH=$HOME/.cargo/bin:$PATH
  cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing from the Rust toolchain (the lint gate needs \`cargo fmt\`)"
  CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
  [[ -x $CLIPPY_DRIVER ]] || die "clippy is missing from the Rust toolchain (the lint gate needs clippy-driver)"
  cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest is missing (the suite runs under \`cargo nextest run\`)"
  export RUSTC_WORKSPACE_WRAPPER=$CLIPPY_DRIVER
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
  BUILD_LOG="$STATE/build.log"
  (
    cd "$REPO_ROOT"
    echo "lint: cargo fmt --all -- --check"
    cargo fmt --all -- --check || { echo "lint: code is not formatted; run \`cargo fmt --all\`"; exit 1; }
    echo "lint and build: cargo nextest run --workspace --no-run, clippy -D warnings"
    cargo nextest run --workspace --no-run || { echo "lint or build failed (above)"; exit 1; }
  ) >"$BUILD_LOG" 2>&1 &
  BUILD_PID=$!
  trap '[[ -n $BUILD_PID ]] && kill "$BUILD_PID" 2>/dev/null || true' EXIT
  log "lint and build started in the background (log: $BUILD_LOG)"
fi

# One setup at a time: two runs racing would both initdb / start daemons.
exec 9>"$STATE/lock"
flock -w 600 9 || die "another test-env.sh holds $STATE/lock"

# Every daemon we start must not inherit fd 3 (an `eval "$(...)"` would then
# wait for it forever) nor fd 9 (the lock would never be released).
# That is what the `3>&- 9>&-` on each daemon start below is for.

# ---------------------------------------------------------------- packages
pg_bindir() {
  # /usr/local/bin/initdb may exist too; we want the Debian server binaries.
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $d && -x $d/initdb && -x $d/pg_ctl ]] && echo "$d"
}
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
pg_bindir >/dev/null || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
[[ -x /usr/bin/docker-registry ]] || missing+=(docker-registry)
# The images are FROM scratch, so /bin/busybox must be the static build.
pkg_installed busybox-static || missing+=(busybox-static)
command -v curl >/dev/null || missing+=(curl)
command -v git >/dev/null || missing+=(git)
# `promtool check metrics` on a live /metrics (tests/metrics.rs).
command -v promtool >/dev/null || missing+=(prometheus)
docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || missing+=(docker.io)
# Debian's python (not whatever python3 comes first on PATH) with venv, for schemathesis.
[[ -x /usr/bin/python3 ]] || missing+=(python3)
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# The console's browser tests (tests/console_browser.rs): headless chromium
# driven over WebDriver by its own driver, from Debian, so nothing is downloaded.
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)

if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  as_root apt-get -q update 3>&- 9>&-
  # Recommends would pull in e.g. needrestart for docker.io; none are needed.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -q -y -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" 3>&- 9>&-
fi

# ------------------------------------------------------------ schemathesis
# The API fuzzer, pinned, from PyPI into a virtual environment of its own.
if [[ "$("$BERTH_TEST_SCHEMATHESIS" --version 2>/dev/null)" != *"version $SCHEMATHESIS_VERSION"* ]]; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $STATE/venv"
  rm -rf "$STATE/venv"
  /usr/bin/python3 -m venv "$STATE/venv" 3>&- 9>&- || die "could not create a Python virtual environment in $STATE/venv"
  "$STATE/venv/bin/python" -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION" 3>&- 9>&- ||
    die "could not install schemathesis $SCHEMATHESIS_VERSION from PyPI"
fi

# ------------------------------------------------------------------ docker
# No systemd here: if the engine is not answering, start dockerd ourselves.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: $STATE/dockerd.log)"
  as_root setsid dockerd </dev/null >"$STATE/dockerd.log" 2>&1 3>&- 9>&- &
  wait_for docker "$STATE/dockerd.log" $! docker info
fi

# Containers of earlier crashed test runs (tests use owner names `bt-...`).
# Only those older than 30 minutes: a test run going on beside this one
# (a developer's shell) keeps its containers.
cutoff=$(( $(date +%s) - 1800 ))
stale=$(docker ps -a --format '{{.ID}}|{{.Label "io.berth.owner"}}|{{.Label "io.berth.test"}}|{{.CreatedAt}}' |
  while IFS='|' read -r id owner testlabel created; do
    [[ $owner =~ ^(bt-|berthtest) || $testlabel == 1 ]] || continue
    # CreatedAt looks like "2026-11-23 03:55:12 +0000 UTC".
    ts=$(date -d "${created% *}" +%s 2>/dev/null || echo 0)
    if (( ts < cutoff )); then echo "$id"; fi
  done | sort -u)
if [[ -n $stale ]]; then
  log "removing stale test containers: $(echo $stale)"
  docker rm -f $stale >/dev/null
fi
# Networks of crashed runs (named after their owner, bt-...), once unused.
for net in $(docker network ls --format '{{.Name}}' | grep -E '^bt-' || true); do
  docker network rm "$net" >/dev/null 2>&1 || true
done

# -------------------------------------------------------------- postgresql
PG_BIN=$(pg_bindir) || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
# For tests that run (and restart) a cluster of their own (tests/db_faults.rs).
export BERTH_TEST_PG_BIN=$PG_BIN
PGDIR=$STATE/pg
PGDATA=$PGDIR/data
PGLOG=$PGDIR/postgres.log

# PostgreSQL refuses to run as root; cd so it does not complain about /root.
as_pg() { (cd "$PGDIR" && if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi); }
pg_ready() { psql "$BERTH_TEST_DATABASE_URL" -Atqc 'select 1' >/dev/null 2>&1; }

if pg_ready; then
  log "reusing PostgreSQL on 127.0.0.1:$PG_PORT"
else
  mkdir -p "$PGDIR"
  ((EUID == 0)) && chown postgres:postgres "$PGDIR"
  chmod 700 "$PGDIR"
  # A cluster of ours that runs but does not answer: stop it and start over.
  if [[ -f $PGDATA/postmaster.pid ]] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    log "stopping unresponsive PostgreSQL"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w stop || true
  fi
  # Throw-away cluster: re-create it if missing, half-made, or of another major version.
  if [[ "$(cat "$PGDATA/PG_VERSION" 2>/dev/null)" != "$(basename "$(dirname "$PG_BIN")")" ]]; then
    log "creating PostgreSQL cluster in $PGDATA"
    rm -rf "$PGDATA"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$PGDIR/initdb.log" 2>&1 ||
      { tail -n 40 "$PGDIR/initdb.log" >&2; die "initdb failed"; }
    # Loopback only (trust auth); durability is irrelevant for tests, speed is not;
    # parallel tests each open a pool, hence the connection headroom.
    cat >>"$PGDATA/postgresql.conf" <<EOF

# berth test environment
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGDIR'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT (log: $PGLOG)"
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -t "$WAIT_SECS" -w start 3>&- 9>&- ||
    { tail -n 40 "$PGLOG" >&2; die "PostgreSQL did not start (port $PG_PORT taken?)"; }
  wait_for PostgreSQL "$PGLOG" "" pg_ready
fi

# ------------------------------------------------------------------- redis
REDIS_DIR=$STATE/redis
redis_ready() { [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }

if redis_ready; then
  log "reusing Redis on 127.0.0.1:$REDIS_PORT"
else
  mkdir -p "$REDIS_DIR"
  # An instance of ours that is alive but does not answer: replace it.
  if [[ -f $REDIS_DIR/redis.pid ]] && grep -q redis-server "/proc/$(cat "$REDIS_DIR/redis.pid")/cmdline" 2>/dev/null; then
    kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
    sleep 1
  fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT (log: $REDIS_DIR/redis.log)"
  # No persistence: tests start from whatever they write themselves.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --save '' --appendonly no --dir "$REDIS_DIR" \
    --logfile "$REDIS_DIR/redis.log" --pidfile "$REDIS_DIR/redis.pid" </dev/null 3>&- 9>&- ||
    log "redis-server failed to start"
  wait_for Redis "$REDIS_DIR/redis.log" "" redis_ready
fi

# ---------------------------------------------------------------- registry
REG_DIR=$STATE/registry
registry_ready() { curl -fsS --max-time 2 -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }

if registry_ready; then
  log "reusing registry on $REGISTRY_ADDR"
else
  mkdir -p "$REG_DIR/data"
  # Plain HTTP is fine: Docker treats registries on 127.0.0.0/8 as insecure.
  # Deletes are enabled so tests can remove manifests.
  cat >"$REG_DIR/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
  if [[ -f $REG_DIR/registry.pid ]] && grep -q docker-registry "/proc/$(cat "$REG_DIR/registry.pid")/cmdline" 2>/dev/null; then
    kill "$(cat "$REG_DIR/registry.pid")" 2>/dev/null || true
    sleep 1
  fi
  log "starting registry on $REGISTRY_ADDR (log: $REG_DIR/registry.log)"
  setsid /usr/bin/docker-registry serve "$REG_DIR/config.yml" </dev/null >"$REG_DIR/registry.log" 2>&1 3>&- 9>&- &
  echo $! >"$REG_DIR/registry.pid"
  wait_for registry "$REG_DIR/registry.log" $! registry_ready
fi

# ------------------------------------------------------------------ images
# Nothing can be pulled from the internet, so the images are FROM scratch
# plus Debian's static busybox. Files are only rewritten when they change so
# the build cache keeps digests stable between runs.
IMG_DIR=$STATE/images
put() { # path content: write only if different
  if [[ ! -f $1 || "$(cat "$1")" != "$2" ]]; then printf '%s\n' "$2" >"$1"; fi
}
make_context() { # dir cmd-json [version]
  local dir=$1 cmd=$2 version=${3:-}
  mkdir -p "$dir/www"
  cmp -s /bin/busybox "$dir/busybox" || cp /bin/busybox "$dir/busybox"
  [[ $version == broken ]] || put "$dir/www/healthz" ok
  put "$dir/www/version" "$version"
  # --install gives the image /bin/sh, wget, ... for exec and health checks.
  put "$dir/Dockerfile" "FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
COPY www /www
ENTRYPOINT [\"/bin/busybox\"]
CMD $cmd"
}
HTTPD='["httpd", "-f", "-p", "8080", "-h", "/www"]'
make_context "$IMG_DIR/app-v1" "$HTTPD" v1
make_context "$IMG_DIR/app-v2" "$HTTPD" v2 # different /www/version => different digest
make_context "$IMG_DIR/sleeper" '["sleep", "3600"]' sleeper
# Runs, but fails its health check: no /healthz (a bad release).
make_context "$IMG_DIR/app-broken" "$HTTPD" broken
rm -f "$IMG_DIR/app-broken/www/healthz"

# The classic builder needs no buildx plugin and never touches the network.
export DOCKER_BUILDKIT=0
build() { # [--label key=value]... context tag...
  local opts=()
  while [[ ${1:-} == --label ]]; do opts+=("$1" "$2"); shift 2; done
  local ctx=$1; shift
  local tags=() t
  for t in "$@"; do tags+=(-t "$t"); done
  # Output only on failure: the classic builder prints a deprecation notice every time.
  local out
  out=$(docker build -q ${opts[@]+"${opts[@]}"} "${tags[@]}" "$ctx" 2>&1) || { printf '%s\n' "$out" >&2; die "docker build of $ctx failed"; }
}
log "building test images"
# `latest` is put back on v1 at every run: tests may move it to v2.
build "$IMG_DIR/app-v1" "$BERTH_TEST_IMAGE:v1" "$BERTH_TEST_IMAGE:latest"
build "$IMG_DIR/app-v2" "$BERTH_TEST_IMAGE:v2"
build "$IMG_DIR/sleeper" "$BERTH_TEST_SLEEPER:v1"
build "$IMG_DIR/app-broken" "$BERTH_TEST_IMAGE:broken"
# v1 plus a label (the classic builder adds it as a last LABEL step).
build --label io.berth.store.launch_state.schema_version=2 "$IMG_DIR/app-v1" "$BERTH_TEST_LABELLED_IMAGE"

log "pushing test images to $BERTH_TEST_REGISTRY"
for ref in "$BERTH_TEST_IMAGE:v1" "$BERTH_TEST_IMAGE:v2" "$BERTH_TEST_IMAGE:latest" "$BERTH_TEST_IMAGE:broken" "$BERTH_TEST_SLEEPER:v1" "$BERTH_TEST_LABELLED_IMAGE"; do
  docker push -q "$ref" >/dev/null || die "docker push $ref failed"
  log "  $(docker inspect --format '{{index .RepoDigests 0}}' "$ref" 2>/dev/null || echo "$ref") ($ref)"
done

flock -u 9
exec 9>&-

# -------------------------------------------------------------------- done
if ((ENV_ONLY)); then
  for v in "${EXPORTS[@]}"; do printf 'export %s=%q\n' "$v" "${!v}"; done >&3
  exit 0
fi

for v in "${EXPORTS[@]}"; do log "$v=${!v}"; done
cd "$REPO_ROOT"

# ------------------------------------------------------------------- tests
log "waiting for the lint and build"
if ! wait "$BUILD_PID"; then
  BUILD_PID=
  cat "$BUILD_LOG" >&2
  die "lint or build failed"
fi
BUILD_PID=
cat "$BUILD_LOG" >&2
log "lint: clean; build: done"

# cargo ignores -p when --workspace is given, so only add it when no package was named.
scope=(--workspace)
for a in "$@"; do
  [[ $a == -- ]] && break
  [[ $a == -p* || $a == --package* ]] && scope=()
done
exec cargo nextest run "${scope[@]}" "$@"
