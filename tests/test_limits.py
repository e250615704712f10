"""Limits and resources: --max-clients, slow subscribers and --client-buffer, connection
churn without fd leaks, graceful SIGTERM/SIGINT, memory per idle subscriber."""

import re
import signal
import socket
import struct
import threading
import time

from clients import wait_until
from conftest import (
    Stream,
    build_request,
    connect,
    exchange_closing,
    healthy,
    metric_values,
    parse_block,
    publish,
    read_response,
    recv_all,
    recv_until,
    request,
    settled_fd_count,
    wait_metric,
)

STREAM_HEAD = re.compile(
    rb"^HTTP/1\.1 200 OK\r\n"
    rb"Date: [^\r\n]+ GMT\r\n"
    rb"Content-Type: text/event-stream\r\n"
    rb"Cache-Control: no-cache, no-transform\r\n"
    rb"X-Accel-Buffering: no\r\n"
    rb"\r\n$"
)


# ---- helpers ----------------------------------------------------------------------------











def subscribe(port, path="/events", retry=3000):
    """A real subscription: exact head, retry block, then the initial id block."""
    st = Stream(port, path)
    assert st.status == 200
    assert STREAM_HEAD.match(st.raw_head), st.raw_head
    assert st.read_block() == b"retry: %d\n\n" % retry
    blk = st.read_block()
    assert re.match(rb"^id: \d+\nevent: position\ndata:\n\n$", blk), blk
    st.initial_id = int(blk.split(b"\n")[0][4:])
    return st


def read_all_reset_ok(sock, timeout=10):
    """Everything until EOF or reset."""
    return recv_all(sock, timeout)


def try_stream(port, timeout=3):
    """Opens a stream; returns (True, Stream) when it is a real subscription (retry + id
    block arrive and the connection stays open), (False, body) when it was the over-limit
    answer (retry block then EOF)."""
    st = Stream(port, "/events")
    assert st.status == 200
    assert STREAM_HEAD.match(st.raw_head), st.raw_head
    data = st.buf
    deadline = time.monotonic() + timeout
    while True:
        if re.match(rb"^retry: \d+\n\nid: \d+\nevent: position\ndata:\n\n$", data):
            return True, st
        left = deadline - time.monotonic()
        assert left > 0, data
        st.sock.settimeout(left)
        try:
            chunk = st.sock.recv(4096)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            st.close()
            return False, data
        data += chunk


# ---- --max-clients --------------------------------------------------------------------------


