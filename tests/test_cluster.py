"""deploy/nginx-cluster.conf, run as shipped (only machine-specific lines changed) in front of
two sse-server nodes of one Redis hub.

Through nginx: least_conn spreads the streams over both nodes and fills the emptier one; every
subscriber gets every event published through nginx exactly once, in order, in exact framing;
when a node is stopped its subscribers reconnect through nginx with their Last-Event-ID while
publishing goes on, land on the other node and get exactly what they missed, then live events;
a publish is never a false 200, fails only as a clean 502/503/504 during the switch, and
succeeds again once the dead node is out."""

import collections
import os
import re
import select
import threading
import time

import pytest

from clients import wait_until
from conftest import build_request, connect, metric_values, parse_head, publish, recv_until
from test_nginx import nginx_binary, start_nginx  # noqa: F401 (fixtures)
from test_redis import node, redis  # noqa: F401 (redis: a redis-server, test_redis.Redis)

pytestmark = pytest.mark.redis

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy",
                    "nginx-cluster.conf")
# A new stream on a fresh hub (the nodes run --retry 200).
HEAD = b"retry: 200\n\nid: 0-0\nevent: position\ndata:\n\n"
EVENT_RE = re.compile(rb"id: ([1-9][0-9]*-[0-9]+)\nevent: tick\ndata: (p[0-9]+)\n"
                      rb"data: second line\n\n")


