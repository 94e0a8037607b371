# shellcheck shell=bash
# Source this file to get a throwaway PostgreSQL cluster for marina's tests:
#
#   source .ci/postgres.sh            # starts the cluster (set MARINA_PG_NO_AUTOSTART=1 to not)
#   trap marina_pg_stop EXIT
#
# Sourcing runs marina_pg_start, which installs PostgreSQL with apt when initdb/pg_ctl are
# missing, creates a cluster in a temp dir owned by a non-root user (initdb refuses root),
# starts it on 127.0.0.1 and a free port, creates the database marina_test and exports
# MARINA_TEST_DATABASE_URL=postgres://marina@127.0.0.1:PORT/marina_test. It returns non-zero
# on failure (which stops a `set -e` caller). The cluster trusts loopback connections and runs
# with fsync off: it is for tests only. When openssl is present the server also accepts TLS
# with a certificate for 127.0.0.1 signed by a throwaway CA, whose PEM file is exported as
# MARINA_TEST_PG_CA (for sslmode=require&sslrootcert=...). Starting again while a cluster from
# this shell runs is a no-op. marina_pg_stop stops it and removes the temp dir; it is safe to
# call twice. Works under `set -euo pipefail`.

marina_pg__bin() {
    # $1: a program name. Prints its path: PATH first, then Debian's versioned directories.
    local found
    found=$(command -v "$1" 2>/dev/null) && { echo "$found"; return 0; }
    found=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1) || true
    [ -n "$found" ] && { echo "$found"; return 0; }
    return 1
}

marina_pg__as_owner() {
    # Run a command as the cluster owner (root cannot run initdb or postgres).
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$MARINA_PG_OWNER" -- "$@"
    else
        "$@"
    fi
}

marina_pg__make_certs() {
    # $1: an empty directory to fill with ca.pem, server.pem and server.key.
    local dir=$1
    mkdir -p "$dir" || return 1
    (
        cd "$dir" || exit 1
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=marina test CA" \
            -keyout ca.key -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
            openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr &&
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >server.ext &&
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                -extfile server.ext -out server.pem
    ) >/dev/null 2>&1 || return 1
    chmod 600 "$dir/server.key" "$dir/ca.key"
    chown "$MARINA_PG_OWNER" "$dir/server.key" "$dir/server.pem"
    chmod 755 "$dir"
}

marina_pg_start() {
    if [ -n "${MARINA_PG_DIR:-}" ] && [ -n "${MARINA_TEST_DATABASE_URL:-}" ] && [ -d "$MARINA_PG_DIR/data" ]; then
        return 0
    fi
    if ! marina_pg__bin initdb >/dev/null || ! marina_pg__bin pg_ctl >/dev/null; then
        echo "postgres.sh: initdb/pg_ctl not found; installing postgresql with apt" >&2
        if [ "$(id -u)" != 0 ]; then
            echo "postgres.sh: need root to install postgresql" >&2
            return 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || return 1
    fi
    local initdb pg_ctl
    initdb=$(marina_pg__bin initdb) || return 1
    pg_ctl=$(marina_pg__bin pg_ctl) || return 1

    MARINA_PG_OWNER=$(id -un)
    if [ "$(id -u)" = 0 ]; then
        MARINA_PG_OWNER=postgres
        if ! id postgres >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /usr/sbin/nologin postgres || return 1
        fi
    fi
    export MARINA_PG_OWNER

    MARINA_PG_DIR=$(mktemp -d /tmp/marina-pg.XXXXXX) || return 1
    export MARINA_PG_DIR
    chmod 755 "$MARINA_PG_DIR"
    chown "$MARINA_PG_OWNER" "$MARINA_PG_DIR"
    marina_pg__as_owner "$initdb" -D "$MARINA_PG_DIR/data" -U marina --auth=trust \
        --encoding=UTF8 --locale=C >"$MARINA_PG_DIR/initdb.log" 2>&1 || {
        echo "postgres.sh: initdb failed:" >&2
        cat "$MARINA_PG_DIR/initdb.log" >&2
        return 1
    }

    # TLS: a throwaway CA and a server certificate for 127.0.0.1.
    local ssl_opts=""
    unset MARINA_TEST_PG_CA
    if command -v openssl >/dev/null 2>&1 && marina_pg__make_certs "$MARINA_PG_DIR/tls"; then
        ssl_opts="-c ssl=on -c ssl_cert_file=$MARINA_PG_DIR/tls/server.pem -c ssl_key_file=$MARINA_PG_DIR/tls/server.key"
        export MARINA_TEST_PG_CA="$MARINA_PG_DIR/tls/ca.pem"
    else
        echo "postgres.sh: no openssl; the test server will not offer TLS" >&2
    fi

    # A free port: pick at random and let the server tell us when it is taken.
    unset MARINA_PG_PORT
    local attempt port
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 40000))
        if marina_pg__as_owner "$pg_ctl" -D "$MARINA_PG_DIR/data" -l "$MARINA_PG_DIR/server.log" -w -t 30 \
            -o "-h 127.0.0.1 -p $port -k $MARINA_PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 $ssl_opts" \
            start >/dev/null 2>&1; then
            MARINA_PG_PORT=$port
            export MARINA_PG_PORT
            break
        fi
        echo "postgres.sh: start on port $port failed (attempt $attempt), retrying" >&2
    done
    if [ -z "${MARINA_PG_PORT:-}" ]; then
        echo "postgres.sh: could not start PostgreSQL; last server log:" >&2
        tail -n 20 "$MARINA_PG_DIR/server.log" >&2
        return 1
    fi

    local psql
    psql=$(marina_pg__bin psql) || psql=""
    if [ -n "$psql" ]; then
        "$psql" -q -h 127.0.0.1 -p "$MARINA_PG_PORT" -U marina -d postgres -c "CREATE DATABASE marina_test" >&2 || return 1
    else
        marina_pg__as_owner "$(marina_pg__bin createdb)" -h 127.0.0.1 -p "$MARINA_PG_PORT" -U marina marina_test || return 1
    fi
    export MARINA_TEST_DATABASE_URL="postgres://marina@127.0.0.1:$MARINA_PG_PORT/marina_test"
    echo "postgres.sh: PostgreSQL ready at $MARINA_TEST_DATABASE_URL" >&2
}

marina_pg_stop() {
    [ -n "${MARINA_PG_DIR:-}" ] || return 0
    if [ -d "$MARINA_PG_DIR/data" ]; then
        marina_pg__as_owner "$(marina_pg__bin pg_ctl)" -D "$MARINA_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$MARINA_PG_DIR"
    unset MARINA_PG_DIR MARINA_PG_PORT MARINA_TEST_DATABASE_URL MARINA_TEST_PG_CA
}

if [ -z "${MARINA_PG_NO_AUTOSTART:-}" ]; then
    marina_pg_start
fi
