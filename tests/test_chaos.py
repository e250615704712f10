"""Chaos and abuse, all at once, bounded in time (SSE_CHAOS_SECONDS, default 60) and count:
well-behaved subscribers next to subscribers that never read, read slowly, half-close,
reset, or reconnect in a tight loop; slowloris header senders; garbage, oversized and
header-injecting requests, each checking the exact answer it gets; pipelined junk after a
valid request; and a steady publisher. Afterwards every well-behaved subscriber has every
event exactly once, in order; no descriptor leaked; memory stayed bounded; and /metrics
accounts for every connection: closed (by reason) + open == accepted, every slow-subscriber
close a counted drop, every bad-request close a refusal some client saw, header timeouts
what the slowloris and never-ending heads add up to, and no error, send timeout, overload
or rejection at all.

That CR, LF and NUL cannot reach a response head or a stream, and errors carry no internal
details, is shown byte for byte in test_injection.py."""

import collections
import itertools
import os
import random
import re
import socket
import struct
import threading
import time

from conftest import (
    BINARY,
    Stream,
    build_request,
    closed_by_reason,
    connect,
    metric_values,
    read_response,
    recv_until,
    request,
    settled_fd_count,
)

SECONDS = float(os.environ.get("SSE_CHAOS_SECONDS", "60"))
EVENT_DATA = 8000  # bytes per event: enough to overrun a stalled reader's buffers in seconds


# Attempts per client at most, spread evenly over the run so that the tight loops (resets,
# reconnects, pipelined junk) last as long as the rest: bounded in count as well as time.
ATTEMPTS_MAX = 100000


