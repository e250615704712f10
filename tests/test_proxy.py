"""Reverse-proxy mode (--proxy PREFIX=URL): routing, the exact request the upstream gets,
request bodies, unbuffered streaming, response framing, failures (502/504, and 200 +
retry: for EventSource), heartbeats between events, closing the upstream when the client
goes away, backpressure, metrics and the command line. The upstream is tests/upstream.py."""

import hashlib
import os
import re
import select
import socket
import subprocess
import threading
import time

import pytest

from conftest import (
    BINARY,
    Response,
    Stream,
    build_request,
    connect,
    healthy,
    metric_values,
    parse_head,
    publish,
    read_response,
    recv_all,
    recv_until,
    request,
    settled_fd_count,
    unavailable,
    wait_metric,
)
from upstream import (
    Upstream,
    by_path,
    close_without_answer,
    delayed,
    event_stream,
    never_answer,
    reply,
    reply_raw,
)

pytestmark = [pytest.mark.valgrind, pytest.mark.proxy]

STREAM_HEAD = re.compile(
    rb"^HTTP/1\.1 200 OK\r\n"
    rb"Date: [^\r\n]+ GMT\r\n"
    rb"Content-Type: text/event-stream\r\n"
    rb"Cache-Control: no-cache, no-transform\r\n"
    rb"X-Accel-Buffering: no\r\n"
    rb"\r\n$"
)
SSE_ACCEPT = {"Accept": "text/event-stream"}


# ---- helpers ----------------------------------------------------------------------------


@pytest.fixture
def make_upstream():
    """make_upstream(handler=None) -> a started Upstream, stopped after the test."""
    ups = []

    def make(handler=None, port=0):
        u = Upstream(handler, port).start()
        ups.append(u)
        return u

    yield make
    for u in ups:
        u.stop()


def proxy_args(*routes):
    args = []
    for prefix, url in routes:
        args += ["--proxy", "%s=%s" % (prefix, url)]
    return args


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def end_to_end(resp):
    """The response headers except Date and the framing headers sse-server sets."""
    return [
        (k, v)
        for k, v in resp.headers
        if k.lower() not in ("date", "content-length", "transfer-encoding")
    ]


def recv_exact(sock, n, buf=b"", timeout=5):
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for %d bytes; have %r" % (n, buf[-200:])
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError("timed out waiting for %d bytes; have %r" % (n, buf[-200:]))
        assert chunk, "closed waiting for %d bytes; have %r" % (n, buf[-200:])
        buf += chunk
    return buf[:n], buf[n:]


def read_chunked(sock, buf=b"", timeout=5):
    """Reads one chunked body (no trailers expected from sse-server); returns (decoded
    body, leftover bytes)."""
    out = b""
    while True:
        line, buf = recv_until(sock, b"\r\n", timeout, buf)
        assert re.fullmatch(rb"[0-9a-fA-F]+\r\n", line), "bad chunk size line %r" % line
        size = int(line[:-2], 16)
        if size == 0:
            end, buf = recv_exact(sock, 2, buf, timeout)
            assert end == b"\r\n", "chunked body not ended by CRLF: %r" % end
            return out, buf
        data, buf = recv_exact(sock, size + 2, buf, timeout)
        assert data[-2:] == b"\r\n", "chunk not followed by CRLF: %r" % data[-10:]
        out += data[:-2]


def decode_chunked_prefix(data):
    """Decodes as much of a chunked body as data holds: (payload, saw_last_chunk)."""
    out = b""
    while True:
        i = data.find(b"\r\n")
        if i < 0:
            return out, False
        size = int(data[:i], 16)
        if size == 0:
            return out, True
        chunk = data[i + 2 : i + 2 + size]
        out += chunk
        if len(chunk) < size:
            return out, False
        data = data[i + 2 + size + 2 :]


def collect_for(sock, seconds, buf=b""):
    """Everything that arrives within `seconds`; the connection must stay open."""
    deadline = time.monotonic() + seconds
    data = buf
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data
        r, _, _ = select.select([sock], [], [], left)
        if r:
            chunk = sock.recv(65536)
            assert chunk, "connection closed early; got %r" % data
            data += chunk


def open_request(port, method, path, headers=None, body=b"", version="HTTP/1.1"):
    """Sends a request on a fresh connection and returns the socket (nothing read)."""
    s = connect(port, timeout=10)
    s.sendall(build_request(method, path, headers, body, version=version))
    return s


def head_response(head):
    status, reason, headers = parse_head(head)
    return Response(status, reason, headers, b"", head)


def split_head(data):
    i = data.index(b"\r\n\r\n") + 4
    return data[:i], data[i:]


def assert_turned_away(data):
    """sse-server's own stream head, `retry: J` with J in [3000, 6000], then EOF."""
    head, body = split_head(data)
    assert STREAM_HEAD.match(head), head
    m = re.fullmatch(rb"retry: (\d+)\n\n", body)
    assert m, body
    assert 3000 <= int(m.group(1)) <= 6000, body


# ---- routing ------------------------------------------------------------------------------


def test_prefix_matches_at_slash_boundary(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "text/plain")], b"from A\n"))
    srv = start_server(*proxy_args(("/api", up.url)))
    cases = [
        ("/api", "GET / HTTP/1.1"),
        ("/api/", "GET / HTTP/1.1"),
        ("/api/x", "GET /x HTTP/1.1"),
        ("/api?q=1", "GET /?q=1 HTTP/1.1"),
        ("/api/x/y?z", "GET /x/y?z HTTP/1.1"),
        # Escapes of unreserved characters are the characters (RFC 3986 6.2.2.2).
        ("/ap%69/x%7e", "GET /x~ HTTP/1.1"),
    ]
    for i, (path, line) in enumerate(cases):
        r = request(srv.port, "GET", path)
        assert (r.status, r.body) == (200, b"from A\n"), (path, r.raw_head, r.body)
        assert up.wait_requests(i + 1)[i].line == line, path
    # Not at a '/' boundary, or another case: not proxied.
    for path in ("/apix", "/apix/y", "/ap", "/API/x", "/ap%49/x"):
        r = request(srv.port, "GET", path)
        assert (r.status, r.body) == (404, b"not found\n"), path
    assert up.accepted == len(cases)


def test_longest_prefix_wins(start_server, make_upstream):
    ups = {
        name: make_upstream(reply(200, "OK", [("Content-Type", "text/plain")], name.encode()))
        for name in ("root", "api", "v2")
    }
    srv = start_server(
        *proxy_args(("/", ups["root"].url), ("/api/v2", ups["v2"].url), ("/api", ups["api"].url))
    )
    cases = [
        ("/api/v2", "v2", "GET / HTTP/1.1"),
        ("/api/v2/x?k=v", "v2", "GET /x?k=v HTTP/1.1"),
        ("/api/v2x", "api", "GET /v2x HTTP/1.1"),
        ("/api/v", "api", "GET /v HTTP/1.1"),
        ("/api", "api", "GET / HTTP/1.1"),
        ("/apix", "root", "GET /apix HTTP/1.1"),
        ("/", "root", "GET / HTTP/1.1"),
        ("/other/deep?q", "root", "GET /other/deep?q HTTP/1.1"),
    ]
    seen = {name: 0 for name in ups}
    for path, name, line in cases:
        r = request(srv.port, "GET", path)
        assert (r.status, r.body) == (200, name.encode()), (path, r.raw_head, r.body)
        seen[name] += 1
        assert ups[name].wait_requests(seen[name])[-1].line == line, path
    for name, up in ups.items():
        assert up.accepted == seen[name], name


