"""--redis, the holes a hostile network and a forgetful Redis found (issue 14):

- an idle node must stay healthy indefinitely: the reply deadline applies only while a reply
  is due, and an idle link is probed with a PING of its own (no PONG in time: link lost);
- a resume from an id the stream cannot prove it covers (Redis restarted empty, or trimmed
  past the id) gets the `reset` event, exactly as from the local backlog; never a silent gap.

Uses the real redis-server of tests/test_redis.py (restarted here without persistence, so it
comes back empty) and a small fake Redis where the test needs a link that stops answering."""

import json
import re
import socket
import threading
import time

from conftest import Stream, request
from test_redis import Redis, node, pub, read_events, redis  # noqa: F401 (redis: a fixture)

# ---- an idle node stays healthy ------------------------------------------------------------


def test_idle_node_stays_healthy(start_server, redis):  # noqa: F811
    """A node on a healthy Redis that publishes nothing: /healthz answers 200 on every poll
    for 16 s (more than three times the reply timeout), no link is ever lost, and the idle
    command link is probed with PING."""
    before = int(re.search(rb"cmdstat_ping:calls=(\d+)",
                           redis.command("INFO", "commandstats")).group(1))
    a = node(start_server, redis)
    end = time.monotonic() + 16
    polls = []
    while time.monotonic() < end:
        polls.append(request(a.port, "GET", "/healthz").status)
        time.sleep(0.2)
    assert len(polls) > 40 and set(polls) == {200}, polls
    assert "link lost" not in a.stderr_text(), a.stderr_text()
    after = int(re.search(rb"cmdstat_ping:calls=(\d+)",
                          redis.command("INFO", "commandstats")).group(1))
    assert after - before >= 3, (before, after)  # one every 3 s while idle
    st = Stream(a.port, "/events/news")  # and it still works
    try:
        st.read_block()
        st.read_block()
        id_ = pub(a.port, "after a long idle")
        assert read_events(st, 1) == [(id_, "after a long idle")]
    finally:
        st.close()


class PingRedis:
    """A fake Redis: answers the follower with an empty stream (XREVRANGE: *0) and leaves its
    XREAD BLOCK waiting; answers PING with PONG while `pong` is set, and records when each
    PING arrived."""

    PING = b"*1\r\n$4\r\nPING\r\n"

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.ls.settimeout(0.1)
        self.port = self.ls.getsockname()[1]
        self.pong = threading.Event()
        self.pong.set()
        self.pings = []  # (monotonic time, answered)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.done.is_set():
            try:
                c, _ = self.ls.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while not self.done.is_set():
                got = c.recv(65536)
                if not got:
                    return
                buf += got
                while buf.startswith(self.PING):
                    buf = buf[len(self.PING):]
                    answered = self.pong.is_set()
                    with self.lock:
                        self.pings.append((time.monotonic(), answered))
                    if answered:
                        c.sendall(b"+PONG\r\n")
                if b"XREVRANGE" in buf and buf.endswith(b"\r\n"):
                    buf = b""
                    c.sendall(b"*0\r\n")
                elif b"XREAD" in buf and buf.endswith(b"\r\n"):
                    buf = b""  # BLOCK: never answered here
        except OSError:
            pass

    def close(self):
        self.done.set()
        self.ls.close()
        for c in self.conns:
            c.close()


def test_idle_link_probe_finds_a_dead_link(start_server):
    """The command link is probed with PING while idle; answered, the node stays healthy past
    the reply timeout; once PING goes unanswered the node reports the link lost within the
    probe's deadline (PING after 3 s idle, PONG due 5 s later) and /healthz answers 503."""
    fake = PingRedis()
    try:
        srv = start_server("--redis", "127.0.0.1:%d" % fake.port)
        srv.wait_for_line(r"following stream sse after 0-0")
        end = time.monotonic() + 8
        while time.monotonic() < end:
            assert request(srv.port, "GET", "/healthz").status == 200
            time.sleep(0.2)
        with fake.lock:
            assert len(fake.pings) >= 2 and all(ok for _, ok in fake.pings), fake.pings
        assert "link lost" not in srv.stderr_text(), srv.stderr_text()
        start = len(srv.lines)
        fake.pong.clear()
        cleared = time.monotonic()
        line = srv.wait_for_line(r"commands link lost", timeout=15, start=start)
        lost = time.monotonic()
        assert line.endswith("commands link lost: no reply in time (PING unanswered)"), line
        with fake.lock:
            unanswered = [t for t, ok in fake.pings if not ok]
        assert unanswered and unanswered[0] >= cleared
        assert lost - unanswered[0] >= 4.5  # the PONG was due REDIS_TIMEOUT_MS later
        assert request(srv.port, "GET", "/healthz").status == 503
    finally:
        fake.close()
