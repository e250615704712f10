"""HTTP/1.x parsing and connection handling: keep-alive, pipelining, HTTP/1.0, hostile and
malformed input (each followed by a check that the same server still serves /healthz),
header timeout (slowloris, idle keep-alive), /healthz, /metrics (every close counted under
its reason), HEAD, the built-in page."""

import re
import select
import socket
import struct
import time

import pytest

from conftest import (
    CLOSE_REASONS,
    Stream,
    closed_by_reason,
    connect,
    exchange_closing,
    healthy,
    publish,
    read_response,
    recv_all,
    request,
)

IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT$"
)

GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


# ---- helpers ----------------------------------------------------------------------------





def assert_error(resp, tail, status):
    """An error answer per the contract: status, text/plain one-line body with exact
    Content-Length, Connection: close, and nothing after it before EOF."""
    assert resp.status == status, (resp.raw_head, resp.body)
    assert resp.raw_head.startswith(b"HTTP/1.1 %d " % status), resp.raw_head
    assert resp.header("Content-Type") == "text/plain; charset=utf-8", resp.raw_head
    assert resp.header("Content-Length") == str(len(resp.body)), resp.raw_head
    assert resp.body.endswith(b"\n") and resp.body.count(b"\n") == 1, resp.body
    assert resp.header("Connection") == "close", resp.raw_head
    assert IMF_FIXDATE.match(resp.header("Date", "")), resp.raw_head
    assert tail == b"", tail


def bad_request(port, raw, status=400):
    resp, tail = exchange_closing(port, raw)
    assert_error(resp, tail, status)
    healthy(port)
    return resp


def metrics(port):
    """Returns (values, types) of /metrics; values maps name -> number."""
    r = request(port, "GET", "/metrics")
    assert r.status == 200, r.raw_head
    assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    values, types = {}, {}
    for line in r.body.decode("utf-8").split("\n"):
        if not line:
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            assert len(parts) == 4, line
            types[parts[2]] = parts[3]
        elif line.startswith("#"):
            continue
        else:
            name, value = line.split(" ")
            values[name] = float(value) if "." in value or "e" in value else int(value)
    return values, types


# ---- keep-alive, pipelining, HTTP/1.0 ------------------------------------------------------


def test_healthz_exact(server):
    s = connect(server.port)
    try:
        s.sendall(GET_HEALTHZ)
        resp, rest = read_response(s)
    finally:
        s.close()
    assert rest == b""
    assert resp.raw_head.startswith(b"HTTP/1.1 200 OK\r\nDate: "), resp.raw_head
    assert IMF_FIXDATE.match(resp.header("Date"))
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"
    assert resp.header("Content-Length") == "3"
    assert resp.header("Connection") is None  # HTTP/1.1 keep-alive is the default
    assert resp.body == b"ok\n"


def test_keep_alive_two_requests_one_connection(server):
    s = connect(server.port)
    try:
        for _ in range(2):
            s.sendall(GET_HEALTHZ)
            resp, rest = read_response(s)
            assert resp.status == 200
            assert resp.body == b"ok\n"
            assert rest == b""
            assert resp.header("Connection") is None
        # still open: nothing more and no EOF
        r, _, _ = select.select([s], [], [], 0.3)
        assert not r
    finally:
        s.close()