def test_builtin_endpoints_keep_precedence(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "text/plain")], b"proxied\n"))
    srv = start_server("--publish-token", "secret", *proxy_args(("/", up.url)))
    for path in ("/events", "/events/news", "/events?topic=a"):
        st = Stream(srv.port, path)
        assert st.status == 200, path
        assert st.header("Content-Type") == "text/event-stream", path
        assert st.read_bytes_until(b"\n\n") == b"retry: 3000\n\n", path
        st.close()
    r = publish(srv.port, "hello", topic="news")
    assert r.status == 200 and r.body.startswith(b'{"id": "'), (r.raw_head, r.body)
    r = request(srv.port, "GET", "/metrics")
    assert r.status == 200 and b"sse_proxied_requests_total" in r.body
    for path in ("/healthz", "/healthz?x=1"):
        r = request(srv.port, "GET", path)
        assert (r.status, r.body) == (200, b"ok\n"), path
    assert up.no_connection() and up.accepted == 0
    # Paths that only look like the built-in ones, and the built-in page, go up.
    paths = ["/eventsx", "/publishx", "/metrics/x", "/", "/index.html"]
    for i, path in enumerate(paths):
        r = request(srv.port, "GET", path)
        assert (r.status, r.body) == (200, b"proxied\n"), path
        assert up.wait_requests(i + 1)[i].line == "GET %s HTTP/1.1" % path


def test_proxy_routes_come_before_static_files(start_server, make_upstream, tmp_path):
    (tmp_path / "index.html").write_text("<h1>static</h1>")
    (tmp_path / "other.txt").write_text("static other")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "file.txt").write_text("static file")
    up = make_upstream(reply(200, "OK", [("Content-Type", "text/plain")], b"from upstream"))
    srv = start_server("--root", str(tmp_path), *proxy_args(("/api", up.url)))
    r = request(srv.port, "GET", "/api/file.txt")
    assert (r.status, r.body) == (200, b"from upstream")
    assert up.wait_requests(1)[0].line == "GET /file.txt HTTP/1.1"
    r = request(srv.port, "GET", "/other.txt")
    assert (r.status, r.body) == (200, b"static other")
    r = request(srv.port, "GET", "/")
    assert (r.status, r.body) == (200, b"<h1>static</h1>")
    assert up.accepted == 1


def test_base_path_joining_and_raw_query(start_server, make_upstream):
    up = make_upstream(reply(204, "No Content", [], framing="none"))
    srv = start_server(
        *proxy_args(("/api", up.url + "/base"), ("/deep", up.url + "/a/b"))
    )
    cases = [
        ("/api", "GET /base HTTP/1.1"),
        ("/api/", "GET /base/ HTTP/1.1"),
        ("/api/x", "GET /base/x HTTP/1.1"),
        ("/api?x=1", "GET /base?x=1 HTTP/1.1"),
        ("/api/x?y=%2F&z=a+b&&w=%7E", "GET /base/x?y=%2F&z=a+b&&w=%7E HTTP/1.1"),
        ("/api/a%20b/c%3Fd", "GET /base/a%20b/c%3Fd HTTP/1.1"),
        ("/deep/q?r", "GET /a/b/q?r HTTP/1.1"),
        ("http://localhost/api/abs?q=1", "GET /base/abs?q=1 HTTP/1.1"),
    ]
    for i, (target, line) in enumerate(cases):
        r = request(srv.port, "GET", target)
        assert r.status == 204, (target, r.raw_head, r.body)
        assert up.wait_requests(i + 1)[i].line == line, target


# ---- the request the upstream gets ----------------------------------------------------------


def test_upstream_request_headers_exact(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "text/plain")], b"ok"))
    srv = start_server(*proxy_args(("/api", up.url)))
    raw = (
        b"GET /api/x?y=1 HTTP/1.1\r\n"
        b"Host: example.test:8080\r\n"
        b"User-Agent: probe/1.0\r\n"
        b"Connection: keep-alive, X-Hop-One, x-hop-two\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\n"
        b"X-Hop-One: a\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"accept: text/plain\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: websocket\r\n"
        b"X-Real-IP: 6.6.6.6\r\n"
        b"X-Forwarded-Host: evil.example\r\n"
        b"X-Forwarded-Port: 1\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"Last-Event-ID: 42\r\n"
        b"X-HOP-TWO: b\r\n"
        b"x-forwarded-for: 10.0.0.2, 10.0.0.3\r\n"
        b"X-Custom: a  b\r\n"
        b"Cookie: k=v; k2=v2\r\n"
        b"\r\n"
    )
    s = connect(srv.port)
    s.sendall(raw)
    resp, rest = read_response(s)
    assert (resp.status, resp.body, rest) == (200, b"ok", b"")
    req = up.wait_requests(1)[0]
    assert req.line == "GET /x?y=1 HTTP/1.1"
    assert req.header_lines == [
        "Host: example.test:8080",
        "User-Agent: probe/1.0",
        "accept: text/plain",
        "Last-Event-ID: 42",
        "X-Custom: a  b",
        "Cookie: k=v; k2=v2",
        "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1",
        "X-Forwarded-Host: example.test:8080",
        "X-Forwarded-Port: %d" % srv.port,
        "X-Forwarded-Proto: http",
        "X-Real-IP: 127.0.0.1",
        'Forwarded: for=127.0.0.1;host="example.test:8080";proto=http',
        "Via: 1.1 sse-server",
        "Connection: close",
    ]
    assert req.body == b""
    # The client asked for keep-alive: the connection still serves requests.
    s.sendall(build_request("GET", "/healthz"))
    resp, _ = read_response(s)
    assert (resp.status, resp.body) == (200, b"ok\n")
    s.close()


def test_upstream_request_minimal(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [], b""))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(b"GET /api/p HTTP/1.1\r\nHost: h\r\n\r\n")
    resp, _ = read_response(s)
    assert resp.status == 200
    s.close()
    req = up.wait_requests(1)[0]
    assert req.raw_head == (
        b"GET /p HTTP/1.1\r\n"
        b"Host: h\r\n"
        b"X-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Host: h\r\n"
        b"X-Forwarded-Port: %d\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Real-IP: 127.0.0.1\r\n"
        b'Forwarded: for=127.0.0.1;host="h";proto=http\r\n'
        b"Via: 1.1 sse-server\r\n"
        b"Connection: close\r\n"
        b"\r\n" % srv.port
    )