def test_max_clients(start_server):
    srv = start_server("--max-clients", "2")
    port = srv.port
    a = subscribe(port)
    b = subscribe(port)
    try:
        # a third stream request: the stream head, retry with jitter, then EOF
        c = Stream(port, "/events")
        assert c.status == 200
        assert STREAM_HEAD.match(c.raw_head), c.raw_head
        body = c.read_until_closed(timeout=5)
        c.close()
        m = re.match(rb"^retry: (\d+)\n\n$", body)
        assert m, body
        assert 3000 <= int(m.group(1)) <= 6000

        # a third ordinary request: 503 with Retry-After, then close
        resp, tail = exchange_closing(
            port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        assert resp.status == 503, (resp.raw_head, resp.body)
        assert resp.header("Retry-After") == "1"
        assert resp.header("Connection") == "close"
        assert resp.header("Content-Type") == "text/plain; charset=utf-8"
        assert resp.header("Content-Length") == str(len(resp.body))
        assert resp.body.endswith(b"\n") and resp.body.count(b"\n") == 1
        assert tail == b""

        # the two subscribers are untouched
        assert a.nothing_pending(0.1) and b.nothing_pending(0.1)

        # after one subscriber leaves, a new subscriber works
        fds = srv.fd_count()
        b.close()
        wait_until(lambda: srv.fd_count() < fds, what="the server to close b's connection")
        extra_rejected = 0
        for _ in range(20):
            ok, d = try_stream(port)
            if ok:
                break
            extra_rejected += 1
            time.sleep(0.2)
        assert ok, "no new subscription accepted after a subscriber left"
        fds = srv.fd_count()
        d.close()
        wait_until(lambda: srv.fd_count() < fds, what="the server to close d's connection")
        for _ in range(20):
            r = request(port, "GET", "/metrics")
            if r.status == 200:
                break
            assert r.status == 503
            extra_rejected += 1
            time.sleep(0.2)
        assert r.status == 200
        values = {}
        for line in r.body.decode().split("\n"):
            if line and not line.startswith("#"):
                k, v = line.split(" ")
                values[k] = float(v) if "." in v else int(v)
        assert values["sse_connections_rejected_total"] == 2 + extra_rejected
        assert values["sse_subscribers"] == 1
    finally:
        a.close()
        b.close()


# ---- slow subscriber ------------------------------------------------------------------------


class Reader(threading.Thread):
    """Drains a stream as fast as it can until the event with data END has arrived (or
    EOF, an error or the timeout); parse() then returns its events as (id, data)."""

    def __init__(self, stream, timeout=25):
        super().__init__(daemon=True)
        self.stream = stream
        self.timeout = timeout
        self.chunks = [stream.buf]
        self.received = 0  # bytes read from the socket (after stream.buf)
        self.error = None

    def run(self):
        sock = self.stream.sock
        deadline = time.monotonic() + self.timeout
        tail = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("reader timed out")
                sock.settimeout(left)
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise AssertionError("good subscriber disconnected")
                self.chunks.append(chunk)
                self.received += len(chunk)
                tail = (tail + chunk)[-16:]
                if tail.endswith(b"\ndata: END\n\n"):
                    return
        except Exception as e:  # reported by the test
            self.error = e

    def parse(self):
        data = b"".join(self.chunks)
        blocks = data.split(b"\n\n")
        assert blocks[-1] == b"", blocks[-1][:100]
        events = []
        for block in blocks[:-1]:
            ev = parse_block(block + b"\n\n")
            if ev["data"] is not None and ev["data"] != "END":
                events.append((ev["id"], ev["data"]))
        return events


class Publisher:
    """POST /publish over one keep-alive connection."""

    def __init__(self, port):
        self.sock = connect(port, 10)
        self.buf = b""

    def publish(self, data):
        body = data.encode()
        self.sock.sendall(
            b"POST /publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer secret\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        resp, self.buf = read_response(self.sock, 10, self.buf)
        assert resp.status == 200, (resp.raw_head, resp.body)
        assert resp.header("Connection") is None
        return resp.json()["id"]

    def close(self):
        self.sock.close()


def test_slow_subscriber_dropped_others_keep_up(start_server):
    srv = start_server("--client-buffer", "65536", "--publish-token", "secret")
    port = srv.port

    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(5)
    slow.connect(("127.0.0.1", port))
    slow.sendall(build_request("GET", "/events"))
    slow_head, slow_buf = recv_until(slow, b"\r\n\r\n")
    assert STREAM_HEAD.match(slow_head), slow_head

    good = subscribe(port)
    assert good.buf == b""
    wait_metric(port, "sse_subscribers", lambda v: v == 2)

    reader = Reader(good)
    reader.start()
    pub = Publisher(port)
    expected = []
    max_rss = 0
    sent_bytes = 0
    try:
        payload_pad = "x" * (1024 - 7)
        dropped = 0
        while len(expected) < 8000:
            for _ in range(1000 if expected else 2000):
                data = "%06d:%s" % (len(expected), payload_pad)
                eid = pub.publish(data)
                expected.append((eid, data))
                sent_bytes += len("id: %s\ndata: %s\n\n" % (eid, data))
                if len(expected) % 32 == 0:
                    # the good subscriber is never more than 32 events (~33 KB, under
                    # --client-buffer) behind: it keeps up, whatever the scheduler does
                    deadline = time.monotonic() + 10
                    while reader.received < sent_bytes:
                        assert reader.error is None, reader.error
                        assert time.monotonic() < deadline, "good subscriber stalled"
                        time.sleep(0.0005)
            max_rss = max(max_rss, srv.rss_bytes())
            dropped = metric_values(port)["sse_subscribers_dropped_total"]
            if dropped >= 1:
                break
        pub.publish("END")
    finally:
        pub.close()
    reader.join(30)
    assert not reader.is_alive(), "good subscriber reader still running"
    assert reader.error is None, reader.error
    events = reader.parse()
    assert len(events) == len(expected)
    assert events == expected  # every event, in order, exact

    m = wait_metric(port, "sse_subscribers_dropped_total", lambda v: v >= 1)
    assert m["sse_subscribers_dropped_total"] == 1
    m = wait_metric(port, "sse_subscribers", lambda v: v == 1)
    max_rss = max(max_rss, srv.rss_bytes())
    print("slow subscriber: %d events published, max server RSS %d bytes" % (len(expected), max_rss))
    assert max_rss < 64 * 1024 * 1024

    # the slow one: what reached it is an exact prefix of its stream, then EOF/reset
    try:
        data = slow_buf + read_all_reset_ok(slow, 15)
    finally:
        slow.close()
    m = re.match(rb"^retry: 3000\n\nid: \d+\nevent: position\ndata:\n\n", data)
    assert m, data[:200]
    rest = data[m.end():]
    stream = b"".join(b"id: %s\ndata: %s\n\n" % (i.encode(), d.encode()) for i, d in expected)
    assert len(rest) < len(stream), "slow subscriber got everything: it was not dropped"
    assert stream.startswith(rest), "slow subscriber stream corrupted"
    good.close()
    healthy(port)


# ---- connection churn --------------------------------------------------------------------


def test_connection_churn_no_fd_leak(start_server):
    srv = start_server()
    port = srv.port
    healthy(port)
    base = settled_fd_count(srv)
    linger0 = struct.pack("ii", 1, 0)
    for i in range(3000):
        kind = i % 4
        if kind == 0:  # open a stream, then close
            st = Stream(port, "/events")
            assert st.status == 200
            st.close()
        elif kind == 1:  # connect and close without sending anything
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.close()
        elif kind == 2:  # half a request, then close
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /events HTTP/1.1\r\nHo")
            s.close()
        else:  # open a stream and abort it with a reset
            st = Stream(port, "/events")
            assert st.status == 200
            st.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            st.close()
    deadline = time.monotonic() + 10
    while True:
        n = srv.fd_count()
        if n == base:
            break
        assert time.monotonic() < deadline, "fd count %d, started at %d" % (n, base)
        time.sleep(0.1)
    m = wait_metric(port, "sse_subscribers", lambda v: v == 0)
    assert m["sse_connections"] == 1  # the /metrics request itself
    assert m["sse_connections_total"] >= 3000
    assert srv.proc.poll() is None
    healthy(port)


# ---- signals ---------------------------------------------------------------------------------


def _drain_on_signal(start_server, sig, retry):
    args = ["--publish-token", "secret"]
    if retry != 3000:
        args += ["--retry", str(retry)]
    srv = start_server(*args)
    port = srv.port
    subs = [subscribe(port, retry=retry) for _ in range(2)]
    expected = b""
    for i in range(3):
        r = publish(port, "event %d\nline two" % i)
        assert r.status == 200
        assert r.json()["subscribers"] == 2
        expected += b"id: %s\ndata: event %d\ndata: line two\n\n" % (r.json()["id"].encode(), i)
    srv.signal(sig)
    rc = srv.wait(timeout=2)
    assert rc == 0
    for st in subs:
        data = st.read_until_closed(timeout=3)
        st.close()
        assert data.startswith(expected), data
        m = re.match(rb"^retry: (\d+)\n\n$", data[len(expected):])
        assert m, data[len(expected):]
        assert retry <= int(m.group(1)) <= 2 * retry
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        pass
    else:
        s.close()
        raise AssertionError("still accepting connections after exit")


def test_sigterm_drains_and_exits_0(start_server):
    _drain_on_signal(start_server, signal.SIGTERM, 3000)


def test_sigint_drains_and_exits_0(start_server):
    _drain_on_signal(start_server, signal.SIGINT, 1000)


def test_sigterm_idle_server_exits_0(start_server):
    srv = start_server()
    healthy(srv.port)
    srv.signal(signal.SIGTERM)
    assert srv.wait(timeout=2) == 0


# ---- memory per idle subscriber -----------------------------------------------------------


def test_memory_per_idle_subscriber(start_server):
    srv = start_server()
    port = srv.port
    healthy(port)
    metric_values(port)
    time.sleep(0.2)
    rss0 = srv.rss_bytes()
    n = 2000
    req = build_request("GET", "/events")
    socks = []
    try:
        t0 = time.monotonic()
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(req)
            socks.append(s)
            assert time.monotonic() - t0 < 20, "connecting took too long"
        wait_metric(port, "sse_subscribers", lambda v: v == n, timeout=15)
        time.sleep(0.2)
        rss1 = srv.rss_bytes()
        per = (rss1 - rss0) / n
        print(
            "RSS %d -> %d bytes with %d idle subscribers: %.0f bytes each"
            % (rss0, rss1, n, per)
        )
        assert per < 2048, per
        # they are real subscriptions: spot-check one
        s = socks[n // 2]
        head, rest = recv_until(s, b"\r\n\r\n")
        assert STREAM_HEAD.match(head)
        blk, rest = recv_until(s, b"\n\n", buf=rest)
        assert blk == b"retry: 3000\n\n"
    finally:
        for s in socks:
            s.close()
    wait_metric(port, "sse_subscribers", lambda v: v == 0, timeout=15)
