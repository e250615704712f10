"""The relay (--relay TOPIC=URL): sse-server follows an upstream event stream the way an
EventSource does and republishes every event on a local topic with a local id.

Upstreams: sse-server itself (an origin with --publish-token) where it fits, and a small
restartable Python upstream (below) where the test needs control over the bytes, the
status, the connection and the port."""

import re
import socket
import subprocess
import threading
import time

import pytest

from conftest import BINARY, Stream, free_port, healthy, metric_values, publish

pytestmark = [pytest.mark.valgrind, pytest.mark.relay]

# ---- a controllable upstream ---------------------------------------------------------------


class Upstream:
    """A text/event-stream server on 127.0.0.1 that can be stopped and restarted on the same
    port. Its event log (ids "1", "2", ...) survives restarts, it honours Last-Event-ID
    (events after that id are replayed), opens every stream with `retry: 200`, and records
    every request (request line, headers in order, the last event id written on that
    connection).

    mode: "stream" (default), "404" (a 404 whose body looks like an event), "html" (200
    text/html whose body looks like an event). bodies: raw byte strings (or lists of byte
    strings sent as separate writes); in stream mode each connection takes the next one, if
    any, instead of the log (after gate is set), and is closed after it when
    close_after_body is true."""

    HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"

    def __init__(self, port=0, retry=200):
        self.cond = threading.Condition()
        self.events = []  # (id, event, data)
        self.requests = []  # dicts: line, headers, last_sent
        self.mode = "stream"
        self.bodies = []
        self.close_after_body = True
        self.piece_delay = 0.0
        self.gate = threading.Event()  # raw bodies wait for it (set: no waiting)
        self.gate.set()
        self.retry = retry
        self.port = port
        self.listener = None
        self.conns = set()
        self.threads = []
        self.start()

    # -- control --

    def start(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        ls.settimeout(0.05)
        self.port = ls.getsockname()[1]
        with self.cond:
            self.listener = ls
        t = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True)
        t.start()
        self.threads.append(t)

    def drop(self):
        """Closes every open connection (the listener stays)."""
        with self.cond:
            conns = list(self.conns)
            self.conns.clear()
            for s in conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.cond.notify_all()

    def stop(self):
        """Closes the listener and every connection; the event log is kept."""
        with self.cond:
            ls, self.listener = self.listener, None
            if ls is not None:
                ls.close()
        self.drop()
        for t in self.threads:
            t.join(timeout=5)
        self.threads = [t for t in self.threads if t.is_alive()]

    def append(self, data, event=None):
        with self.cond:
            self.events.append((str(len(self.events) + 1), event, data))
            self.cond.notify_all()

    def request_count(self):
        with self.cond:
            return len(self.requests)

    def wait_requests(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                assert left > 0, "upstream got %d requests, expected %d" % (len(self.requests), n)
                self.cond.wait(min(left, 0.1))
            return [dict(r) for r in self.requests]

    # -- serving --

    def _accept_loop(self, ls):
        while True:
            with self.cond:
                if self.listener is not ls:
                    return
            try:
                s, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, s):
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    s.close()
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            headers = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.append((k, v.strip()))
            with self.cond:
                if self.listener is None:
                    s.close()
                    return
                rec = {"line": lines[0], "headers": headers, "last_sent": None}
                self.requests.append(rec)
                self.conns.add(s)
                self.cond.notify_all()
                mode = self.mode
                body = self.bodies.pop(0) if (mode == "stream" and self.bodies) else None
            if mode == "404":
                s.sendall(
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/event-stream\r\n"
                    b"Content-Length: 12\r\nConnection: close\r\n\r\ndata: leak\n\n"
                )
                self._close(s)
            elif mode == "html":
                s.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n"
                    b"retry: 10\n\nid: leak\ndata: leak\n\n"
                )
                self._close(s)
            elif body is not None:
                s.sendall(self.HEAD)
                self.gate.wait(10)
                pieces = body if isinstance(body, list) else [body]
                for piece in pieces:
                    s.sendall(piece)
                    if self.piece_delay:
                        time.sleep(self.piece_delay)
                if self.close_after_body:
                    self._close(s)
                else:
                    self._hold(s)
            else:
                self._stream(s, rec, dict((k.lower(), v) for k, v in headers))
        except OSError:
            self._close(s)

    def _close(self, s):
        with self.cond:
            if s in self.conns:
                self.conns.discard(s)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _hold(self, s):
        with self.cond:
            while s in self.conns:
                self.cond.wait(0.1)

    def _stream(self, s, rec, headers):
        last = headers.get("last-event-id", "")
        with self.cond:
            cursor = int(last) if last.isdigit() and int(last) <= len(self.events) else 0
            if s not in self.conns:
                return
            s.sendall(self.HEAD + b"retry: %d\n\n" % self.retry)
            while True:
                # Writes happen under the lock, so stop()/drop() never cut an event in two
                # and last_sent is exactly what the peer was given.
                while s in self.conns and cursor >= len(self.events):
                    self.cond.wait(0.1)
                if s not in self.conns:
                    return
                for eid, event, data in self.events[cursor:]:
                    out = "id: %s\n" % eid
                    if event:
                        out += "event: %s\n" % event
                    out += "".join("data: %s\n" % line for line in data.split("\n")) + "\n"
                    s.sendall(out.encode("utf-8"))
                    rec["last_sent"] = eid
                cursor = len(self.events)