def test_via_names_each_hop_and_the_protocol_received(start_server, make_upstream):
    """RFC 9110 7.6.3: a gateway adds Via to each request it forwards, after the client's own
    (kept, in order), with the HTTP version it received; Connection may not strip ours."""
    up = make_upstream(reply(200, "OK", [], b""))
    srv = start_server(*proxy_args(("/api", up.url)))
    raws = [
        b"GET /api/a HTTP/1.1\r\nHost: h\r\nVia: 1.1 edge, 1.0 cdn (x)\r\nX: 1\r\n"
        b"via: 2 lb\r\nConnection: close\r\n\r\n",
        b"GET /api/b HTTP/1.0\r\nHost: h\r\n\r\n",
        b"GET /api/c HTTP/1.1\r\nHost: h\r\nVia: 1.1 edge\r\nConnection: Via, close\r\n\r\n",
    ]
    for raw in raws:
        assert request(srv.port, raw=raw).status == 200, raw
    vias = [[h for h in req.header_lines if h.lower().startswith("via:")]
            for req in up.wait_requests(3)]
    assert vias == [
        ["Via: 1.1 edge, 1.0 cdn (x)", "via: 2 lb", "Via: 1.1 sse-server"],
        ["Via: 1.0 sse-server"],
        ["Via: 1.1 sse-server"],
    ]


def test_methods_pass_through(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "text/plain")], b"done"))
    srv = start_server(*proxy_args(("/api", up.url)))
    methods = [("POST", b"p"), ("PUT", b"put body"), ("DELETE", b""), ("OPTIONS", b""),
               ("PATCH", b"x")]
    for i, (method, body) in enumerate(methods):
        r = request(srv.port, method, "/api/res", body=body)
        assert (r.status, r.body) == (200, b"done"), method
        req = up.wait_requests(i + 1)[i]
        assert req.line == "%s /res HTTP/1.1" % method
        assert req.body == body, method


# ---- request bodies -----------------------------------------------------------------------


def test_post_body_forwarded_exactly_and_keep_alive(start_server, make_upstream):
    def handler(conn, req):
        conn.respond(201, "Created", [("Content-Type", "text/plain")],
                     b"got %d" % len(req.body))

    up = make_upstream(handler)
    srv = start_server(*proxy_args(("/api", up.url)))
    bodies = [
        bytes(range(256)) * 4 + b"\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00second\r\n",
    ]
    s = connect(srv.port)
    for i, body in enumerate(bodies):
        s.sendall(build_request("POST", "/api/in", {"Content-Type": "application/x-test"}, body))
        resp, rest = read_response(s)
        assert (resp.status, resp.reason, resp.body) == (201, "Created", b"got %d" % len(body))
        assert rest == b""
        req = up.wait_requests(i + 1)[i]
        assert req.line == "POST /in HTTP/1.1"
        assert req.header("Content-Length") == str(len(body))
        assert req.header("Content-Type") == "application/x-test"
        assert req.body == body
    s.close()
    assert [r.line for r in up.requests] == ["POST /in HTTP/1.1"] * 2


def test_post_one_megabyte(start_server, make_upstream):
    def handler(conn, req):
        conn.respond(200, "OK", [("Content-Type", "text/plain")],
                     hashlib.sha256(req.body).hexdigest().encode())

    up = make_upstream(handler)
    srv = start_server(*proxy_args(("/api", up.url)))
    body = os.urandom(1 << 20)
    r = request(srv.port, "POST", "/api/big", body=body, timeout=20)
    assert (r.status, r.body) == (200, hashlib.sha256(body).hexdigest().encode())
    req = up.wait_requests(1)[0]
    assert len(req.body) == len(body) and req.body == body


def test_post_body_streamed_in_pieces(start_server, make_upstream):
    up = make_upstream()  # driven by hand
    srv = start_server(*proxy_args(("/api", up.url)))
    pieces = [os.urandom(1000), os.urandom(1500), os.urandom(500)]
    s = connect(srv.port, timeout=10)
    head = build_request("POST", "/api/upload", {"Content-Length": "3000"})
    s.sendall(head + pieces[0])
    u = up.accept()
    req = u.read_request(body=False)
    assert req.line == "POST /upload HTTP/1.1"
    assert req.header("Content-Length") == "3000"
    # Each piece reaches the upstream before the client sends the next one.
    assert u.recv_exactly(1000, timeout=10) == pieces[0]
    s.sendall(pieces[1])
    assert u.recv_exactly(1500, timeout=10) == pieces[1]
    s.sendall(pieces[2])
    assert u.recv_exactly(500, timeout=10) == pieces[2]
    u.respond(200, "OK", [("Content-Type", "text/plain")], b"stored")
    resp, _ = read_response(s)
    assert (resp.status, resp.body) == (200, b"stored")
    s.close()


def test_expect_100_continue(start_server, make_upstream):
    up = make_upstream(lambda conn, req: conn.respond(200, "OK", [], b"echo:" + req.body))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port, timeout=10)
    s.sendall(build_request("POST", "/api/e", {"Expect": "100-continue", "Content-Length": "11"}))
    interim, rest = recv_until(s, b"\r\n\r\n", timeout=10)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
    s.sendall(b"hello world")
    resp, _ = read_response(s, buf=rest)
    assert (resp.status, resp.body) == (200, b"echo:hello world")
    s.close()
    req = up.wait_requests(1)[0]
    assert req.header("Expect") is None, req.header_lines
    assert req.body == b"hello world"


# ---- streaming ------------------------------------------------------------------------------


def test_event_stream_is_forwarded_unbuffered(start_server, make_upstream):
    up = make_upstream()
    srv = start_server(*proxy_args(("/sse", up.url)))
    s = open_request(srv.port, "GET", "/sse/feed", {"Accept": "text/event-stream",
                                                    "Last-Event-ID": "7"})
    u = up.accept()
    req = u.read_request()
    assert req.line == "GET /feed HTTP/1.1"
    assert req.header("Last-Event-ID") == "7"
    u.send_head(200, "OK", [("Content-Type", "text/event-stream")])
    head, buf = recv_until(s, b"\r\n\r\n", timeout=10)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    lines = [l for l in head.decode().split("\r\n")[1:] if l and not l.startswith("Date:")]
    assert lines == ["Content-Type: text/event-stream", "X-Accel-Buffering: no",
                     "Cache-Control: no-cache"]
    # Each event arrives at the client before the upstream sends the next one.
    for i in range(6):
        ev = b"id: %d\nevent: tick\ndata: round %d\n\n" % (i, i)
        u.send(ev)
        got, buf = recv_until(s, b"\n\n", timeout=10, buf=buf)
        assert (got, buf) == (ev, b"")
    # Even half an event goes on at once.
    u.send(b"data: first half")
    got, buf = recv_until(s, b"first half", timeout=10, buf=buf)
    assert (got, buf) == (b"data: first half", b"")
    u.send(b" and the rest\n\n")
    got, buf = recv_until(s, b"\n\n", timeout=10, buf=buf)
    assert got == b" and the rest\n\n"
    # The upstream's end is the client's end.
    u.close()
    assert buf + recv_all(s, timeout=10) == b""
    s.close()