class Subscriber(threading.Thread):
    """A well-behaved subscriber: reads everything, records (id, seq) of every event."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.sock = connect(port, timeout=30)
        self.sock.sendall(build_request("GET", "/events/chaos"))
        _, self.buf = recv_until(self.sock, b"\r\n\r\n", 10)
        self.events, self.error, self.running = [], None, True

    def run(self):
        try:
            while self.running:
                try:
                    chunk = self.sock.recv(1 << 20)
                except socket.timeout:
                    continue
                if not chunk:
                    self.error = "closed by the server"
                    return
                self.buf += chunk
                *blocks, self.buf = self.buf.split(b"\n\n")
                for block in blocks:  # a heartbeat (":" line) may open a block
                    m = re.match(rb"(?::[^\n]*\n)*id: (\d+)\ndata: seq-(\d+):", block)
                    if m:
                        self.events.append((m.group(1).decode(), int(m.group(2))))
        except OSError as e:
            self.error = repr(e)

    def stop(self):
        self.running = False
        self.join(timeout=10)
        self.sock.close()


class Chaos:
    """Runs abusive clients in threads until the deadline; every loop is bounded. Each
    client attempt reports what the server must have closed its connection for, as it
    observed it (outcome), and a wrong answer is a failure tagged with the client and the
    payload's kind."""

    def __init__(self, port, deadline):
        self.port, self.deadline = port, deadline
        self.threads, self.stalled, self.lock = [], [], threading.Lock()
        self.counts = {}
        self.outcomes = collections.Counter()  # close reason -> connections seen to get it
        self.failures = []  # "client: what was wrong"
        self.os_errors = collections.Counter()  # client -> attempts cut short by a socket error
        self.kinds = itertools.cycle(sorted(GARBAGE))  # every kind in turn, across threads
        self.answered = collections.Counter()  # garbage kind -> attempts answered right

    def outcome(self, reason, kind=None):
        """A connection the client saw answered as it must be, to be closed for reason
        (None: closed by the client); kind: the garbage it sent."""
        with self.lock:
            if reason:
                self.outcomes[reason] += 1
            if kind:
                self.answered[kind] += 1

    def spawn(self, name, fn, *args):
        def loop():
            rng = random.Random(name)
            n = 0
            start = time.monotonic()
            span = max(self.deadline - start, 1.0)
            while time.monotonic() < self.deadline and n < ATTEMPTS_MAX:
                ahead = n - ATTEMPTS_MAX * (time.monotonic() - start) / span
                if ahead > 0:  # spread the attempts over the whole run, not its first half
                    time.sleep(ahead * span / ATTEMPTS_MAX)
                try:
                    fn(self, rng, *args)
                except AssertionError as e:
                    with self.lock:
                        self.failures.append("%s: %s" % (name, e))
                except OSError:
                    with self.lock:
                        self.os_errors[name] += 1
                n += 1
            with self.lock:
                self.counts[name] = n

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        self.threads.append(t)

    def stalled_subscriber(self, read_bytes_per_second):
        """A subscriber that never reads (0) or reads slowly; kept for the drop count."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", self.port))
        s.sendall(build_request("GET", "/events/chaos"))
        with self.lock:
            self.stalled.append(s)
        if read_bytes_per_second:
            s.settimeout(0.1)

            def slow():
                while time.monotonic() < self.deadline:
                    try:
                        if not s.recv(read_bytes_per_second // 10):
                            return
                    except socket.timeout:
                        pass
                    except OSError:
                        return
                    time.sleep(0.1)

            t = threading.Thread(target=slow, daemon=True)
            t.start()
            self.threads.append(t)

    def join(self):
        for t in self.threads:
            t.join(timeout=max(1, self.deadline - time.monotonic() + 30))
        assert not any(t.is_alive() for t in self.threads), "a chaos client did not finish"


# ---- the abusive clients (one attempt each; Chaos.spawn loops them) ------------------------


def half_close(chaos, rng, port):
    s = connect(port)
    s.sendall(build_request("GET", "/events/chaos"))
    s.shutdown(socket.SHUT_WR)
    s.settimeout(1)
    s.recv(65536)
    time.sleep(rng.uniform(0, 0.3))
    s.close()


def reset_midstream(chaos, rng, port):
    s = connect(port)
    s.sendall(build_request("GET", "/events/chaos"))
    s.recv(rng.randint(1, 4096))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST, not FIN


def reconnect_tightly(chaos, rng, port):
    st = Stream(port, "/events/chaos", headers={"Last-Event-ID": str(rng.randint(0, 10 ** 16))})
    assert st.status == 200
    st.close()


def slowloris(chaos, rng, port):
    """Sends a request head a byte at a time and never finishes it: the header deadline (2 s
    here) cuts it off, without an answer, long before the head could be complete."""
    s = connect(port, timeout=10)
    try:
        for b in b"GET /events/chaos HTTP/1.1\r\nHost: x\r\nX-Slow: 1":
            s.send(bytes([b]))
            time.sleep(0.3)
    except OSError:
        pass  # cut off while sending
    data, end = recv_to_close(s, 10)
    s.close()
    assert (data, end) in ((b"", "eof"), (b"", "reset")), (data[:100], end)
    chaos.outcome("header_timeout")


def refused(status, message):
    """The answer to a request whose framing can't be trusted: exactly this status line and
    body, Connection: close, then the server closes (sse_connections_closed_total counts a
    bad_request)."""
    return ("refused", status, message)


# kind -> (payload(rng), what the server must answer). A refused payload gets exactly that
# answer and a close; "kept" is a well-framed request with a bad value: answered 400, the
# connection kept (the client closes it); "silent" never completes a head: no answer, closed
# at the header deadline; "random" bytes are refused with 400, 431 or 505, or never complete.
GARBAGE = {
    "random bytes": (
        lambda rng: bytes(rng.randrange(256) for _ in range(rng.randint(1, 3000))),
        ("random",),
    ),
    "20 KB header": (
        lambda rng: b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        refused(431, b"request head over 8 KiB"),
    ),
    "10 KB path": (
        lambda rng: b"GET /" + b"p" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        refused(431, b"request head over 8 KiB"),
    ),
    "200 header fields": (
        lambda rng: b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(200))
        + b"\r\n",
        refused(431, b"too many header fields"),
    ),
    "CRLF in a topic": (
        lambda rng: b"GET /events/a%0d%0aSet-Cookie:x HTTP/1.1\r\nHost: x\r\n\r\n",
        ("kept", 400, b"invalid topic name: use 1 to 64 of A-Z a-z 0-9 . _ -"),
    ),
    "10 GB publish": (
        lambda rng: b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret"
        b"\r\nContent-Length: 9999999999\r\n\r\n",
        refused(413, b"event over --max-event-bytes"),
    ),
    "10 GB publish without a token": (
        lambda rng: b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999"
        b"\r\n\r\n",
        ("closed", 401, b"publishing needs Authorization: Bearer <token>"),
    ),
    "Content-Length with Transfer-Encoding": (
        lambda rng: b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n",
        refused(400, b"Content-Length together with Transfer-Encoding"),
    ),
    "HTTP/3.0": (
        lambda rng: b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
        refused(505, b"only HTTP/1.0 and HTTP/1.1 are served"),
    ),
    "blank lines only": (lambda rng: b"\r\n\r\n\r\n", ("silent",)),
    "NUL in a field name": (
        lambda rng: b"GET / HTTP/1.1\r\nHost: x\r\nBad\x00Header: v\r\n\r\n",
        refused(400, b"malformed request"),
    ),
}
INTERNALS = re.compile(rb"sse\.c|errno|0x[0-9a-f]{6,}|/work/|/tmp/|/home/|/usr/")


def answer(data, kind):
    """Splits one response off data: (status, head, body, rest); checks the error contract
    (text/plain, exact Content-Length, nothing internal)."""
    assert data.startswith(b"HTTP/1.1 ") and b"\r\n\r\n" in data, (kind, data[:200])
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"\r\nContent-Length: (\d+)\r\n", head + b"\r\n")
    assert m and len(rest) >= int(m.group(1)), (kind, data[:300])
    body, rest = rest[: int(m.group(1))], rest[int(m.group(1)) :]
    assert b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in head + b"\r\n", (kind, head)
    assert not INTERNALS.search(data), (kind, data)
    return status, head + b"\r\n\r\n", body, rest


def garbage(chaos, rng, port):
    """Sends the next kind of garbage and checks the answer; reports the close it means."""
    with chaos.lock:
        kind = next(chaos.kinds)
    payload, expect = GARBAGE[kind]
    try:
        s = connect(port, timeout=10)
        try:
            s.sendall(payload(rng))
            if expect[0] == "kept":
                r, _ = read_response(s, timeout=10)
                assert (r.status, r.body) == (expect[1], expect[2] + b"\n"), (kind, r.raw_head)
                assert r.header("Connection") is None, (kind, r.raw_head)
                assert b"Set-Cookie" not in r.raw_head, (kind, r.raw_head)
                chaos.outcome(None, kind)  # the server keeps it; we close it (client_closed)
                return
            data, end = recv_to_close(s, 10)
        finally:
            s.close()
    except OSError as e:
        raise AssertionError("%s: %r" % (kind, e))
    assert end != "timeout", (kind, "still open after 10 s", data[:200])
    if expect[0] == "silent" or (expect[0] == "random" and data == b""):
        assert data == b"", (kind, data[:200])
        chaos.outcome("header_timeout", kind)
        return
    status, head, body, rest = answer(data, kind)
    assert rest == b"" and b"\r\nConnection: close\r\n" in head, (kind, data[:300])
    if expect[0] == "random":
        assert status in (400, 431, 505), (kind, data[:300])
        chaos.outcome("bad_request", kind)
        return
    assert head.startswith(b"HTTP/1.1 %d " % expect[1]) and body == expect[2] + b"\n", (
        kind, data[:300])
    chaos.outcome("bad_request" if expect[0] == "refused" else "done", kind)


def pipelined_junk(chaos, rng, port):
    """A valid request with junk after it in the same write: the request is answered, the
    junk refused with a 400, and the connection closed."""
    try:
        s = connect(port, timeout=10)
        try:
            s.sendall(build_request("GET", "/healthz") + b"JUNK\x00 \x01\r\n\r\n" + b"more junk")
            data, end = recv_to_close(s, 10)
        finally:
            s.close()
    except OSError as e:
        raise AssertionError("pipelined junk: %r" % e)
    assert end != "timeout", ("pipelined junk", data[:300])
    status, head, body, rest = answer(data, "pipelined junk")
    assert (status, body) == (200, b"ok\n"), data
    status, head, body, rest = answer(rest, "pipelined junk")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert (body, rest) == (b"malformed request\n", b""), data
    assert b"\r\nConnection: close\r\n" in head, data
    chaos.outcome("bad_request")


def recv_to_close(s, timeout):
    """Reads until the peer closes. Returns (data, how): how is "eof", "reset" or "timeout"
    (still open after timeout seconds)."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except OSError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def sanitized():
    with open(BINARY, "rb") as f:
        return b"__asan_init" in f.read()


