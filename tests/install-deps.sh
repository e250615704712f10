#!/bin/sh
# tests/install-deps.sh: what `make test` needs beyond a C compiler, installed or named.
#
# From Debian: pytest, the real clients and deployment tools the black-box tests use, and the
# checkers CI runs; from npm: playwright-core, eventsource, eventsource-parser and jose into
# tests/browser/node_modules (`npm ci`, from the lock file). It first says what is missing and
# which test needs it. As root with apt-get it then installs it (a temporary policy-rc.d keeps
# the nginx package from starting a system nginx); otherwise it only says so, and fails when
# pytest itself is missing. The npm packages need Node.js 20 or later, newer than Debian 12's
# nodejs (18): an older node fails here, with a message, rather than in the tests.
#
# Usage: tests/install-deps.sh [PYTHON]   (run from the repository's top directory)
set -u
PYTHON=${1:-/usr/bin/python3}

# command  Debian package  who needs it
TOOLS='
nginx            nginx             tests/test_nginx.py, test_deploy.py, test_cluster.py
chromium         chromium          tests/test_browser.py (a real EventSource in a browser)
curl             curl              tests/test_deploy.py (the README'"'"'s curl commands)
openssl          openssl           tests/test_deploy.py (a certificate for nginx over TLS)
nghttp           nghttp2-client    tests/test_deploy.py (HTTP/2 through nginx)
strace           strace            tests/test_journal.py, test_deploy.py
systemd-analyze  systemd           tests/test_deploy.py (checks the unit file)
node             nodejs            tests/test_node.py, test_browser.py
npm              npm               tests/browser/node_modules (npm ci)
valgrind         valgrind          make valgrind
cppcheck         cppcheck          make lint
clang-tidy       clang-tidy        make lint
redis-server     redis-server      tests/test_redis.py, test_redis_holes.py, test_cluster.py
musl-gcc         musl-tools        tests/test_build.py (make static: ./sse-server-static, linked statically against musl)
man              man-db            tests/test_cli.py (renders the man page, sse-server.1, with man -l; brings groff-base)
'

missing=
if ! "$PYTHON" -c 'import pytest' 2>/dev/null; then
    missing=python3-pytest
    echo "install-deps: python3-pytest: every black-box test (tests/*.py) runs under pytest"
fi
while read -r cmd pkg why; do
    [ -n "$cmd" ] || continue
    if ! command -v "$cmd" >/dev/null && [ ! -x "/usr/sbin/$cmd" ]; then
        missing="$missing $pkg"
        echo "install-deps: $pkg (for $cmd): $why"
    fi
done <<END
$TOOLS
END

if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "make test needs:$missing (sudo apt-get install$missing)" >&2
        case "$missing" in *pytest*) exit 1 ;; esac
    else
        echo "install-deps: installing$missing with apt-get"
        guard=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            guard=1
        fi
        # shellcheck disable=SC2086 # one word per package
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
        status=$?
        [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
        [ "$status" = 0 ] || exit "$status"
    fi
fi

if command -v node >/dev/null; then
    major=$(node --version | sed -n 's/^v\([0-9][0-9]*\)\..*/\1/p')
    if [ "${major:-0}" -lt 20 ]; then
        echo "make test needs Node.js >= 20 (eventsource and playwright-core in" \
            "tests/browser/package-lock.json require it); node --version says" \
            "$(node --version). Debian 12's nodejs package is Node 18:" \
            "install Node 20 or later." >&2
        exit 1
    fi
fi

if command -v npm >/dev/null && { [ ! -e tests/browser/node_modules/.package-lock.json ] ||
    [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; }; then
    echo "install-deps: npm ci in tests/browser (playwright-core, eventsource," \
        "eventsource-parser, jose: tests/test_browser.py, test_node.py, test_auth.py)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) || exit 1
fi
exit 0