def test_chunked_event_stream_is_decoded_and_unbuffered(start_server, make_upstream):
    up = make_upstream()
    srv = start_server(*proxy_args(("/sse", up.url)))
    s = open_request(srv.port, "GET", "/sse", SSE_ACCEPT)
    u = up.accept()
    u.read_request()
    u.send_head(200, "OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                            ("Transfer-Encoding", "chunked")])
    head, buf = recv_until(s, b"\r\n\r\n", timeout=10)
    low = head.lower()
    assert b"transfer-encoding" not in low and b"content-length" not in low, head
    assert b"\r\nconnection:" not in low, head
    for i in range(4):
        ev = b"data: chunk %d\n\n" % i
        u.send_chunk(ev)
        got, buf = recv_until(s, b"\n\n", timeout=10, buf=buf)
        assert (got, buf) == (ev, b"")
    u.send_chunk(b"data: spl")
    got, buf = recv_until(s, b"spl", timeout=10, buf=buf)
    assert (got, buf) == (b"data: spl", b"")
    u.send_chunk(b"it\n\n")
    got, buf = recv_until(s, b"\n\n", timeout=10, buf=buf)
    assert (got, buf) == (b"it\n\n", b"")
    u.end_chunks()
    assert recv_all(s, timeout=10) == b""
    assert u.wait_eof(timeout=10), "the upstream connection was not closed"
    s.close()


# ---- response framing -----------------------------------------------------------------------


def test_large_body_right_after_the_head(start_server, make_upstream):
    """Head and a large body in one write: the head ends well inside the first read."""
    body = bytes(range(256)) * 400  # 100 KiB
    stream = b"data: " + b"y" * 30000 + b"\n\n"
    up = make_upstream(by_path({
        "/cl": reply_raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body),
        "/sse": reply_raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + stream),
    }))
    srv = start_server(*proxy_args(("/api", up.url)))
    r = request(srv.port, "GET", "/api/cl", timeout=10)
    assert (r.status, r.header("Content-Length")) == (200, str(len(body))), (r.raw_head, r.body)
    assert r.body == body
    s = open_request(srv.port, "GET", "/api/sse", SSE_ACCEPT)
    data = recv_all(s, timeout=10)
    s.close()
    head, got = split_head(data)
    assert head_response(head).header("Content-Type") == "text/event-stream", head
    assert got == stream


def test_content_length_response_keep_alive(start_server, make_upstream):
    up = make_upstream(by_path({
        "/one": reply(200, "Fine Thanks", [("Content-Type", "text/plain"), ("X-A", "1"),
                                           ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
                      b"hello"),
        "/two": reply(201, "Created", [("Location", "/x/1")], b"second body!"),
    }))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(build_request("GET", "/api/one"))
    resp, rest = read_response(s)
    assert (resp.status, resp.reason, resp.body, rest) == (200, "Fine Thanks", b"hello", b"")
    assert end_to_end(resp) == [("Content-Type", "text/plain"), ("X-A", "1"),
                                ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert resp.header_all("Content-Length") == ["5"]
    assert resp.header("Connection") is None and resp.header("Transfer-Encoding") is None
    s.sendall(build_request("GET", "/api/two"))
    resp, rest = read_response(s)
    assert (resp.status, resp.reason, resp.body, rest) == (201, "Created", b"second body!", b"")
    assert end_to_end(resp) == [("Location", "/x/1")]
    s.sendall(build_request("GET", "/healthz"))
    resp, _ = read_response(s)
    assert (resp.status, resp.body) == (200, b"ok\n")
    s.close()
    assert [r.line for r in up.wait_requests(2)] == ["GET /one HTTP/1.1", "GET /two HTTP/1.1"]


def test_bytes_past_content_length_are_dropped(start_server, make_upstream):
    up = make_upstream(reply_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                                 b"helloHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(build_request("GET", "/api/x"))
    resp, rest = read_response(s)
    assert (resp.status, resp.body, rest) == (200, b"hello", b"")
    s.sendall(build_request("GET", "/healthz"))
    resp, rest = read_response(s)
    assert (resp.status, resp.body, rest) == (200, b"ok\n", b"")
    s.close()


def test_connection_close_and_http10_keep_alive(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "text/plain")], b"body"))
    srv = start_server(*proxy_args(("/api", up.url)))
    # The client's Connection: close is honoured after a proxied response.
    s = connect(srv.port)
    s.sendall(build_request("GET", "/api/x", close=True))
    resp, rest = read_response(s)
    assert (resp.status, resp.body, resp.header("Connection")) == (200, b"body", "close")
    assert rest + recv_all(s) == b""
    s.close()
    # An HTTP/1.0 client asking for keep-alive keeps its connection.
    s = connect(srv.port)
    s.sendall(b"GET /api/x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    resp, rest = read_response(s)
    assert (resp.status, resp.body, resp.header("Connection")) == (200, b"body", "keep-alive")
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    resp, _ = read_response(s, buf=rest)
    assert (resp.status, resp.body) == (200, b"ok\n")
    s.close()
    assert [r.line for r in up.wait_requests(2)] == ["GET /x HTTP/1.1"] * 2


def test_pipelined_requests_answered_in_order(start_server, make_upstream):
    def handler(conn, req):
        conn.respond(200, "OK", [("Content-Type", "text/plain")],
                     b"answer to " + req.target.encode() + b" " + req.body)

    up = make_upstream(handler)
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port, timeout=10)
    s.sendall(build_request("GET", "/api/1") + build_request("POST", "/api/2", body=b"two")
              + build_request("GET", "/healthz") + build_request("GET", "/api/3"))
    rest = b""
    bodies = []
    for _ in range(4):
        resp, rest = read_response(s, timeout=10, buf=rest)
        bodies.append((resp.status, resp.body))
    assert bodies == [(200, b"answer to /1 "), (200, b"answer to /2 two"), (200, b"ok\n"),
                      (200, b"answer to /3 ")]
    s.close()


CHUNKS = [b'{"a":', b' 1, "b": "', b"x" * 5000, b'"}']


def test_chunked_response_rechunked_for_http11(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "application/json")],
                             framing="chunked", chunks=CHUNKS))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    for _ in range(2):  # the second on the same connection: keep-alive works
        s.sendall(build_request("GET", "/api/c"))
        head, buf = recv_until(s, b"\r\n\r\n")
        resp = head_response(head)
        assert resp.status == 200
        assert resp.header_all("Transfer-Encoding") == ["chunked"], resp.raw_head
        assert resp.header("Content-Length") is None and resp.header("Connection") is None
        assert end_to_end(resp) == [("Content-Type", "application/json")]
        body, rest = read_chunked(s, buf)
        assert (body, rest) == (b"".join(CHUNKS), b"")
    s.close()