@pytest.mark.valgrind
def test_pipelining_responses_in_order(server):
    s = connect(server.port)
    try:
        s.sendall(
            GET_HEALTHZ
            + b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        r1, rest = read_response(s)
        r2, rest = read_response(s, buf=rest)
        r3, rest = read_response(s, buf=rest)
        r4, rest = read_response(s, buf=rest)
        tail = rest + recv_all(s)
    finally:
        s.close()
    assert (r1.status, r1.body) == (200, b"ok\n")
    assert (r2.status, r2.body) == (404, b"not found\n")
    assert r3.status == 200 and b"sse_connections_total" in r3.body
    assert (r4.status, r4.body) == (200, b"ok\n")
    assert r4.header("Connection") == "close"
    assert tail == b""


def test_two_requests_in_one_send(server):
    s = connect(server.port)
    try:
        s.sendall(GET_HEALTHZ + GET_HEALTHZ)
        r1, rest = read_response(s)
        r2, rest = read_response(s, buf=rest)
        assert rest == b""
        assert (r1.status, r1.body) == (200, b"ok\n")
        assert (r2.status, r2.body) == (200, b"ok\n")
    finally:
        s.close()


def test_http10_closes_by_default(server):
    resp, tail = exchange_closing(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert resp.status == 200
    assert resp.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert resp.body == b"ok\n"
    assert resp.header("Connection") == "close"
    assert tail == b""


def test_http10_keep_alive_when_asked(server):
    s = connect(server.port)
    try:
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp, rest = read_response(s)
            assert resp.status == 200
            assert resp.body == b"ok\n"
            assert resp.header("Connection") == "keep-alive"
            assert rest == b""
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        resp, rest = read_response(s)
        assert resp.body == b"ok\n"
        assert resp.header("Connection") == "close"
        assert rest + recv_all(s) == b""
    finally:
        s.close()


def test_http11_connection_close_honoured(server):
    resp, tail = exchange_closing(
        server.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    assert resp.status == 200
    assert resp.body == b"ok\n"
    assert resp.header("Connection") == "close"
    assert tail == b""


def test_http10_without_host_ok(server):
    resp, tail = exchange_closing(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (resp.status, resp.body) == (200, b"ok\n")


def test_lf_only_request_accepted(server):
    s = connect(server.port)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\nHost: localhost\n\n")
        resp, rest = read_response(s)
        assert (resp.status, resp.body, rest) == (200, b"ok\n", b"")
        # and the connection is still usable
        s.sendall(b"GET /healthz HTTP/1.1\nHost: localhost\nConnection: close\n\n")
        resp, rest = read_response(s)
        assert (resp.status, resp.body) == (200, b"ok\n")
        assert rest + recv_all(s) == b""
    finally:
        s.close()


def test_absolute_form_target(server):
    resp, tail = exchange_closing(
        server.port,
        b"GET http://localhost/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    assert (resp.status, resp.body) == (200, b"ok\n")


@pytest.mark.valgrind
def test_pipelined_junk_after_valid_request(server):
    s = connect(server.port)
    try:
        s.sendall(GET_HEALTHZ + b"\x00\x01junk\r\n\r\n")
        r1, rest = read_response(s)
        r2, rest = read_response(s, buf=rest)
        tail = rest + recv_all(s)
    finally:
        s.close()
    assert (r1.status, r1.body) == (200, b"ok\n")
    assert_error(r2, tail, 400)
    healthy(server.port)


# ---- oversized and malformed heads -------------------------------------------------------


def test_oversized_header_431(server):
    raw = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    bad_request(server.port, raw, 431)


def test_oversized_request_line_431(server):
    raw = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
    bad_request(server.port, raw, 431)


def test_many_small_headers_over_8k_431(server):
    hs = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 240) for i in range(40))  # ~10 KB, 41 fields
    raw = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + hs + b"\r\n"
    bad_request(server.port, raw, 431)


def test_head_just_under_limit_ok(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Pad: "
    pad = 8000 - len(head) - 4
    raw = head + b"p" * pad + b"\r\n\r\n"
    assert len(raw) == 8000
    resp, tail = exchange_closing(server.port, raw)
    assert (resp.status, resp.body) == (200, b"ok\n")


def _head_of_size(n):
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Pad: "
    raw = head + b"p" * (n - len(head) - 4) + b"\r\n\r\n"
    assert len(raw) == n
    return raw


def test_head_of_exactly_8192_bytes_ok(server):
    resp, tail = exchange_closing(server.port, _head_of_size(8192))
    assert (resp.status, resp.body) == (200, b"ok\n")


@pytest.mark.valgrind
def test_head_of_8195_bytes_431(server):
    # 8193 bytes of request line and header lines even without the final blank line
    bad_request(server.port, _head_of_size(8195), 431)


@pytest.mark.valgrind
def test_head_split_byte_by_byte(server):
    s = connect(server.port)
    try:
        for i in range(len(GET_HEALTHZ)):
            s.sendall(GET_HEALTHZ[i : i + 1])
            time.sleep(0.002)
        resp, rest = read_response(s)
        assert (resp.status, resp.body, rest) == (200, b"ok\n", b"")
        # a second request split in the middle of its final CRLFCRLF, pipelined after a
        # complete one
        s.sendall(GET_HEALTHZ + GET_HEALTHZ[:-3])
        r1, rest = read_response(s)
        time.sleep(0.1)
        s.sendall(GET_HEALTHZ[-3:])
        r2, rest = read_response(s, buf=rest)
        assert (r1.body, r2.body, rest) == (b"ok\n", b"ok\n", b"")
    finally:
        s.close()


@pytest.mark.valgrind
def test_65_headers_431(server):
    hs = b"".join(b"X-H%d: v\r\n" % i for i in range(64))  # + Host = 65
    raw = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + hs + b"\r\n"
    bad_request(server.port, raw, 431)


def test_64_headers_ok(server):
    hs = b"".join(b"X-H%d: v\r\n" % i for i in range(62))  # + Host + Connection = 64
    raw = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + hs + b"\r\n"
    resp, tail = exchange_closing(server.port, raw)
    assert (resp.status, resp.body) == (200, b"ok\n")


MALFORMED = {
    "garbage": b"\x00\x01\x02garbage\r\n\r\n",
    "bare_cr_in_header": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: b\rc\r\n\r\n",
    "bare_cr_in_request_line": b"GET /healthz\r HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "obs_fold": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: b\r\n  c\r\n\r\n",
    "obs_fold_tab": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: b\r\n\tc\r\n\r\n",
    "space_before_colon": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A : b\r\n\r\n",
    "space_before_colon_host": b"GET /healthz HTTP/1.1\r\nHost : localhost\r\n\r\n",
    "nul_in_header": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: b\x00c\r\n\r\n",
    "ctl_in_header": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: b\x01c\r\n\r\n",
    "no_colon": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nNoColonHere\r\n\r\n",
    "missing_host_11": b"GET /healthz HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n",
    "version_garbage": b"GET /healthz GARBAGE/1.1\r\nHost: localhost\r\n\r\n",
    "invalid_method_token": b"G(T /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "target_no_slash": b"GET healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "missing_version": b"GET /healthz\r\nHost: localhost\r\n\r\n",
    "bad_escape_zz": b"GET /%zz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "bad_escape_short": b"GET /%4 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "escape_nul": b"GET /%00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "bad_escape_in_query": b"GET /healthz?a=%zz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "nul_escape_in_query": b"GET /healthz?a=%00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
}


@pytest.mark.valgrind
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_400(server, name):
    bad_request(server.port, MALFORMED[name], 400)


@pytest.mark.valgrind
@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0"])
def test_other_versions_505(server, version):
    bad_request(server.port, b"GET /healthz " + version + b"\r\nHost: localhost\r\n\r\n", 505)


@pytest.mark.valgrind
def test_unknown_method_405(server):
    resp, tail = exchange_closing(
        server.port, b"BREW /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    assert resp.status == 405
    assert resp.header("Allow") == "GET, HEAD, OPTIONS"
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"
    assert resp.body.endswith(b"\n") and resp.body.count(b"\n") == 1
    assert tail == b""
    healthy(server.port)


def test_put_metrics_405(server):
    resp, tail = exchange_closing(
        server.port,
        b"PUT /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert resp.status == 405
    assert resp.header("Allow") == "GET, HEAD, OPTIONS"
    assert tail == b""
    healthy(server.port)


def test_post_healthz_405(server):
    resp, tail = exchange_closing(
        server.port,
        b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert resp.status == 405
    assert resp.header("Allow") == "GET, HEAD, OPTIONS"
    healthy(server.port)


# ---- request smuggling shapes ------------------------------------------------------------

PUBLISH_HEAD = b"POST /publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer secret\r\n"

SMUGGLING = {
    "cl_and_te": PUBLISH_HEAD
    + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_and_cl": PUBLISH_HEAD
    + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two_differing_cl": PUBLISH_HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl_negative": PUBLISH_HEAD + b"Content-Length: -1\r\n\r\nhello",
    "cl_abc": PUBLISH_HEAD + b"Content-Length: abc\r\n\r\nhello",
    "cl_on_get_abc": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
    "cl_and_te_on_get": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.valgrind
@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_shapes_400(server, name):
    bad_request(server.port, SMUGGLING[name], 400)
    values, _ = metrics(server.port)
    assert values["sse_events_published_total"] == 0


# ---- header timeout ----------------------------------------------------------------------


def test_slowloris_closed_despite_trickle(start_server):
    srv = start_server("--header-timeout", "1")
    partial = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 500
    s = connect(srv.port)
    got = b""
    closed_at = None
    served_other = False
    sent = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 6:
            try:
                s.send(partial[sent : sent + 1])
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            r, _, _ = select.select([s], [], [], 0.05)
            if r:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    closed_at = time.monotonic()
                    break
                got += chunk
            if not served_other and time.monotonic() - t0 > 0.4:
                healthy(srv.port)  # another client is served meanwhile
                served_other = True
    finally:
        s.close()
    assert got == b"", got
    assert served_other
    assert closed_at is not None, "connection still open after 6 s of trickling"
    elapsed = closed_at - t0
    assert 0.9 <= elapsed <= 4.0, elapsed
    assert sent < len(partial)
    healthy(srv.port)


def test_silent_connection_closed_after_header_timeout(start_server):
    srv = start_server("--header-timeout", "1")
    s = connect(srv.port)
    t0 = time.monotonic()
    try:
        data = recv_all(s, timeout=6)
    finally:
        s.close()
    elapsed = time.monotonic() - t0
    assert data == b""
    assert 0.9 <= elapsed <= 4.0, elapsed
    healthy(srv.port)


@pytest.mark.valgrind
def test_idle_keep_alive_closed_after_header_timeout(start_server):
    srv = start_server("--header-timeout", "1")
    s = connect(srv.port)
    try:
        s.sendall(GET_HEALTHZ)
        resp, rest = read_response(s)
        assert (resp.status, resp.body) == (200, b"ok\n")
        t0 = time.monotonic()
        tail = rest + recv_all(s, timeout=6)
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert tail == b""
    assert 0.9 <= elapsed <= 4.0, elapsed
    healthy(srv.port)


def test_header_timeout_restarts_per_request(start_server):
    """The clock starts when the server starts waiting for a request: two requests, each
    sent 1.2 s after the previous answer, both succeed with --header-timeout 2."""
    srv = start_server("--header-timeout", "2")
    s = connect(srv.port)
    try:
        for _ in range(2):
            time.sleep(1.2)
            s.sendall(GET_HEALTHZ)
            resp, rest = read_response(s)
            assert (resp.status, resp.body, rest) == (200, b"ok\n", b"")
    finally:
        s.close()


# ---- /healthz, /metrics, HEAD, built-in page ---------------------------------------------

METRIC_NAMES = [
    "sse_subscribers",
    "sse_connections",
    "sse_connections_total",
    "sse_connections_rejected_total",
    "sse_events_published_total",
    "sse_events_delivered_total",
    "sse_bytes_delivered_total",
    "sse_subscribers_dropped_total",
    "sse_replays_total",
    "sse_resets_total",
    "sse_backlog_events",
    "sse_bad_requests_total",
]
GAUGES = {"sse_subscribers", "sse_connections", "sse_backlog_events"}


def test_metrics_names_and_types(server):
    values, types = metrics(server.port)
    for name in METRIC_NAMES:
        assert name in values, name
        assert types.get(name) == ("gauge" if name in GAUGES else "counter"), (name, types)
    r = request(server.port, "GET", "/metrics")
    text = r.body.decode()
    for name in METRIC_NAMES:
        assert re.search(r"^# HELP %s \S" % name, text, re.M), name
        assert re.search(r"^# TYPE %s (gauge|counter)$" % name, text, re.M), name
        assert re.search(r"^%s \d+$" % name, text, re.M), name
    assert r.header("Content-Length") == str(len(r.body))


@pytest.mark.valgrind
def test_metrics_values_follow_publishing(server):
    port = server.port
    sub = Stream(port, "/events")
    try:
        assert sub.status == 200
        assert sub.read_block() == b"retry: 3000\n\n"
        assert re.match(rb"^id: \d+\nevent: position\ndata:\n\n$", sub.read_block())
        m0, _ = metrics(port)
        assert m0["sse_subscribers"] == 1
        assert m0["sse_backlog_events"] == 0
        assert m0["sse_events_published_total"] == 0
        expected = b""
        for i in range(3):
            r = publish(port, "event %d" % i)
            assert r.status == 200, r.body
            expected += b"id: %s\ndata: event %d\n\n" % (r.json()["id"].encode(), i)
        got = sub.read_exactly(len(expected))
        assert got == expected
        deadline = time.monotonic() + 3
        while True:
            m1, _ = metrics(port)
            if m1["sse_events_delivered_total"] - m0["sse_events_delivered_total"] >= 3:
                break
            assert time.monotonic() < deadline, (m0, m1)
            time.sleep(0.05)
        assert m1["sse_events_published_total"] - m0["sse_events_published_total"] == 3
        assert m1["sse_events_delivered_total"] - m0["sse_events_delivered_total"] == 3
        assert m1["sse_bytes_delivered_total"] - m0["sse_bytes_delivered_total"] == len(expected)
        assert m1["sse_subscribers"] == 1
        assert m1["sse_backlog_events"] == 3
        # 3 publish connections + the second /metrics connection
        assert m1["sse_connections_total"] - m0["sse_connections_total"] == 4
        assert m1["sse_subscribers_dropped_total"] == 0
        assert m1["sse_replays_total"] == 0
        assert m1["sse_resets_total"] == 0
    finally:
        sub.close()
    deadline = time.monotonic() + 3
    while True:
        m2, _ = metrics(port)
        if m2["sse_subscribers"] == 0:
            break
        assert time.monotonic() < deadline, m2
        time.sleep(0.05)


def test_bad_requests_counted(server):
    m0, _ = metrics(server.port)
    exchange_closing(server.port, MALFORMED["garbage"])
    exchange_closing(server.port, b"GET /healthz HTTP/2.0\r\nHost: localhost\r\n\r\n")
    m1, _ = metrics(server.port)
    assert m1["sse_bad_requests_total"] - m0["sse_bad_requests_total"] == 2


class Closes:
    """Scrapes /metrics and compares closes by reason with a first scrape. Every scrape is a
    connection of its own (Connection: close), closed as done once its answer is read: a
    scrape expects one done for each scrape before it."""

    def __init__(self, port, start=None):
        """start: the first scrape's closes, or None to take one now."""
        self.port, self.scrapes = port, 0
        self.start = start if start is not None else self.scrape()

    def scrape(self):
        values, _ = metrics(self.port)
        self.scrapes += 1
        return closed_by_reason(values)

    def expect(self, **want):
        """Waits (up to 10 s) until the closes since the first scrape are exactly want plus
        the scrapes' own dones; fails at once when any series goes past it. Counters only
        grow, so a series past its expectation can never come back."""
        want = {r: n for r, n in want.items() if n}
        deadline = time.monotonic() + 10
        while True:
            own = self.scrapes
            now = self.scrape()
            expected = dict(want, done=want.get("done", 0) + own)
            got = {r: now[r] - self.start.get(r, 0) for r in CLOSE_REASONS}
            got = {r: n for r, n in got.items() if n}
            if got == expected:
                return
            assert all(got.get(r, 0) <= expected.get(r, 0) for r in CLOSE_REASONS), (got, expected)
            assert time.monotonic() < deadline, (got, expected)
            time.sleep(0.05)


ZERO_CLOSES = {r: 0 for r in CLOSE_REASONS}


def test_close_reason_client_closed(server):
    """The client closes between keep-alive requests, or before its first."""
    closes = Closes(server.port)
    s = connect(server.port)
    s.sendall(GET_HEALTHZ)
    assert read_response(s)[0].status == 200
    s.close()
    connect(server.port).close()
    closes.expect(client_closed=2)


def test_close_reason_done(server):
    closes = Closes(server.port)
    healthy(server.port)  # Connection: close
    closes.expect(done=1)


def test_close_reason_bad_request(server):
    closes = Closes(server.port)
    assert_error(*exchange_closing(server.port, MALFORMED["garbage"]), 400)
    closes.expect(bad_request=1)


def test_close_reason_reset(server):
    """A subscriber that resets its connection (RST, not FIN): the socket failed."""
    closes = Closes(server.port)
    st = Stream(server.port, "/events")
    assert st.read_block() == b"retry: 3000\n\n"
    st.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    st.close()
    closes.expect(reset=1)


def test_close_reason_header_timeout(start_server):
    srv = start_server("--header-timeout", "1")
    closes = Closes(srv.port)
    s = connect(srv.port)
    try:
        assert recv_all(s, timeout=10) == b""
    finally:
        s.close()
    closes.expect(header_timeout=1)


def test_close_reason_slow_subscriber(start_server):
    """A subscriber that never reads, behind 16 KB events with --client-buffer 16k, is
    dropped: one slow_subscriber close, and sse_subscribers_dropped_total says the same."""
    srv = start_server("--publish-token", "secret", "--client-buffer", "16k")
    closes = Closes(srv.port)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    try:
        published = 0
        while True:
            values, _ = metrics(srv.port)
            closes.scrapes += 1
            if values["sse_subscribers_dropped_total"]:
                break
            assert published < 500, "a subscriber that never reads was not dropped"
            assert publish(srv.port, "x" * 16000).status == 200
            published += 1
        assert values["sse_subscribers_dropped_total"] == 1
        closes.expect(slow_subscriber=1, done=published)
    finally:
        slow.close()


def test_close_reason_retired(server):
    closes = Closes(server.port)
    st = Stream(server.port, "/events/going")
    assert st.read_block() == b"retry: 3000\n\n"
    r = publish(server.port, b"", topic="going", method="DELETE")
    assert (r.status, r.json()) == (200, {"topic": "going", "closed": 1})
    st.read_until_closed()
    st.close()
    closes.expect(retired=1, done=1)


def test_close_reason_reconnect(start_server):
    """The demo's Drop button ends a stream so that it reconnects."""
    srv = start_server("--demo")
    closes = Closes(srv.port)
    st = Stream(srv.port, "/events/visitor-closes")
    assert st.read_block() == b"retry: 3000\n\n"
    r = request(srv.port, "POST", "/demo/drop?topic=visitor-closes")
    assert (r.status, r.body) == (200, b'{"ended": 1}\n')
    st.read_until_closed()
    st.close()
    closes.expect(reconnect=1, done=1)


def test_close_reason_overload(start_server):
    """With --max-clients 1 and a stream holding the one place, a second stream is told to
    come back (overload), and so is any /metrics request that comes before the server has
    seen the first stream close (its 503 counts as an overload too)."""
    srv = start_server("--max-clients", "1")
    first = Stream(srv.port, "/events")
    assert first.read_block() == b"retry: 3000\n\n"
    second = Stream(srv.port, "/events")
    assert second.status == 200
    assert re.fullmatch(rb"retry: \d+\n\n", second.read_until_closed())
    second.close()
    first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    first.close()  # a reset, whatever it has not read yet
    turned_away = 0
    while True:
        r = request(srv.port, "GET", "/metrics")
        if r.status == 200:
            break
        assert r.status == 503 and turned_away < 100, (r.raw_head, r.body)
        turned_away += 1
        time.sleep(0.05)
    closes = Closes(srv.port, start=ZERO_CLOSES)
    closes.scrapes = 1  # the 200 closes as done; the 503s before it as overload
    closes.expect(reset=1, overload=1 + turned_away)


def test_metrics_fit_their_buffer_at_any_value(server):
    """/metrics is built in a 16 KiB buffer: with every sample at 2^64-1 (20 digits) it must
    still fit, with room for a few more rows."""
    r = request(server.port, "GET", "/metrics")
    worst = len(r.body)
    for line in r.body.decode().split("\n"):
        if line and not line.startswith("#"):
            worst += 20 - len(line.split(" ")[1])
    assert worst <= 12 * 1024, worst
    text = r.body.decode()
    assert text.count("# HELP sse_connections_closed_total ") == 1
    assert text.count("# TYPE sse_connections_closed_total counter\n") == 1
    family = text.split("# TYPE sse_connections_closed_total counter\n")[1].split("\n")
    assert [re.fullmatch(r'sse_connections_closed_total\{reason="([a-z_]+)"\} \d+', line).group(1)
            for line in family[: len(CLOSE_REASONS)]] == CLOSE_REASONS


def test_head_healthz_no_body(server):
    s = connect(server.port)
    try:
        s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" + GET_HEALTHZ)
        r1, rest = read_response(s, head_only=True)
        assert r1.status == 200
        assert r1.header("Content-Length") == "3"
        assert r1.header("Content-Type") == "text/plain; charset=utf-8"
        # the very next bytes are the second response: HEAD sent no body
        r2, rest = read_response(s, buf=rest)
        assert r2.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (r2.body, rest) == (b"ok\n", b"")
    finally:
        s.close()


def test_head_metrics_no_body(server):
    s = connect(server.port)
    try:
        s.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n" + GET_HEALTHZ)
        r1, rest = read_response(s, head_only=True)
        assert r1.status == 200
        assert int(r1.header("Content-Length")) > 100
        r2, rest = read_response(s, buf=rest)
        assert r2.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (r2.body, rest) == (b"ok\n", b"")
    finally:
        s.close()


def test_builtin_page_without_root(server):
    for path in ("/", "/index.html"):
        r = request(server.port, "GET", path)
        assert r.status == 200
        assert r.header("Content-Type") == "text/html; charset=utf-8"
        assert r.header("Content-Length") == str(len(r.body))
        assert b"EventSource" in r.body
    r = request(server.port, "GET", "/nope")
    assert r.status == 404
    assert r.header("Content-Type") == "text/plain; charset=utf-8"
    assert r.header("Content-Length") == "10"
    assert r.body == b"not found\n"


def test_404_keeps_connection(server):
    s = connect(server.port)
    try:
        s.sendall(b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r1, rest = read_response(s)
        assert (r1.status, r1.body) == (404, b"not found\n")
        assert r1.header("Connection") is None
        s.sendall(GET_HEALTHZ)
        r2, rest = read_response(s, buf=rest)
        assert (r2.status, r2.body) == (200, b"ok\n")
    finally:
        s.close()


def test_options_healthz_204(server):
    s = connect(server.port)
    try:
        s.sendall(b"OPTIONS /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" + GET_HEALTHZ)
        r1, rest = read_response(s)
        assert r1.status == 204
        assert r1.header("Allow") == "GET, HEAD, OPTIONS"
        assert r1.header("Content-Length") is None
        r2, rest = read_response(s, buf=rest)
        assert r2.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (r2.body, rest) == (b"ok\n", b"")
    finally:
        s.close()


def test_options_asterisk(server):
    s = connect(server.port)
    try:
        s.sendall(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n" + GET_HEALTHZ)
        r1, rest = read_response(s)
        assert r1.status == 204
        assert r1.header("Content-Length") is None
        r2, rest = read_response(s, buf=rest)
        assert r2.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (r2.body, rest) == (b"ok\n", b"")
    finally:
        s.close()


def test_asterisk_target_only_for_options(server):
    bad_request(server.port, b"GET * HTTP/1.1\r\nHost: localhost\r\n\r\n", 400)


def test_identical_duplicate_content_length_accepted(server):
    resp, tail = exchange_closing(
        server.port,
        PUBLISH_HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    assert resp.status == 200, (resp.raw_head, resp.body)
    assert resp.json()["topic"] == "default"


def test_head_builtin_page(server):
    full = request(server.port, "GET", "/")
    s = connect(server.port)
    try:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n" + GET_HEALTHZ)
        r1, rest = read_response(s, head_only=True)
        assert r1.status == 200
        assert r1.header("Content-Type") == "text/html; charset=utf-8"
        assert r1.header("Content-Length") == str(len(full.body))
        r2, rest = read_response(s, buf=rest)
        assert r2.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (r2.body, rest) == (b"ok\n", b"")
    finally:
        s.close()