def cluster_conf(node_ports):
    """deploy/nginx-cluster.conf with only its machine-specific lines changed."""

    def make(d, port):
        with open(CONF) as f:
            text = f.read()
        for old, new in [
            ("listen 8080;", "listen 127.0.0.1:%d;" % port),
            ("server 127.0.0.1:8081 ", "server 127.0.0.1:%d " % node_ports[0]),
            ("server 127.0.0.1:8082 ", "server 127.0.0.1:%d " % node_ports[1]),
            ("pid /run/nginx.pid;", "pid %s/nginx.pid;" % d),
            ("error_log /var/log/nginx/error.log;", "error_log %s/error.log info;" % d),
            ("access_log /var/log/nginx/access.log cluster;",
             "access_log %s/access.log cluster;" % d),
            ("http {\n", "http {\n" + "".join(
                "    %s_temp_path %s/%s;\n" % (k, d, k)
                for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
        ]:
            assert text.count(old) == 1, "deploy/nginx-cluster.conf no longer has %r" % old
            text = text.replace(old, new)
        return text

    return make


def dechunk(raw):
    """(body, ended): the chunked body so far, and whether its last chunk has arrived."""
    out, i = b"", 0
    while True:
        j = raw.find(b"\r\n", i)
        if j < 0:
            return out, False
        size = int(raw[i:j].split(b";")[0], 16)
        if len(raw) < j + 2 + size + 2:
            return out + raw[j + 2 : j + 2 + size], False
        if size == 0:
            return out, True
        out += raw[j + 2 : j + 2 + size]
        i = j + 2 + size + 2


class Subscriber:
    """GET /events/news through nginx over HTTP/1.1, as EventSource asks (with Last-Event-ID
    when resuming); Connection: close so that nginx ends our connection with the stream."""

    def __init__(self, port, last_id=None):
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        self.sock = connect(port)
        self.sock.sendall(build_request("GET", "/events/news", headers, close=True))
        head, self.raw = recv_until(self.sock, b"\r\n\r\n", 10)
        status, _, fields = parse_head(head)
        assert status == 200, head
        # the nodes' close-delimited body, chunked by nginx so its end can be told from a cut
        assert ("Transfer-Encoding", "chunked") in fields, head
        self.eof = False

    def body(self):
        return dechunk(self.raw)[0]

    def _recv(self, deadline, what):
        left = deadline - time.monotonic()
        assert left > 0 and not self.eof, "%s; have %r" % (what, self.body()[-400:])
        if select.select([self.sock], [], [], left)[0]:
            chunk = self.sock.recv(65536)
            self.eof = not chunk
            self.raw += chunk

    def read_until(self, marker, timeout=10):
        deadline = time.monotonic() + timeout
        while marker not in self.body():
            self._recv(deadline, "no %r" % marker)

    def read_to_end(self, timeout=10):
        """The whole body, once nginx has sent its last chunk and closed."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._recv(deadline, "the stream did not end")
        body, ended = dechunk(self.raw)
        assert ended, "nginx cut the stream instead of ending it: %r" % self.raw[-200:]
        return body

    def close(self):
        self.sock.close()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def wire(event):
    id_, data = event
    return b"id: %s\nevent: tick\ndata: %s\ndata: second line\n\n" % (id_.encode(), data.encode())


def events_in(body):
    """The (id, data) of a run of tick events; anything else in it fails."""
    out, i = [], 0
    while i < len(body):
        m = EVENT_RE.match(body, i)
        assert m, "not a tick event at %d: %r" % (i, body[i : i + 200])
        out.append((m.group(1).decode(), m.group(2).decode()))
        i = m.end()
    return out


def id_key(id_):
    ms, seq = id_.split("-")
    return int(ms), int(seq)


def publish_through(port, n):
    """POST /publish through nginx; returns (status, id or None)."""
    r = publish(port, ("p%d\nsecond line" % n).encode(), topic="news", event="tick")
    return r.status, (r.json()["id"] if r.status == 200 else None)


def subscriber_counts(nodes):
    return [metric_values(n.port)["sse_subscribers"] for n in nodes]


def open_stream(port, nodes, last_id=None):
    """A subscriber through nginx and the index of the node it landed on (the one whose
    sse_subscribers went up)."""
    before = subscriber_counts(nodes)
    s = Subscriber(port, last_id)
    deadline = time.monotonic() + 5
    while True:
        now = subscriber_counts(nodes)
        grew = [i for i in range(len(nodes)) if now[i] > before[i]]
        if sum(now) == sum(before) + 1 and len(grew) == 1:
            return s, grew[0]
        assert time.monotonic() < deadline, (before, now)
        time.sleep(0.02)


def test_least_conn_fills_the_emptier_node(start_server, redis, start_nginx):  # noqa: F811
    nodes = [node(start_server, redis), node(start_server, redis)]
    nginx = start_nginx(make_conf=cluster_conf([n.port for n in nodes]))
    opened = []
    try:
        for _ in range(4):
            opened.append(open_stream(nginx.port, nodes))
        assert subscriber_counts(nodes) == [2, 2]
        for s, where in opened:
            if where == 0:
                s.close()
        deadline = time.monotonic() + 5
        while subscriber_counts(nodes) != [0, 2]:
            assert time.monotonic() < deadline, subscriber_counts(nodes)
            time.sleep(0.02)
        # Round robin would hand one of the next two to the node already holding two streams.
        for _ in range(2):
            s, where = open_stream(nginx.port, nodes)
            opened.append((s, where))
            assert where == 0
        assert subscriber_counts(nodes) == [2, 2]
    finally:
        for s, _ in opened:
            s.close()


def test_every_event_once_and_failover_with_last_event_id(start_server, redis,  # noqa: F811
                                                          start_nginx):
    nodes = [node(start_server, redis), node(start_server, redis)]
    nginx = start_nginx(make_conf=cluster_conf([n.port for n in nodes]))
    subs, where = [], []
    moved = []
    try:
        for _ in range(6):
            s, w = open_stream(nginx.port, nodes)
            s.read_until(HEAD)
            subs.append(s)
            where.append(w)
        counts = subscriber_counts(nodes)
        assert all(c > 0 for c in counts) and sum(counts) == 6, counts

        # Every event published through nginx reaches every subscriber once, in order, as is.
        first = []
        for n in range(20):
            status, id_ = publish_through(nginx.port, n)
            assert status == 200
            first.append((id_, "p%d" % n))
        assert sorted(first, key=lambda e: id_key(e[0])) == first
        for s in subs:
            s.read_until(wire(first[-1]))
            assert s.body() == HEAD + b"".join(wire(e) for e in first)

        # A steady publisher through nginx while node 0 is stopped and its subscribers move.
        results, errors, stop = [], [], threading.Event()

        def publisher():
            n = len(first)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status, id_ = publish_through(nginx.port, n)
                    results.append((started, n, status, id_, time.monotonic()))
                except (OSError, AssertionError, ValueError) as e:
                    errors.append((n, repr(e)))
                n += 1
                time.sleep(0.01)  # a steady pace, not a wait

        t = threading.Thread(target=publisher)
        t.start()
        try:
            wait_until(lambda: len(results) >= 10 or not t.is_alive(),
                       what="publishes before node 0 stops")
            nodes[0].stop()  # SIGTERM: drains, each stream gets a jittered retry: and its end
            assert nodes[0].terminated
            on_dead = [s for s, w in zip(subs, where) if w == 0]
            stayers = [s for s, w in zip(subs, where) if w == 1]
            ends = []
            for s in on_dead:
                body = s.read_to_end()
                m = re.search(rb"retry: ([0-9]+)\n\n\Z", body)
                assert m and 200 <= int(m.group(1)) <= 400, body[-200:]
                assert body.startswith(HEAD), body[:200]
                got = events_in(body[len(HEAD) : m.start()])
                assert got[: len(first)] == first
                ends.append((got, int(m.group(1))))
                s.close()
            # As EventSource does: wait the retry time, reconnect with the last id seen.
            time.sleep(max(j for _, j in ends) / 1000)
            reconnected = time.monotonic()
            for got, _ in ends:
                s, w = open_stream(nginx.port, nodes[1:], last_id=got[-1][0])
                moved.append((got, s))
            assert subscriber_counts(nodes[1:]) == [6]
            # live events on the new connections, publishes all to node 1
            wait_until(lambda: sum(r[0] > reconnected for r in results) >= 25
                       or not t.is_alive(), what="25 publishes after the move")
        finally:
            stop.set()
            t.join(timeout=30)
        assert not t.is_alive() and errors == [], errors
        final_n = len(first) + len(results) + len(errors)
        status, final_id = publish_through(nginx.port, final_n)
        assert status == 200
        final = (final_id, "p%d" % final_n)

        # The hub's sequence, as a subscriber that never moved received it.
        for s in stayers:
            s.read_until(wire(final))
        reference = stayers[0].body()
        assert all(s.body() == reference for s in stayers)
        assert reference.startswith(HEAD)
        hub = events_in(reference[len(HEAD) :])
        keys = [id_key(i) for i, _ in hub]
        assert keys == sorted(set(keys)), "ids not strictly increasing"
        acked = first + [(id_, "p%d" % n) for _, n, status, id_, _ in results if status == 200]
        acked.append(final)
        failed = {"p%d" % n: status for _, n, status, _, _ in results if status != 200}
        assert set(failed.values()) <= {502, 503, 504}, failed
        # No false 200: every acknowledged event is in the hub's sequence, in order; anything
        # else in it is a publish that failed after reaching a node, at most once.
        acked_set = set(acked)
        assert [e for e in hub if e in acked_set] == acked
        extra = [data for id_, data in hub if (id_, data) not in acked_set]
        assert set(extra) <= set(failed) and len(extra) == len(set(extra)), (extra, failed)
        # Once node 0 is out, publishing succeeds.
        late = [status for started, _, status, _, _ in results if started > reconnected]
        assert len(late) >= 20 and set(late) == {200}, late

        # Each moved subscriber: what node 0 sent, then node 1's replay of exactly what it
        # missed (what Redis acknowledged after its last id before it reconnected), then live
        # events, with no reset, no gap, no duplicate.
        for got, s in moved:
            s.read_until(wire(final))
            body = s.body()
            assert body.startswith(b"retry: 200\n\n"), body[:200]
            assert got + events_in(body[len(b"retry: 200\n\n") :]) == hub
            missed = [n for _, n, status, id_, done in results if status == 200 and
                      done < reconnected and id_key(id_) > id_key(got[-1][0])]
            assert len(missed) >= 3, missed
        print("publishes while node 0 stopped: %d, answers %s; events after the move: %s" % (
            len(results), sorted(collections.Counter(r[2] for r in results).items()),
            [len(hub) - len(got) for got, _ in moved]))
        m = metric_values(nodes[1].port)
        assert m["sse_resets_total"] == 0 and m["sse_replays_total"] == len(moved)
    finally:
        for s in subs:
            s.close()
        for _, s in moved:
            s.close()
    # nginx passed on to node 1 a request it could not connect to node 0 for (proxy_next_upstream;
    # nginx logs a request when it ends, the streams' just now).
    log = os.path.join(nginx.dir, "access.log")
    wait_until(lambda: read(log).count(b"\n") >= 6 + len(moved) + 20 + len(results) + 1,
               what="access log: %r" % read(log)[-400:])
    lines = read(log).decode().splitlines()
    assert any(l.endswith(" upstream=127.0.0.1:%d, 127.0.0.1:%d" % (nodes[0].port, nodes[1].port))
               for l in lines), lines