def test_chunk_extensions_and_trailers_are_decoded(start_server, make_upstream):
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\nA\r\n world, 10\r\n0\r\nX-Trailer: t\r\n\r\n")
    up = make_upstream(reply_raw(raw))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(build_request("GET", "/api/ext"))
    head, buf = recv_until(s, b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in head, head
    body, rest = read_chunked(s, buf)
    assert (body, rest) == (b"hello world, 10", b"")
    s.sendall(build_request("GET", "/healthz"))
    resp, _ = read_response(s)
    assert (resp.status, resp.body) == (200, b"ok\n")
    s.close()


def test_chunked_response_close_delimited_for_http10(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "application/json")],
                             framing="chunked", chunks=CHUNKS))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(b"GET /api/c HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    data = recv_all(s, timeout=10)
    s.close()
    head, body = split_head(data)
    resp = head_response(head)
    assert resp.status == 200
    assert resp.header("Connection") == "close"
    assert resp.header("Transfer-Encoding") is None and resp.header("Content-Length") is None
    assert body == b"".join(CHUNKS)
    assert up.wait_requests(1)[0].line == "GET /c HTTP/1.1"


def test_close_delimited_response(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "text/plain")], b"until close\n" * 100,
                             framing="close"))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(build_request("GET", "/api/d"))  # HTTP/1.1, keep-alive by default
    data = recv_all(s, timeout=10)
    s.close()
    head, body = split_head(data)
    resp = head_response(head)
    assert resp.header("Connection") == "close", head
    assert resp.header("Transfer-Encoding") is None and resp.header("Content-Length") is None
    assert body == b"until close\n" * 100


def test_http10_upstream_response(start_server, make_upstream):
    up = make_upstream(reply_raw(b"HTTP/1.0 200 Okay Then\r\nContent-Type: text/plain\r\n\r\n"
                                 b"old school"))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(build_request("GET", "/api/old"))
    data = recv_all(s, timeout=10)
    s.close()
    head, body = split_head(data)
    assert head.startswith(b"HTTP/1.1 200 Okay Then\r\n"), head
    assert head_response(head).header("Connection") == "close", head
    assert body == b"old school"


def test_head_response_has_no_body(start_server, make_upstream):
    up = make_upstream(reply(200, "OK", [("Content-Type", "text/plain"),
                                         ("Content-Length", "1234")], framing="none"))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(build_request("HEAD", "/api/h"))
    resp, rest = read_response(s, head_only=True)
    assert resp.status == 200 and resp.header("Content-Length") == "1234", resp.raw_head
    assert rest == b""
    # Nothing follows the head: the next response on the connection starts right away.
    s.sendall(build_request("GET", "/healthz"))
    resp, _ = read_response(s, buf=rest)
    assert (resp.status, resp.body) == (200, b"ok\n")
    s.close()
    assert up.wait_requests(1)[0].line == "HEAD /h HTTP/1.1"


@pytest.mark.parametrize("status,reason,headers", [
    (204, "No Content", [("X-A", "1")]),
    (304, "Not Modified", [("ETag", '"v1"'), ("Cache-Control", "max-age=5")]),
])
def test_no_body_statuses(start_server, make_upstream, status, reason, headers):
    up = make_upstream(reply(status, reason, headers, framing="none"))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(build_request("GET", "/api/n", {"If-None-Match": '"v1"'}))
    resp, rest = read_response(s)
    assert (resp.status, resp.reason, rest) == (status, reason, b"")
    assert end_to_end(resp) == headers
    assert resp.header("Transfer-Encoding") is None and resp.header("Connection") is None
    s.sendall(build_request("GET", "/healthz"))
    resp, _ = read_response(s)
    assert (resp.status, resp.body) == (200, b"ok\n")
    s.close()
    assert up.wait_requests(1)[0].header("If-None-Match") == '"v1"'


@pytest.mark.parametrize("given,expected_added", [
    ([("Content-Type", "text/event-stream")],
     [("X-Accel-Buffering", "no"), ("Cache-Control", "no-cache")]),
    ([("Content-Type", "text/event-stream; charset=utf-8"), ("cache-control", "no-store")],
     [("X-Accel-Buffering", "no")]),
    ([("Content-Type", "text/event-stream"), ("X-Accel-Buffering", "yes")],
     [("Cache-Control", "no-cache")]),
    ([("Cache-Control", "private"), ("Content-Type", "Text/Event-Stream"),
      ("X-Accel-Buffering", "no")], []),
])
def test_event_stream_headers_added_only_when_absent(start_server, make_upstream, given,
                                                     expected_added):
    up = make_upstream(event_stream([b"data: x\n\n"], headers=given, hold=False))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = open_request(srv.port, "GET", "/api/s", SSE_ACCEPT)
    data = recv_all(s, timeout=10)
    s.close()
    head, body = split_head(data)
    resp = head_response(head)
    assert resp.status == 200
    assert [h for h in resp.headers if h[0].lower() != "date"] == given + expected_added
    assert body == b"data: x\n\n"


def test_hop_by_hop_response_headers_removed(start_server, make_upstream):
    raw = (b"HTTP/1.1 200 OK\r\n"
           b"Connection: close, X-Secret\r\n"
           b"X-Secret: s\r\n"
           b"Keep-Alive: timeout=5\r\n"
           b"X-Keep: 1\r\n"
           b"Proxy-Authenticate: Basic realm=\"x\"\r\n"
           b"Trailer: X-T\r\n"
           b"Upgrade: h2c\r\n"
           b"TE: trailers\r\n"
           b"Content-Type: text/plain\r\n"
           b"Content-Length: 2\r\n"
           b"\r\nok")
    up = make_upstream(reply_raw(raw))
    srv = start_server(*proxy_args(("/api", up.url)))
    s = connect(srv.port)
    s.sendall(build_request("GET", "/api/h"))
    resp, rest = read_response(s)
    assert (resp.status, resp.body, rest) == (200, b"ok", b"")
    assert end_to_end(resp) == [("X-Keep", "1"), ("Content-Type", "text/plain")]
    assert resp.header("Content-Length") == "2"
    # The upstream's Connection: close is its own business: the client keeps its connection.
    s.sendall(build_request("GET", "/healthz"))
    resp, _ = read_response(s)
    assert (resp.status, resp.body) == (200, b"ok\n")
    s.close()


# ---- failures -------------------------------------------------------------------------------


def assert_gateway_error(srv, resp, status, url):
    assert resp.status == status, (resp.raw_head, resp.body)
    assert resp.header("Content-Type", "").startswith("text/plain"), resp.raw_head
    body = resp.body.decode()
    assert body.startswith("upstream %s " % url) and body.endswith("\n"), body
    assert body.count("\n") == 1 and len(body) > len("upstream %s \n" % url), body
    line = srv.wait_for_line(r"^sse-server: upstream %s " % re.escape(url))
    assert line == "sse-server: " + body[:-1]


def test_refused_gives_502(start_server):
    port = closed_port()
    url = "http://127.0.0.1:%d" % port
    srv = start_server(*proxy_args(("/api", url)))
    r = request(srv.port, "GET", "/api/x")
    assert_gateway_error(srv, r, 502, url)
    healthy(srv.port)