@pytest.fixture
def upstreams():
    made = []

    def make(**kw):
        u = Upstream(**kw)
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()


# ---- helpers -------------------------------------------------------------------------------


def wait_until(fn, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def lines_matching(srv, pattern, start=0):
    with srv._cond:
        lines = list(srv.lines[start:])
    return [m for m in (re.search(pattern, line) for line in lines) if m]


def reconnect_delays(srv, topic, start=0):
    pattern = r"relay %s: reconnecting to \S+ in (\d+) ms" % topic
    return [int(m.group(1)) for m in lines_matching(srv, pattern, start)]


def start_relay(start_server, url, *extra, topic="feed"):
    srv = start_server("--relay", "%s=%s" % (topic, url), *extra)
    return srv


def read_events(stream, n, timeout=10):
    deadline = time.monotonic() + timeout
    out = []
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, "got only %d of %d events: %r" % (len(out), n, out)
        out.append(stream.read_event(timeout=left))
    return out


def assert_increasing_ids(events):
    ids = [int(e["id"]) for e in events]
    assert all(a < b for a, b in zip(ids, ids[1:])), ids
    return ids


# ---- sse-server as the upstream --------------------------------------------------------------


def origin_and_relay(start_server, *relay_args):
    origin = start_server("--publish-token", "secret")
    relay = start_server(
        "--relay", "feed=http://127.0.0.1:%d/events/news" % origin.port, *relay_args
    )
    relay.wait_for_line(r"relay feed: following http://127\.0\.0\.1:%d/events/news$" % origin.port)
    wait_until(lambda: metric_values(origin.port)["sse_subscribers"] == 1, 5, "origin subscriber")
    return origin, relay


PUBLISHED = [
    ("hello", None),
    ("multi\nline\r\nthree", "update"),
    ('{"json": [1, 2]}', "data"),
    ("  two leading spaces", None),
    ("h\u00e9llo \u2713 \U0001f600", "unicode"),
]


def test_relay_fans_out_origin_events_over_one_upstream_connection(start_server):
    origin, relay = origin_and_relay(start_server)
    direct = Stream(origin.port, "/events/news")
    subs = [Stream(relay.port, "/events/feed") for _ in range(50)]
    try:
        wait_until(lambda: metric_values(relay.port)["sse_subscribers"] == 50, 5, "subscribers")
        m = metric_values(origin.port)
        # the relay plus the direct subscriber: the 50 local subscribers cost the origin one
        assert m["sse_subscribers"] == 2, m
        m = metric_values(relay.port)
        assert m["sse_relays_connected"] == 1, m
        origin_ids = []
        for data, event in PUBLISHED:
            r = publish(origin.port, data, topic="news", event=event)
            assert r.status == 200, (r.raw_head, r.body)
            origin_ids.append(r.json()["id"])
        expected = [(e["event"], e["data"]) for e in read_events(direct, len(PUBLISHED))]
        assert [e for e in expected] == [
            (ev, d.replace("\r\n", "\n")) for d, ev in PUBLISHED
        ], expected
        first_ids = None
        for sub in subs:
            # the local stream opened with the relay server's own current id
            opening_id = sub.last_id
            got = read_events(sub, len(PUBLISHED))
            assert [(e["event"], e["data"]) for e in got] == expected
            ids = assert_increasing_ids(got)
            if opening_id is not None:
                assert int(opening_id) < ids[0]
            for local, up in zip(ids, origin_ids):
                assert str(local) != up, (ids, origin_ids)
            if first_ids is None:
                first_ids = ids
            assert ids == first_ids  # one publish per upstream event, shared by everyone
        m = metric_values(relay.port)
        assert m["sse_relay_events_total"] == len(PUBLISHED), m
        assert m["sse_events_published_total"] == len(PUBLISHED), m
        assert metric_values(origin.port)["sse_subscribers"] == 2
        healthy(relay.port)
    finally:
        direct.close()
        for sub in subs:
            sub.close()


def test_relay_origin_subscriber_count_is_one_with_50_local(start_server):
    origin, relay = origin_and_relay(start_server)
    subs = [Stream(relay.port, "/events/feed") for _ in range(50)]
    try:
        wait_until(lambda: metric_values(relay.port)["sse_subscribers"] == 50, 5, "subscribers")
        assert metric_values(origin.port)["sse_subscribers"] == 1
        r = publish(origin.port, "to all", topic="news")
        assert r.status == 200
        for sub in subs:
            assert sub.read_event()["data"] == "to all"
        assert metric_values(origin.port)["sse_subscribers"] == 1
    finally:
        for sub in subs:
            sub.close()


def test_relayed_events_replay_locally_with_last_event_id(start_server):
    origin, relay = origin_and_relay(start_server)
    first = Stream(relay.port, "/events/feed")
    try:
        for i in range(5):
            assert publish(origin.port, "e%d" % i, topic="news", event="tick").status == 200
        got = read_events(first, 5)
        ids = assert_increasing_ids(got)
        assert [e["data"] for e in got] == ["e%d" % i for i in range(5)]
        # a reconnecting local subscriber gets what it missed, from the relay server's backlog
        again = Stream(relay.port, "/events/feed", headers={"Last-Event-ID": str(ids[1])})
        try:
            replayed = read_events(again, 3)
            assert [(e["id"], e["event"], e["data"]) for e in replayed] == [
                (str(ids[i]), "tick", "e%d" % i) for i in (2, 3, 4)
            ]
            assert publish(origin.port, "live", topic="news").status == 200
            live = again.read_event()
            assert live["data"] == "live" and int(live["id"]) > ids[4]
            assert first.read_event()["id"] == live["id"]
        finally:
            again.close()
        m = metric_values(relay.port)
        assert m["sse_replays_total"] >= 1, m
    finally:
        first.close()


def test_two_relays_feed_two_topics(start_server):
    origin = start_server("--publish-token", "secret")
    relay = start_server(
        "--relay", "a=http://127.0.0.1:%d/events/one" % origin.port,
        "--relay", "b=http://127.0.0.1:%d/events?topic=two" % origin.port,
    )
    relay.wait_for_line(r"relay a: following")
    relay.wait_for_line(
        r"relay b: following http://127\.0\.0\.1:%d/events\?topic=two$" % origin.port
    )
    wait_until(lambda: metric_values(origin.port)["sse_subscribers"] == 2, 5, "two relays")
    assert metric_values(relay.port)["sse_relays_connected"] == 2
    both = Stream(relay.port, "/events?topic=a&topic=b")
    try:
        assert publish(origin.port, "for a", topic="one").status == 200
        assert both.read_event()["data"] == "for a"
        assert publish(origin.port, "for b", topic="two").status == 200
        assert both.read_event()["data"] == "for b"
    finally:
        both.close()


# ---- the request ------------------------------------------------------------------------------


def test_relay_request_is_exactly_an_eventsource_request(start_server, upstreams):
    up = upstreams()
    # first connection: one event with an id, then the upstream closes the stream
    up.bodies.append(b"retry: 200\n\nid: up 7/x\ndata: one\n\n")
    up.gate.clear()
    relay = start_relay(start_server, "http://127.0.0.1:%d/stream/x?a=1&b=two" % up.port)
    sub = Stream(relay.port, "/events/feed")
    up.gate.set()
    try:
        reqs = up.wait_requests(2, timeout=10)
        host = "127.0.0.1:%d" % up.port
        assert reqs[0]["line"] == "GET /stream/x?a=1&b=two HTTP/1.1"
        assert reqs[0]["headers"] == [
            ("Host", host),
            ("Accept", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Connection", "close"),
        ]
        assert reqs[1]["line"] == "GET /stream/x?a=1&b=two HTTP/1.1"
        assert reqs[1]["headers"] == [
            ("Host", host),
            ("Accept", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Last-Event-ID", "up 7/x"),
            ("Connection", "close"),
        ]
        ev = sub.read_event()
        assert ev["data"] == "one" and ev["id"] != "up 7/x"
        url = r"http://127\.0\.0\.1:%d" % up.port
        relay.wait_for_line(r"relay feed: following %s/stream/x\?a=1&b=two$" % url)
        relay.wait_for_line(r"relay feed: reconnecting to %s in 250 ms$" % url)  # the floor
    finally:
        sub.close()


def test_relay_url_without_path_requests_slash(start_server, upstreams):
    up = upstreams()
    start_relay(start_server, "http://127.0.0.1:%d" % up.port)
    reqs = up.wait_requests(1)
    assert reqs[0]["line"] == "GET / HTTP/1.1"
    assert reqs[0]["headers"][0] == ("Host", "127.0.0.1:%d" % up.port)


# ---- WHATWG parsing ----------------------------------------------------------------------------

WHATWG_BODY = (
    b"\xef\xbb\xbfdata: bom\n\n"
    b"event: kind1\r\ndata: crlf\r\n\r\n"
    b"data: cr\r\r"
    b"data: line1\ndata\ndata: line2\ndata:\ndata:  two spaces\n\n"
    b"id: 41\ndata: id41\n\n"
    b"id: 7\x00x\ndata: nul id\n\n"
    b"retry: 250\n"
    b"retry: 12x\nretry: -1\nretry: 1e3\nretry:  300\nretry: 300 \nretry: +300\n"
    b"data: retries\n\n"
    b"topic: other\nfoo: bar\nunknown\n:comment\ndata: unknown fields\n\n"
    b"event:\ndata: default type\n\n"
    b"event: nodata\n\n"
    b":just a comment\n\n"
    b"data: after nodata\n\n"
    b"\xef\xbb\xbfdata: second bom\n\n"
    b"data: bad \xff utf \x80 end\n\n"
    b"event: kind2\ndata: blank line in the next write\n"
    b"\n"
    b"event: last\ndata: end\n\n"
    b"data: no blank line after me"
)

WHATWG_EXPECTED = [
    (None, "bom"),
    ("kind1", "crlf"),
    (None, "cr"),
    (None, "line1\n\nline2\n\n two spaces"),
    (None, "id41"),
    (None, "nul id"),
    (None, "retries"),
    (None, "unknown fields"),
    (None, "default type"),
    (None, "after nodata"),
    (None, "bad \ufffd utf \ufffd end"),
    ("kind2", "blank line in the next write"),
    ("last", "end"),
]


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_relay_parses_the_stream_like_eventsource(start_server, upstreams, split):
    up = upstreams()
    if split == "whole":
        up.bodies.append(WHATWG_BODY)
    else:
        up.bodies.append([WHATWG_BODY[i : i + 1] for i in range(len(WHATWG_BODY))])
        up.piece_delay = 0.001
    up.gate.clear()
    relay = start_relay(start_server, "http://127.0.0.1:%d/s" % up.port)
    sub = Stream(relay.port, "/events/feed")
    up.gate.set()
    try:
        got = read_events(sub, len(WHATWG_EXPECTED), timeout=15)
        assert [(e["event"], e["data"]) for e in got] == WHATWG_EXPECTED
        ids = assert_increasing_ids(got)
        assert all(i != 41 for i in ids)  # local ids, not the upstream's
        # the upstream closed after the body: the unterminated last block is dropped, the
        # retry: that consisted of digits only (250) is the reconnection time, and the id
        # with a NUL was ignored, so the last event id is still 41
        reqs = up.wait_requests(2, timeout=10)
        assert dict(reqs[1]["headers"]).get("Last-Event-ID") == "41", reqs[1]
        relay.wait_for_line(r"relay feed: reconnecting to \S+ in 250 ms$")
        assert reconnect_delays(relay, "feed")[0] == 250
        m = metric_values(relay.port)
        assert m["sse_relay_events_total"] == len(WHATWG_EXPECTED), m
        assert sub.nothing_pending(0.3), sub.buf
    finally:
        sub.close()


UTF8_CASES = [
    b"truncated 3-byte \xe2\x82 x",
    b"truncated 4-byte \xf0\x9f\x98 x",
    b"overlong \xc0\xaf x",
    b"surrogate \xed\xa0\x80 x",
    b"above U+10FFFF \xf4\x90\x80\x80 x",
    b"lone lead at end \xe2",
    b"valid \xe2\x82\xac \xf0\x9f\x98\x80 ok",
]


def test_relay_replaces_invalid_utf8_like_the_whatwg_decoder(start_server, upstreams):
    """EventSource decodes the stream with the WHATWG UTF-8 decoder, which emits one U+FFFD
    per maximal invalid subpart (the same rule as Python's errors='replace'); a relayed event
    must carry the data a browser connected to the upstream would see."""
    up = upstreams()
    up.bodies.append(b"".join(b"data: " + c + b"\n\n" for c in UTF8_CASES))
    up.close_after_body = False
    up.gate.clear()
    relay = start_relay(start_server, "http://127.0.0.1:%d/s" % up.port)
    sub = Stream(relay.port, "/events/feed")
    up.gate.set()
    try:
        got = [e["data"] for e in read_events(sub, len(UTF8_CASES))]
        expected = [c.decode("utf-8", "replace") for c in UTF8_CASES]
        mismatches = [(c, g, x) for c, g, x in zip(UTF8_CASES, got, expected) if g != x]
        assert not mismatches, "\n".join(
            "%r: relayed %r, WHATWG decoder gives %r" % m for m in mismatches
        )
    finally:
        sub.close()


# ---- reconnection ------------------------------------------------------------------------------


def test_relay_resumes_after_upstream_restart_without_gap_or_duplicate(start_server, upstreams):
    up = upstreams()
    relay = start_relay(start_server, "http://127.0.0.1:%d/stream" % up.port)
    relay.wait_for_line(r"relay feed: following")
    sub = Stream(relay.port, "/events/feed")
    try:
        total = 60
        for i in range(total):
            if i == 20:
                up.stop()  # listener and connections closed while events keep coming
            if i == 35:
                up.start()  # same port, same log
            up.append("e%d" % i, event="seq" if i % 3 == 0 else None)
            time.sleep(0.02)
        got = read_events(sub, total, timeout=15)
        assert [(e["event"], e["data"]) for e in got] == [
            ("seq" if i % 3 == 0 else None, "e%d" % i) for i in range(total)
        ]
        assert_increasing_ids(got)
        assert sub.nothing_pending(0.5), sub.buf  # no duplicate trailing behind
        reqs = up.wait_requests(2)
        assert "Last-Event-ID" not in dict(reqs[0]["headers"])
        assert reqs[0]["last_sent"] is not None
        # the first request after the restart resumes exactly after the last id received
        assert dict(reqs[1]["headers"]).get("Last-Event-ID") == reqs[0]["last_sent"], reqs[:2]
        assert int(reqs[0]["last_sent"]) <= 20
        m = metric_values(relay.port)
        assert m["sse_relay_events_total"] == total, m
        assert m["sse_relays_connected"] == 1, m
        assert relay.proc.poll() is None
    finally:
        sub.close()


@pytest.mark.parametrize("mode", ["404", "html"])
def test_relay_retries_non_stream_answers_with_growing_delay(start_server, upstreams, mode):
    up = upstreams()
    relay = start_relay(start_server, "http://127.0.0.1:%d/s" % up.port)
    relay.wait_for_line(r"relay feed: following")
    sub = Stream(relay.port, "/events/feed")
    try:
        up.append("before")
        assert sub.read_event()["data"] == "before"  # the relay now knows retry: 200
        start = len(relay.lines)
        n_before = up.request_count()
        up.mode = mode
        up.drop()
        # the stream ended (reconnect after retry), then every attempt fails: the delay grows
        wait_until(lambda: len(reconnect_delays(relay, "feed", start)) >= 5, 10, "5 reconnects")
        delays = reconnect_delays(relay, "feed", start)
        assert delays[0] == 250, delays  # retry: 200, raised to the 250 ms floor
        failures = delays[1:]
        assert failures[0] == 250, delays  # the first failure waits the reconnection time
        # then the wait doubles, drawn from [d/2, d] (jitter): never shorter than the last
        for k, d in enumerate(failures[1:], start=1):
            assert 250 * 2**k // 2 <= d <= 250 * 2**k, delays
        assert all(a <= b for a, b in zip(failures, failures[1:])), delays
        assert up.request_count() - n_before >= 4
        why = "404" if mode == "404" else "text/event-stream"
        pattern = r"upstream http://127\.0\.0\.1:%d .*%s" % (up.port, why)
        assert lines_matching(relay, pattern, start), relay.stderr_text()
        m = metric_values(relay.port)
        assert m["sse_relays_connected"] == 0, m
        assert m["sse_relay_events_total"] == 1, m
        assert m["sse_events_published_total"] == 1, m
        assert sub.nothing_pending(0.2), sub.buf  # nothing from the non-stream bodies
        # the upstream serves a stream again: the relay follows it and events flow
        up.append("after")
        up.mode = "stream"
        ev = sub.read_event(timeout=10)
        assert ev["data"] == "after", ev
        assert metric_values(relay.port)["sse_relays_connected"] == 1
        last = up.wait_requests(up.request_count())[-1]
        assert dict(last["headers"]).get("Last-Event-ID") == "1", last
    finally:
        sub.close()


class CountingUpstream:
    """Answers every connection on 127.0.0.1 with a 200 text/event-stream head, then `body`
    (with `{n}` replaced by the connection's number), then closes; records when each
    connection arrived (monotonic seconds)."""

    def __init__(self, body):
        self.body = body
        self.times = []
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(128)
        self.ls.settimeout(0.05)
        self.port = self.ls.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            try:
                s, _ = self.ls.accept()
            except OSError:
                continue
            with self.lock:
                self.times.append(time.monotonic())
                n = len(self.times)
            try:
                s.settimeout(2)
                head = b""
                while b"\r\n\r\n" not in head:
                    got = s.recv(4096)
                    if not got:
                        break
                    head += got
                s.sendall(Upstream.HEAD + self.body.replace(b"{n}", b"%d" % n))
            except OSError:
                pass
            s.close()

    def count(self):
        with self.lock:
            return len(self.times)

    def close(self):
        self.done.set()
        self.thread.join(timeout=5)
        self.ls.close()


@pytest.fixture
def counting_upstream():
    made = []

    def make(body):
        u = CountingUpstream(body)
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


def test_relay_retry_zero_and_close_backs_off(start_server, counting_upstream):
    """An upstream that answers `retry: 0` and closes at once, with no event: the relay keeps
    a floor between attempts and backs off exponentially (jittered), instead of reconnecting
    as fast as the loop turns (tens of thousands of connections in seconds)."""
    up = counting_upstream(b"retry: 0\n\n")
    relay = start_relay(start_server, "http://127.0.0.1:%d/s" % up.port)
    relay.wait_for_line(r"relay feed: reconnecting to \S+ in \d+ ms$")
    time.sleep(3)
    n = up.count()
    assert 2 <= n <= 10, "%d connections in 3 s" % n
    delays = reconnect_delays(relay, "feed")
    assert len(delays) >= 3, delays
    assert delays[0] == 250, delays  # the floor (retry: 0), then the back-off
    for k, d in enumerate(delays[1:], start=1):
        assert 250 * 2**k // 2 <= d <= 250 * 2**k, delays
    assert all(a <= b for a, b in zip(delays, delays[1:])), delays
    with up.lock:
        gaps = [b - a for a, b in zip(up.times, up.times[1:])]
    assert all(g >= 0.2 for g in gaps), gaps
    assert gaps[-1] > gaps[0], gaps  # the gaps grow
    healthy(relay.port)


def test_relay_back_off_resets_after_an_event(start_server, counting_upstream):
    """An upstream that delivers one event per connection, then closes with `retry: 0`: each
    stream delivered, so the relay does not back off, but still waits the floor."""
    up = counting_upstream(b"retry: 0\n\nid: {n}\ndata: event {n}\n\n")
    relay = start_relay(start_server, "http://127.0.0.1:%d/s" % up.port)
    sub = Stream(relay.port, "/events/feed")
    try:
        got = read_events(sub, 6, timeout=15)  # from whichever came after subscribing
        first = int(got[0]["data"].split()[1])
        assert [e["data"] for e in got] == ["event %d" % i for i in range(first, first + 6)]
        delays = reconnect_delays(relay, "feed")
        assert len(delays) >= 5 and set(delays) == {250}, delays
        with up.lock:
            gaps = [b - a for a, b in zip(up.times, up.times[1:])]
        assert len(gaps) >= 5 and all(g >= 0.2 for g in gaps), gaps
    finally:
        sub.close()


def test_relay_failing_from_the_start_uses_default_delay(start_server, upstreams):
    up = upstreams()
    up.mode = "404"
    relay = start_relay(start_server, "http://127.0.0.1:%d/s" % up.port)
    relay.wait_for_line(r"relay feed: reconnecting to http://127\.0\.0\.1:%d in 3000 ms$" % up.port)
    sub = Stream(relay.port, "/events/feed")
    try:
        m = metric_values(relay.port)
        assert m["sse_relays_connected"] == 0 and m["sse_relay_events_total"] == 0, m
        up.mode = "stream"
        up.append("finally")
        ev = sub.read_event(timeout=10)
        assert ev["data"] == "finally"
        assert metric_values(relay.port)["sse_relays_connected"] == 1
        assert "Last-Event-ID" not in dict(up.wait_requests(2)[1]["headers"])
    finally:
        sub.close()


def test_refused_upstream_does_not_stop_the_server(start_server, upstreams):
    port = free_port()
    relay = start_relay(start_server, "http://127.0.0.1:%d/stream" % port)
    relay.wait_for_line(r"relay feed: reconnecting to http://127\.0\.0\.1:%d in \d+ ms$" % port)
    healthy(relay.port)
    sub = Stream(relay.port, "/events/feed")
    try:
        assert sub.status == 200
        m = metric_values(relay.port)
        assert m["sse_relays_connected"] == 0, m
        up = upstreams(port=port)
        up.append("now it flows")
        ev = sub.read_event(timeout=10)
        assert ev["data"] == "now it flows"
        assert metric_values(relay.port)["sse_relays_connected"] == 1
        healthy(relay.port)
    finally:
        sub.close()


# ---- command line ------------------------------------------------------------------------------


def run_binary(*args, timeout=10):
    p = subprocess.Popen(
        [BINARY, "--listen", "127.0.0.1:0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(timeout=5)
        raise AssertionError("sse-server %r did not exit" % (args,))
    return p.returncode, err.decode("utf-8", "replace")


@pytest.mark.parametrize(
    "value",
    [
        "feed",  # no '='
        "=http://127.0.0.1:1/x",  # no topic
        "feed=",  # no URL
        "feed=https://127.0.0.1:1/x",
        "feed=ftp://127.0.0.1/x",
        "feed=127.0.0.1:1/x",
    ],
)
def test_relay_option_shape_errors_exit_2(value):
    rc, err = run_binary("--relay", value)
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sse-server: ") and "--relay" in lines[0], err


@pytest.mark.parametrize(
    "value, message",
    [
        ("bad/topic=http://127.0.0.1:1/x", "TOPIC must be 1 to 64 of A-Z a-z 0-9 . _ -"),
        ("%s=http://127.0.0.1:1/x" % ("t" * 65), "TOPIC must be 1 to 64 of"),
        ("feed=http://127.0.0.1:99999/x", "the URL's port must be 1 to 65535"),
        ("feed=http://127.0.0.1:1/x y", "the URL's path must be printable ASCII"),
    ],
)
def test_relay_value_the_library_would_refuse_exit_2(value, message):
    """main.c checks what sse_server_new() would refuse in a --relay value, so a bad one is
    a usage error (exit 2) naming --relay, not a failure to start (exit 1)."""
    rc, err = run_binary("--relay", value)
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sse-server: invalid value '%s' for --relay: "
                                                   % value) and message in lines[0], err
    assert "listening" not in err


def test_relay_does_not_republish_the_origins_position_event(start_server):
    """An sse-server origin opens the relay's stream with its position event (type
    "position", empty data): the relay keeps its id for Last-Event-ID and publishes nothing,
    so its own subscribers get only the origin's events."""
    origin, relay = origin_and_relay(start_server)
    sub = Stream(relay.port, "/events/feed")
    try:
        sub.read_block()  # retry:
        assert sub.read_block().startswith(b"id: ")  # the relay's own position
        time.sleep(0.3)
        m = metric_values(relay.port)
        assert (m["sse_events_published_total"], m["sse_relay_events_total"]) == (0, 0), m
        assert sub.nothing_pending(0.2)
        publish(origin.port, "one", topic="news")
        ev = sub.read_event()
        assert (ev["event"], ev["data"]) == (None, "one")
        assert metric_values(relay.port)["sse_relay_events_total"] == 1
    finally:
        sub.close()