def test_chaos(start_server):
    srv = start_server("--publish-token", "secret", "--client-buffer", "64k",
                       "--header-timeout", "2", "--heartbeat", "1", "--max-clients", "2000")
    port = srv.port
    base_fds = settled_fd_count(srv)
    base_rss = srv.rss_bytes()
    good = [Subscriber(port) for _ in range(20)]
    for s in good:
        s.start()
    deadline = time.monotonic() + SECONDS
    chaos = Chaos(port, deadline)
    for i in range(6):
        chaos.stalled_subscriber(0)  # never reads
    for i in range(4):
        chaos.stalled_subscriber(20000)  # reads 20 KB/s of a ~400 KB/s stream
    for i, fn in enumerate([half_close, reset_midstream, reconnect_tightly, reconnect_tightly,
                            slowloris, slowloris, slowloris, garbage, garbage,
                            pipelined_junk]):
        chaos.spawn("%s-%d" % (fn.__name__, i), fn, port)
    published, healthz_failures = [], 0
    publisher = connect(port, timeout=10)
    buf = b""
    seq = 0
    while time.monotonic() < deadline:
        body = b"seq-%d:" % seq + b"x" * EVENT_DATA
        publisher.sendall(build_request("POST", "/publish?topic=chaos",
                                        {"Authorization": "Bearer secret"}, body))
        r, buf = read_response(publisher, timeout=10, buf=buf)
        assert r.status == 200, r
        published.append((r.json()["id"], seq))
        seq += 1
        if seq % 25 == 0 and request(port, "GET", "/healthz").status != 200:
            healthz_failures += 1
        time.sleep(0.02)
    publisher.close()
    chaos.join()
    assert chaos.failures == [], "\n".join(chaos.failures[:20])
    assert healthz_failures == 0
    assert srv.proc.poll() is None

    # Every well-behaved subscriber got every event once, in order.
    last = published[-1][0]
    wait_until = time.monotonic() + 30
    while time.monotonic() < wait_until and any(
        (not s.events or s.events[-1][0] != last) and s.error is None for s in good
    ):
        time.sleep(0.1)
    for s in good:
        s.stop()
        assert s.error is None, s.error
        assert s.events == published

    # Every stalled subscriber the server gave up on was counted as dropped; those that never
    # read were all dropped.
    dropped = 0
    end = time.monotonic() + 10
    for i, s in enumerate(chaos.stalled):
        s.setblocking(False)
        closed = False
        while time.monotonic() < end:
            try:
                if not s.recv(1 << 20):
                    closed = True
                    break
            except BlockingIOError:
                time.sleep(0.02)
            except ConnectionResetError:
                closed = True
                break
        dropped += closed
        if i < 6:
            assert closed, "a subscriber that never reads was not dropped"
        s.close()
    assert all(n > 0 for n in chaos.counts.values()), chaos.counts
    assert set(chaos.answered) == set(GARBAGE), chaos.answered  # every kind, answered right

    # /metrics accounts for every connection, once all but the scrape's own have closed.
    end = time.monotonic() + 15
    while True:
        m = metric_values(port)
        if m["sse_connections"] == 1 or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert m["sse_connections"] == 1  # this /metrics request
    closed = closed_by_reason(m)  # and sum(closed) + sse_connections == sse_connections_total
    report = (closed, dict(chaos.outcomes), dict(chaos.os_errors), chaos.counts)
    print("chaos: %.0f s, %d events; attempts %s; garbage answered %s; closes %s; seen by the "
          "clients %s; socket errors %s" % (SECONDS, len(published), chaos.counts,
                                            dict(chaos.answered),
                                            {r: n for r, n in closed.items() if n},
                                            dict(chaos.outcomes), dict(chaos.os_errors)))
    assert closed["slow_subscriber"] == m["sse_subscribers_dropped_total"] == dropped, report
    for reason in ("error", "send_timeout", "overload", "upstream_failed", "retired",
                   "reconnect", "shutdown"):
        assert closed[reason] == 0, (reason, report)
    assert m["sse_connections_rejected_total"] == 0, report
    # Each refusal was seen by its client, answer and close; nothing else sends a bad request.
    refusals = chaos.outcomes["bad_request"]
    assert refusals > 0 and closed["bad_request"] == refusals, report
    assert m["sse_bad_requests_total"] == refusals, report
    # Every slowloris attempt, head that never ends and silent random garbage timed out; an
    # attempt whose connect() failed might have been accepted and timed out unseen.
    timeouts = chaos.outcomes["header_timeout"]
    unseen = sum(n for name, n in chaos.os_errors.items() if name.startswith("slowloris"))
    assert timeouts > 0 and timeouts <= closed["header_timeout"] <= timeouts + unseen, report
    assert closed["done"] >= chaos.outcomes["done"], report

    # Nothing leaked and memory stayed bounded.
    assert settled_fd_count(srv, quiet=1, timeout=15) == base_fds
    if not sanitized():  # AddressSanitizer keeps freed memory in quarantine (256 MB)
        assert srv.rss_bytes() - base_rss < 64 << 20