def stalled_listener():
    """(listener, filler) on 127.0.0.1 whose accept queue is full: Linux drops further SYNs,
    so connecting to it hangs. Where that does not hold the 504 cannot be provoked: the test
    is skipped, or fails under SSE_TESTS_STRICT=1 (CI's Linux does drop those SYNs)."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    filler = socket.create_connection(lst.getsockname(), timeout=5)
    probe = socket.socket()
    probe.setblocking(False)
    probe.connect_ex(lst.getsockname())
    _, w, _ = select.select([], [probe], [], 1.0)
    probe.close()
    if w:
        filler.close()
        lst.close()
        unavailable("a full accept queue does not stall connects here")
    return lst, filler


def test_gateway_error_reason_phrases(start_server):
    """RFC 9110 15.6.3 and 15.6.5: 502 Bad Gateway, 504 Gateway Timeout."""
    srv = start_server(*proxy_args(("/api", "http://127.0.0.1:%d" % closed_port())))
    r = request(srv.port, "GET", "/api/x")
    got = [(r.status, r.reason)]
    lst, filler = stalled_listener()
    try:
        srv = start_server("--proxy-connect-timeout", "1",
                           *proxy_args(("/api", "http://127.0.0.1:%d" % lst.getsockname()[1])))
        r = request(srv.port, "GET", "/api/x", timeout=15)
        got.append((r.status, r.reason))
    finally:
        filler.close()
        lst.close()
    assert got == [(502, "Bad Gateway"), (504, "Gateway Timeout")]


def test_default_port_is_80(start_server, make_upstream):
    try:
        up = make_upstream(reply(200, "OK", [], b"port 80"), port=80)
    except OSError as e:
        unavailable("cannot listen on 127.0.0.1:80 here (CI runs as root): %s" % e)
    srv = start_server(*proxy_args(("/api", "http://127.0.0.1")))
    r = request(srv.port, "GET", "/api/x")
    assert (r.status, r.body) == (200, b"port 80")
    assert up.wait_requests(1)[0].line == "GET /x HTTP/1.1"
    # Messages name the upstream as http://HOST:PORT, the default port included.
    up.stop()
    r = request(srv.port, "GET", "/api/x")
    assert r.status == 502
    assert r.body.startswith(b"upstream http://127.0.0.1:80 "), r.body


def test_connect_timeout_gives_504(start_server):
    lst, filler = stalled_listener()
    addr = lst.getsockname()
    try:
        url = "http://127.0.0.1:%d" % addr[1]
        srv = start_server("--proxy-connect-timeout", "1", *proxy_args(("/api", url)))
        r = request(srv.port, "GET", "/api/x", timeout=15)
        assert_gateway_error(srv, r, 504, url)
        s = open_request(srv.port, "GET", "/api/x", SSE_ACCEPT)
        assert_turned_away(recv_all(s, timeout=15))
        s.close()
        assert metric_values(srv.port)["sse_proxy_errors_total"] == 2
    finally:
        filler.close()
        lst.close()


def test_upstream_closes_without_answering_gives_502(start_server, make_upstream):
    up = make_upstream(close_without_answer())
    srv = start_server(*proxy_args(("/api", up.url)))
    r = request(srv.port, "GET", "/api/x", timeout=10)
    assert_gateway_error(srv, r, 502, up.url)


@pytest.mark.parametrize("raw", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo colon in this line\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
], ids=["garbage", "non-numeric", "four-digit", "bad-header", "oversized"])
def test_invalid_response_head_gives_502(start_server, make_upstream, raw):
    up = make_upstream(reply_raw(raw, hold=True, hold_timeout=20))  # the upstream stays open
    srv = start_server(*proxy_args(("/api", up.url)))
    r = request(srv.port, "GET", "/api/x", timeout=10)
    assert_gateway_error(srv, r, 502, up.url)
    assert up.wait_conns(1)[0].peer_closed.wait(10), "the upstream connection was not closed"


def test_large_but_legal_response_head_passes(start_server, make_upstream):
    big = "b" * 6000
    up = make_upstream(reply(200, "OK", [("X-Big", big)], b"fine"))
    srv = start_server(*proxy_args(("/api", up.url)))
    r = request(srv.port, "GET", "/api/x")
    assert (r.status, r.body, r.header("X-Big")) == (200, b"fine", big)


def test_slow_answer_is_waited_for(start_server, make_upstream):
    up = make_upstream(delayed(1.5, reply(200, "OK", [], b"late but fine")))
    srv = start_server(*proxy_args(("/api", up.url)))
    r = request(srv.port, "GET", "/api/x", timeout=10)
    assert (r.status, r.body) == (200, b"late but fine")


def test_upstream_down_then_back(start_server, make_upstream):
    """The address is resolved once; every request connects anew, so an upstream that
    restarts on the same port is reached again."""
    up = make_upstream(reply(200, "OK", [], b"up"))
    srv = start_server(*proxy_args(("/api", up.url)))
    assert request(srv.port, "GET", "/api/x").body == b"up"
    up.stop()
    r = request(srv.port, "GET", "/api/x")
    assert r.status == 502 and r.body.startswith(b"upstream %s " % up.url.encode()), r.body
    s = open_request(srv.port, "GET", "/api/x", SSE_ACCEPT)
    assert_turned_away(recv_all(s, timeout=10))
    s.close()
    up.handler = reply(200, "OK", [], b"back")
    up.start()
    r = request(srv.port, "GET", "/api/x")
    assert (r.status, r.body) == (200, b"back")


def test_eventsource_requests_never_get_5xx(start_server, make_upstream):
    down = "http://127.0.0.1:%d" % closed_port()
    up503 = make_upstream(reply(503, "Service Unavailable",
                                [("Content-Type", "text/plain"), ("Retry-After", "5")],
                                b"busy\n"))
    up404 = make_upstream(reply(404, "Not Found", [("Content-Type", "text/plain")], b"no\n"))
    srv = start_server(*proxy_args(("/down", down), ("/busy", up503.url), ("/gone", up404.url)))
    for path, accept in [("/down/s", "text/event-stream"), ("/busy/s", "text/event-stream"),
                         ("/down/s", "text/html, text/event-stream;q=0.9")]:
        s = open_request(srv.port, "GET", path, {"Accept": accept})
        assert_turned_away(recv_all(s, timeout=10))
        s.close()
    srv.wait_for_line(r"^sse-server: upstream %s " % re.escape(up503.url))
    # Ordinary requests get the failure as it is.
    r = request(srv.port, "GET", "/down/s", {"Accept": "*/*"})
    assert r.status == 502
    r = request(srv.port, "POST", "/down/s", SSE_ACCEPT, body=b"x")
    assert r.status == 502
    r = request(srv.port, "GET", "/busy/s")
    assert (r.status, r.reason, r.body) == (503, "Service Unavailable", b"busy\n")
    assert r.header("Retry-After") == "5"
    # A 4xx is the upstream's answer, not a passing failure: it goes through.
    r = request(srv.port, "GET", "/gone/s", SSE_ACCEPT)
    assert (r.status, r.body) == (404, b"no\n")


def test_upstream_end_after_head_closes_client_after_delivery(start_server, make_upstream):
    up = make_upstream()
    srv = start_server(*proxy_args(("/api", up.url)))
    # An event stream: everything sent arrives, then EOF.
    s = open_request(srv.port, "GET", "/api/s", SSE_ACCEPT)
    u = up.accept()
    u.read_request()
    u.send_head(200, "OK", [("Content-Type", "text/event-stream")])
    u.send(b"id: 1\ndata: whole\n\ndata: par")
    head, buf = recv_until(s, b"data: par", timeout=10)
    u.close()
    assert buf + recv_all(s, timeout=10) == b""
    assert head.endswith(b"\r\n\r\nid: 1\ndata: whole\n\ndata: par")
    s.close()
    # A Content-Length body cut short: the bytes sent arrive, then the client is closed.
    s = open_request(srv.port, "GET", "/api/cl")
    u = up.accept()
    u.read_request()
    u.send_head(200, "OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
    u.send(b"0123456789")
    _, rest = recv_until(s, b"0123456789", timeout=10)
    u.close()
    assert rest + recv_all(s, timeout=10) == b""
    s.close()
    srv.wait_for_line(r"^sse-server: upstream %s " % re.escape(up.url))
    # A chunked body cut short: the client gets the chunk, never a last chunk, then EOF.
    s = open_request(srv.port, "GET", "/api/ch")
    u = up.accept()
    u.read_request()
    u.send_head(200, "OK", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")])
    u.send_chunk(b"hello")
    head, buf = recv_until(s, b"\r\n\r\n", timeout=10)
    got, rest = recv_until(s, b"hello", timeout=10, buf=buf)
    body = got + rest
    u.close()
    body += recv_all(s, timeout=10)
    s.close()
    assert b"Transfer-Encoding: chunked\r\n" in head, head
    assert decode_chunked_prefix(body) == (b"hello", False), body
    assert metric_values(srv.port)["sse_proxy_errors_total"] == 2


# ---- heartbeats -----------------------------------------------------------------------------


def test_proxy_heartbeat_only_between_events(start_server, make_upstream):
    up = make_upstream()
    srv = start_server("--proxy-heartbeat", "1", *proxy_args(("/sse", up.url)))
    s = open_request(srv.port, "GET", "/sse", SSE_ACCEPT)
    u = up.accept()
    u.read_request()
    u.send_head(200, "OK", [("Content-Type", "text/event-stream")])
    _, buf = recv_until(s, b"\r\n\r\n", timeout=10)
    # Silence at the start of the body: heartbeats.
    got = collect_for(s, 2.5, buf)
    assert re.fullmatch(rb"(:\n)+", got), got
    # After a complete event: heartbeats.
    u.send(b"data: one\n\n")
    got = collect_for(s, 2.5)
    assert re.fullmatch(rb"data: one\n\n(:\n)+", got), got
    # Inside an unfinished line, then inside an unfinished event: nothing is added.
    u.send(b"data: part")
    assert collect_for(s, 2.5) == b"data: part"
    u.send(b"\n")
    assert collect_for(s, 2.5) == b"\n"
    u.send(b"\n")
    got = collect_for(s, 2.5)
    assert re.fullmatch(rb"\n(:\n)+", got), got
    u.close()
    assert recv_all(s, timeout=10) == b""
    s.close()


def test_proxy_heartbeat_with_crlf_line_ends(start_server, make_upstream):
    up = make_upstream()
    srv = start_server("--proxy-heartbeat", "1", *proxy_args(("/sse", up.url)))
    s = open_request(srv.port, "GET", "/sse", SSE_ACCEPT)
    u = up.accept()
    u.read_request()
    u.send_head(200, "OK", [("Content-Type", "text/event-stream")])
    _, buf = recv_until(s, b"\r\n\r\n", timeout=10)
    assert buf == b""
    # CRLF lines: inside the event nothing, after its blank line heartbeats.
    u.send(b"data: a\r\n")
    assert collect_for(s, 2.5) == b"data: a\r\n"
    u.send(b"\r\n")
    got = collect_for(s, 2.5)
    assert re.fullmatch(rb"\r\n(:\n)+", got), got
    u.close()
    s.close()


def test_no_heartbeat_in_other_bodies(start_server, make_upstream):
    up = make_upstream()
    srv = start_server("--proxy-heartbeat", "1", *proxy_args(("/api", up.url)))
    s = open_request(srv.port, "GET", "/api/plain")
    u = up.accept()
    u.read_request()
    u.send_head(200, "OK", [("Content-Type", "text/plain")])  # close-delimited
    _, buf = recv_until(s, b"\r\n\r\n", timeout=10)
    u.send(b"line\n\n")
    assert collect_for(s, 2.5, buf) == b"line\n\n"
    u.close()
    assert recv_all(s, timeout=10) == b""
    s.close()


# ---- the client going away ------------------------------------------------------------------


def test_client_disconnect_closes_upstream(start_server, make_upstream):
    up = make_upstream()
    mute = make_upstream(never_answer(timeout=20))
    srv = start_server(*proxy_args(("/api", up.url), ("/mute", mute.url)))
    # While the stream flows.
    s = open_request(srv.port, "GET", "/api/s", SSE_ACCEPT)
    u = up.accept()
    u.read_request()
    u.send_head(200, "OK", [("Content-Type", "text/event-stream")])
    u.send(b"data: hi\n\n")
    recv_until(s, b"data: hi\n\n", timeout=10)
    assert metric_values(srv.port)["sse_upstream_connections"] == 1
    s.close()
    assert u.wait_eof(timeout=10), "the upstream did not see the connection close"
    # Before the upstream answered.
    s = open_request(srv.port, "GET", "/mute/slow")
    mute.wait_requests(1)
    s.close()
    assert mute.wait_conns(1)[0].peer_closed.wait(10), "the upstream did not see the close"
    wait_metric(srv.port, "sse_upstream_connections", lambda v: v == 0)
    healthy(srv.port)


def test_stream_churn_does_not_leak_descriptors(start_server, make_upstream):
    up = make_upstream(event_stream([b"data: hi\n\n"], hold=True, hold_timeout=20))
    srv = start_server(*proxy_args(("/s", up.url)))

    def cycle():
        s = open_request(srv.port, "GET", "/s/x", SSE_ACCEPT)
        recv_until(s, b"data: hi\n\n", timeout=10)
        s.close()

    cycle()
    wait_metric(srv.port, "sse_upstream_connections", lambda v: v == 0)
    base = settled_fd_count(srv)
    for _ in range(300):
        cycle()
    wait_metric(srv.port, "sse_upstream_connections", lambda v: v == 0)
    conns = up.wait_conns(301)
    assert all(c.peer_closed.wait(10) for c in conns), "an upstream connection stayed open"
    assert settled_fd_count(srv) == base
    healthy(srv.port)


def test_failures_do_not_leak_descriptors(start_server, make_upstream):
    bad = make_upstream(reply_raw(b"garbage\r\n\r\n"))
    quiet = make_upstream(close_without_answer())
    down = "http://127.0.0.1:%d" % closed_port()
    srv = start_server(*proxy_args(("/bad", bad.url), ("/quiet", quiet.url), ("/down", down)))
    healthy(srv.port)
    base = settled_fd_count(srv)
    for i in range(60):
        path = ("/bad/x", "/quiet/x", "/down/x")[i % 3]
        headers = SSE_ACCEPT if i % 2 else None
        r = request(srv.port, "GET", path, headers, timeout=10)
        assert r.status == (200 if i % 2 else 502), (path, r.raw_head)
    m = wait_metric(srv.port, "sse_upstream_connections", lambda v: v == 0)
    assert m["sse_proxy_errors_total"] == 60
    assert settled_fd_count(srv) == base
    healthy(srv.port)


# ---- backpressure ---------------------------------------------------------------------------


def test_slow_client_backpressures_upstream(start_server, make_upstream):
    event = b"data: " + b"x" * 1000 + b"\n\n"
    block = event * 1024  # about 1 MB, whole events
    total_blocks = 64
    state = {"stalled": threading.Event(), "done": threading.Event(),
             "head_seen": threading.Event()}

    def fast(conn, req):
        state["conn"] = conn
        conn.send_head(200, "OK", [("Content-Type", "text/event-stream")])
        # The head alone first (test_large_body_right_after_the_head covers both at once).
        if not state["head_seen"].wait(10):
            return
        deadline = time.monotonic() + 20
        for _ in range(total_blocks):
            if time.monotonic() > deadline:
                break
            if conn.send_some(block, stall=2.0, timeout=20) < len(block):
                state["stalled"].set()
                break
        state["done"].set()
        conn.wait_eof(20)

    up = make_upstream(by_path({"/fast": fast,
                                "/small": reply(200, "OK", [], b"small")}))
    srv = start_server(*proxy_args(("/api", up.url)))
    healthy(srv.port)
    rss0 = srv.rss_bytes()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(10)
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(build_request("GET", "/api/fast", SSE_ACCEPT))
    head, buf = recv_until(slow, b"\r\n\r\n", timeout=10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    state["head_seen"].set()
    # The client reads nothing more; the upstream must get stuck.
    assert state["done"].wait(25), "the upstream's pushing neither ended nor stalled"
    conn = state["conn"]
    assert state["stalled"].is_set(), (
        "the upstream pushed all %d bytes to a client that reads nothing" % conn.bytes_sent)
    assert conn.bytes_sent < total_blocks * len(block)
    growth = srv.rss_bytes() - rss0
    assert growth < 32 << 20, "server RSS grew by %d bytes" % growth
    # Others are still served meanwhile.
    r = request(srv.port, "GET", "/api/small")
    assert (r.status, r.body) == (200, b"small")
    healthy(srv.port)
    # What the slow client gets, once it reads, is the stream intact.
    data, _ = recv_exact(slow, 256 * 1024, buf, timeout=10)
    n = len(data) // len(event)
    assert data[: n * len(event)] == event * n
    slow.close()
    assert conn.peer_closed.wait(10), "the upstream connection was not closed"


def test_upload_to_a_stalled_upstream_is_backpressured(start_server, make_upstream):
    up = make_upstream()
    srv = start_server(*proxy_args(("/api", up.url)))
    healthy(srv.port)
    rss0 = srv.rss_bytes()
    total = 64 << 20
    c = connect(srv.port, timeout=10)
    c.sendall(build_request("POST", "/api/up", {"Content-Length": str(total)}))
    u = up.accept()
    req = u.read_request(body=False)  # then the upstream reads nothing
    assert req.header("Content-Length") == str(total)
    block = b"u" * (1 << 20)
    sent, deadline = 0, time.monotonic() + 20
    c.settimeout(2.0)
    while sent < total and time.monotonic() < deadline:
        try:
            sent += c.send(block)
        except socket.timeout:
            break
    assert sent < total, "the client pushed all %d bytes to an upstream that reads nothing" % sent
    growth = srv.rss_bytes() - rss0
    assert growth < 32 << 20, "server RSS grew by %d bytes" % growth
    healthy(srv.port)
    # Once the upstream reads, the body flows on, intact.
    got = u.recv_exactly(1 << 20, timeout=10)
    assert got == b"u" * (1 << 20)
    c.close()
    assert u.wait_eof(timeout=10), "the upstream connection was not closed"


# ---- metrics --------------------------------------------------------------------------------


def test_proxy_metrics(start_server, make_upstream):
    up = make_upstream()
    down = "http://127.0.0.1:%d" % closed_port()
    srv = start_server(*proxy_args(("/api", up.url), ("/down", down)))
    m = metric_values(srv.port)
    assert (m["sse_proxied_requests_total"], m["sse_proxy_errors_total"],
            m["sse_upstream_connections"]) == (0, 0, 0)
    # A stream in progress holds one upstream connection.
    s = open_request(srv.port, "GET", "/api/s", SSE_ACCEPT)
    u = up.accept()
    u.read_request()
    m = wait_metric(srv.port, "sse_upstream_connections", lambda v: v == 1)
    assert m["sse_proxied_requests_total"] == 1
    u.send_head(200, "OK", [("Content-Type", "text/event-stream")])
    recv_until(s, b"\r\n\r\n", timeout=10)
    assert metric_values(srv.port)["sse_upstream_connections"] == 1
    s.close()
    assert u.wait_eof(10)
    m = wait_metric(srv.port, "sse_upstream_connections", lambda v: v == 0)
    assert (m["sse_proxied_requests_total"], m["sse_proxy_errors_total"]) == (1, 0)
    # A failure counts as an error.
    r = request(srv.port, "GET", "/down/x")
    assert r.status == 502
    m = metric_values(srv.port)
    assert m["sse_proxy_errors_total"] == 1
    assert m["sse_proxied_requests_total"] in (1, 2)
    before = m["sse_proxied_requests_total"]
    # A plain success.
    s = open_request(srv.port, "GET", "/api/ok")
    u = up.accept()
    u.read_request()
    u.respond(200, "OK", [], b"fine")
    resp, _ = read_response(s)
    assert (resp.status, resp.body) == (200, b"fine")
    s.close()
    m = wait_metric(srv.port, "sse_upstream_connections", lambda v: v == 0)
    assert m["sse_proxied_requests_total"] == before + 1
    assert m["sse_proxy_errors_total"] == 1
    # Built-in endpoints are not proxied requests.
    healthy(srv.port)
    assert metric_values(srv.port)["sse_proxied_requests_total"] == before + 1


# ---- command line ---------------------------------------------------------------------------


def run_binary(*args, timeout=15):
    p = subprocess.Popen([BINARY, "--listen", "127.0.0.1:0", *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=5)
        raise AssertionError("sse-server %r did not exit; stderr %r" % (args, err))
    return p.returncode, err.decode("utf-8", "replace")


@pytest.mark.parametrize("args", [
    ["--proxy", "/api"],
    ["--proxy", "/api=https://127.0.0.1:1"],
    ["--proxy", "/api=ftp://127.0.0.1/x"],
    ["--proxy", "/api=127.0.0.1:80"],
    ["--proxy-connect-timeout", "abc"],
    ["--proxy-heartbeat", "abc"],
])
def test_bad_proxy_options_exit_2(args):
    rc, err = run_binary(*args)
    assert rc == 2, (args, rc, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("sse-server: "), err


def test_unresolvable_upstream_exits_1():
    rc, err = run_binary("--proxy", "/api=http://no-such-host.invalid:1")
    assert rc == 1, (rc, err)
    assert ("sse-server: proxy upstream 'http://no-such-host.invalid:1' has a host that cannot "
            "be resolved") in err, err
