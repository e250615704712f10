"""The deployment files in deploy/, exercised as shipped.

deploy/nginx.conf: nginx (Debian package) with TLS and HTTP/2 in front of sse-server, on a
throwaway self-signed certificate from the openssl CLI. The seed article's whole argument is
checked: three EventSource streams share ONE HTTP/2 connection and each receives its events at
once (curl --http2, and nghttp when installed).

deploy/sse-server.service: systemd-analyze accepts the unit as shipped and with the journal
enabled as its comments say, rates its exposure as README states, and every system call
sse-server makes in a workload touching every feature, the journal included, is one its
SystemCallFilter allows (traced with strace)."""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from clients import wait_until
from conftest import (BINARY, Stream, metric_values, not_applicable, publish, request,
                      unavailable)
from test_nginx import nginx_binary, start_nginx  # noqa: F401 (fixtures)

DEPLOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy")


def tool(name):
    path = shutil.which(name)
    if not path:
        unavailable("%s is not installed" % name)
    return path


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


# ---- nginx, TLS, HTTP/2 --------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path):
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    subprocess.run(
        [tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def deploy_conf(upstream_port, cert, key):
    """deploy/nginx.conf with only its machine-specific lines changed for the test."""

    def make(d, port):
        with open(os.path.join(DEPLOY, "nginx.conf")) as f:
            text = f.read()
        for old, new in [
            ("listen 443 ssl http2;", "listen 127.0.0.1:%d ssl http2;" % port),
            ("ssl_certificate /etc/ssl/certs/sse.example.com.pem;", "ssl_certificate %s;" % cert),
            ("ssl_certificate_key /etc/ssl/private/sse.example.com.key;",
             "ssl_certificate_key %s;" % key),
            ("server 127.0.0.1:8080;", "server 127.0.0.1:%d;" % upstream_port),
            ("pid /run/nginx.pid;", "pid %s/nginx.pid;" % d),
            ("error_log /var/log/nginx/error.log;", "error_log %s/error.log info;" % d),
            ("access_log /var/log/nginx/access.log sse;", "access_log %s/access.log sse;" % d),
            ("http {\n", "http {\n" + "".join(
                "    %s_temp_path %s/%s;\n" % (k, d, k)
                for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
        ]:
            assert text.count(old) == 1, "deploy/nginx.conf no longer has %r" % old
            text = text.replace(old, new)
        return text

    return make


def test_three_streams_share_one_http2_connection(start_server, start_nginx, certificate,
                                                  tmp_path):
    curl = tool("curl")
    srv = start_server("--publish-token", "secret")
    nginx = start_nginx(make_conf=deploy_conf(srv.port, *certificate))
    base = "https://127.0.0.1:%d" % nginx.port
    paths = ["/events/a", "/events/b", "/events?topic=a&topic=b"]
    outs = [str(tmp_path / ("stream%d" % i)) for i in range(3)]
    args = [curl, "--http2", "-k", "-N", "-sS", "-v", "--parallel", "--parallel-max", "3"]
    for path, out in zip(paths, outs):
        args += ["-o", out, base + path]
    trace = open(tmp_path / "curl.trace", "wb")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=trace)
    try:
        wait_until(lambda: all(read(o).startswith(b"retry: 3000\n\n") for o in outs),
                   what="three streams open: %r" % [read(o) for o in outs])
        a = publish(srv.port, b"for a", topic="a").json()["id"]
        b = publish(srv.port, b"for b", topic="b").json()["id"]
        want = [
            [b"id: %s\ndata: for a\n\n" % a.encode()],
            [b"id: %s\ndata: for b\n\n" % b.encode()],
            [b"id: %s\ndata: for a\n\n" % a.encode(), b"id: %s\ndata: for b\n\n" % b.encode()],
        ]
        wait_until(
            lambda: all(all(e in read(o) for e in w) for o, w in zip(outs, want)),
            timeout=5, what="events on every stream: %r" % [read(o) for o in outs],
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        trace.close()
    verbose = read(str(tmp_path / "curl.trace")).decode("utf-8", "replace")
    assert "< HTTP/2 200" in verbose
    assert "< content-type: text/event-stream" in verbose
    # nginx logs each request when it ends; all three name the same client connection.
    log = os.path.join(nginx.dir, "access.log")
    wait_until(lambda: read(log).count(b"HTTP/2.0") >= 3, what="access log: %r" % read(log))
    lines = [l for l in read(log).decode().splitlines() if "GET /events" in l]
    assert len(lines) == 3, lines
    assert all('HTTP/2.0" 200' in l for l in lines), lines
    assert len({re.search(r"conn=(\d+)", l).group(1) for l in lines}) == 1, lines


def test_nghttp_three_streams_one_connection(start_server, start_nginx, certificate):
    nghttp = tool("nghttp")  # Debian nghttp2-client
    srv = start_server("--publish-token", "secret")
    nginx = start_nginx(make_conf=deploy_conf(srv.port, *certificate))
    base = "https://127.0.0.1:%d" % nginx.port
    # nghttp opens one connection for all its URLs; -t ends the streams after 3 seconds.
    proc = subprocess.Popen(
        [nghttp, "-v", "-t", "3", base + "/events/a", base + "/events/b", base + "/events/c"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    wait_until(lambda: metric_values(srv.port)["sse_subscribers"] == 3, what="nghttp's streams")
    ids = [publish(srv.port, b"to " + t, topic=t.decode()).json()["id"] for t in (b"a", b"b", b"c")]
    out, _ = proc.communicate(timeout=30)
    text = out.decode("utf-8", "replace")
    assert "The negotiated protocol: h2" in text, text
    for topic, id_ in zip("abc", ids):
        assert "id: %s\ndata: to %s\n" % (id_, topic) in text, text
    streams = set(re.findall(r"recv DATA frame <length=\d+, flags=0x00, stream_id=(\d+)>", text))
    assert len(streams) >= 3, text
    assert text.count("Connected") == 1, text


# ---- systemd ------------------------------------------------------------------------------


def unit_text():
    with open(os.path.join(DEPLOY, "sse-server.service")) as f:
        return f.read()


def journal_option():
    """The journal's options as the unit's comments say to add them to ExecStart, checked
    to name a file in the unit's StateDirectory (the one writable place it has)."""
    text = unit_text()
    m = re.search(r"^#\s+(--journal (\S+))$", text, re.M)
    assert m, "the unit no longer says how to enable the journal"
    state = re.findall(r"^StateDirectory=(\S+)$", text, re.M)
    assert state and os.path.dirname(m.group(2)) == "/var/lib/" + state[0], (m.group(2), state)
    return m.group(1)


# The unit as shipped, and with the journal enabled as its comments and README say.
UNITS = {"as shipped": "", "with the journal": "journal"}


def unit_execstart(variant):
    """ExecStart's command line in the given variant of the unit (a key of UNITS)."""
    line = re.search(r"^ExecStart=(.*)$", unit_text(), re.M).group(1)
    return line + (" " + journal_option() if UNITS[variant] else "")


def unit_for_this_binary(tmp_path, variant):
    """The unit with ExecStart pointing at the binary under test (verify checks it exists)."""
    text = unit_text()
    assert text.count("ExecStart=/usr/local/bin/sse-server ") == 1
    text = re.sub(r"^ExecStart=.*$", "ExecStart=" + unit_execstart(variant), text, flags=re.M)
    path = tmp_path / "sse-server.service"
    path.write_text(text.replace("/usr/local/bin/sse-server", os.path.abspath(BINARY)))
    return str(path)


def readme_exposure():
    """The exposure rating docs/reliability.md states for the unit."""
    with open(os.path.join(DEPLOY, "..", "docs", "reliability.md")) as f:
        m = re.search(r"`systemd-analyze\s+security` rates both ([0-9.]+) \(\"(\w+)\"", f.read())
    assert m, "docs/reliability.md no longer states the unit's exposure rating"
    return m.group(1), m.group(2)


@pytest.mark.parametrize("variant", UNITS)
def test_unit_verifies_and_is_hardened(tmp_path, variant):
    analyze = tool("systemd-analyze")
    unit = unit_for_this_binary(tmp_path, variant)
    r = subprocess.run([analyze, "verify", unit], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    r = subprocess.run([analyze, "security", "--offline=true", unit],
                       capture_output=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout.decode())
    assert m, r.stdout.decode()
    assert m.groups() == readme_exposure(), r.stdout.decode()


@pytest.mark.parametrize("variant", [pytest.param(v, marks=[pytest.mark.journal] if UNITS[v] else [])
                                     for v in UNITS])
def test_unit_execstart_options_are_valid(tmp_path, variant):
    """The unit's options start a server (on port 0 here instead of 8080, the journal in a
    temporary directory instead of /var/lib/sse-server), which keeps an event in the journal."""
    args = unit_execstart(variant).split()[1:]
    args[args.index("--listen") + 1] = "127.0.0.1:0"
    journal = str(tmp_path / "journal")
    if "--journal" in args:
        args[args.index("--journal") + 1] = journal
    proc = subprocess.Popen([BINARY, *args, "--verbose", "--publish-token", "secret"],
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        lines = []
        for _ in range(5):  # the journal's load is logged before it
            lines.append(proc.stderr.readline().decode())
            m = re.search(r"listening on http://127.0.0.1:(\d+)/", lines[-1])
            if m:
                break
        assert m, lines
        r = publish(int(m.group(1)), b"kept")
        assert r.status == 200, r
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert (b"\ndata: kept\n" in read(journal)) == bool(UNITS[variant])


def expand_syscall_set(analyze, name, seen=None):
    """The system call names in a systemd set such as @system-service, groups expanded."""
    seen = set() if seen is None else seen
    out = subprocess.run([analyze, "syscall-filter", name], capture_output=True, timeout=60,
                         check=True).stdout.decode()
    names = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                names |= expand_syscall_set(analyze, word, seen)
        else:
            names.add(word)
    return names


def allowed_syscalls(analyze):
    allowed = set()
    for value in re.findall(r"^SystemCallFilter=(.*)$", unit_text(), re.M):
        deny = value.startswith("~")
        names = set()
        for item in value.lstrip("~").split():
            names |= expand_syscall_set(analyze, item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.mark.relay
@pytest.mark.proxy
@pytest.mark.journal
def test_every_syscall_is_allowed_by_the_unit(start_server, tmp_path):
    analyze, strace = tool("systemd-analyze"), tool("strace")
    with open(BINARY, "rb") as f:
        if b"__asan_init" in f.read():
            not_applicable("a sanitizer build makes system calls of its own (ptrace for "
                           "LeakSanitizer) that the unit rightly forbids")
    allowed = allowed_syscalls(analyze)
    assert {"epoll_wait", "sendfile", "writev", "accept4"} <= allowed
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"<!doctype html>hello\n" * 100)
    upstream = start_server("--publish-token", "up")
    # The journal as the unit's comments enable it, starting from a file with a torn end (cut
    # off at start: ftruncate), small enough to be compacted (rename, fsync of the directory)
    # and synced in batches (fdatasync) while it runs.
    assert journal_option().startswith("--journal ")
    journal = str(tmp_path / "journal")
    before = start_server("--publish-token", "secret", "--journal", journal)
    assert publish(before.port, b"before", topic="time").status == 200
    before.stop()
    with open(journal, "ab") as f:
        f.write(b"#E 1 time 99 0")
    trace = str(tmp_path / "strace.out")
    srv = start_server(
        "--publish-token", "secret", "--root", str(root), "--demo", "--heartbeat", "1",
        "--proxy", "/up=http://127.0.0.1:%d" % upstream.port,
        "--relay", "relayed=http://127.0.0.1:%d/events/src" % upstream.port,
        "--journal", journal, "--journal-max-bytes", "4k", "--backlog", "4",
        wrapper=[strace, "-f", "-qq", "-o", trace],
    )
    srv.wait_for_line("dropped a torn record")
    st = Stream(srv.port, "/events?topic=time&topic=relayed")
    proxied = Stream(srv.port, "/up/events/src")
    assert request(srv.port, "GET", "/").status == 200
    assert request(srv.port, "GET", "/missing").status == 404
    for _ in range(3):
        assert publish(srv.port, b"x" * 5000, topic="time").status == 200
    assert publish(upstream.port, b"via upstream", topic="src", token="up").status == 200
    st.read_bytes_until(b"data: via upstream\n", timeout=10)
    proxied.read_bytes_until(b"data: via upstream\n", timeout=10)
    assert request(srv.port, "GET", "/metrics").status == 200
    request(srv.port, raw=b"GARBAGE\r\n\r\n")
    time.sleep(1.5)  # a heartbeat, a few demo ticks and a journal sync
    metrics = metric_values(srv.port)
    assert metrics["sse_journal_compactions_total"] >= 1, metrics
    assert metrics["sse_journal_syncs_total"] >= 1, metrics
    st.close()
    proxied.close()
    srv.stop()
    assert srv.proc.returncode == 0  # strace exits with the server's status
    used = set()
    with open(trace) as f:
        for line in f:
            m = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
            if m:
                used.add(m.group(1))
    assert {"epoll_wait", "accept4", "sendfile"} <= used, sorted(used)
    assert {"flock", "fdatasync", "ftruncate", "fsync"} <= used, sorted(used)
    assert used & {"rename", "renameat", "renameat2"}, sorted(used)
    # execve is strace starting the binary; systemd allows it before the filter applies.
    print("system calls made:", " ".join(sorted(used)))
    assert sorted(used - allowed - {"execve"}) == []
