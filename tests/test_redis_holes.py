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

import pytest

from conftest import Stream, request
from test_redis import Redis, node, pub, read_events, redis  # noqa: F401 (redis: a fixture)

pytestmark = pytest.mark.redis

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
        time.sleep(0.2)  # polling through the 16 s is the test: healthy all along
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
            time.sleep(0.2)  # healthy all through the 8 s (the test's point)
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


# ---- never a silent gap, whatever Redis lost -----------------------------------------------


def volatile_redis(tmp_path):
    """A redis-server without persistence: killed and started again, it comes back empty."""
    return Redis(tmp_path, "--appendonly", "no")


def reset_block(requested, oldest, current):
    """The reset event exactly as the local backlog sends it (stream_reset_event)."""
    data = '{"requested": %s, "oldest": %s, "current": "%s"}' % (
        json.dumps(requested), '"%s"' % oldest if oldest else "null", current)
    return ("id: %s\nevent: reset\ndata: %s\n\n" % (current, data)).encode()


def resume(port, last_id, topic="news"):
    """A stream resuming from last_id: the retry: block is read; returns the Stream."""
    st = Stream(port, "/events/" + topic, headers={"Last-Event-ID": last_id})
    assert st.status == 200
    assert st.read_block().startswith(b"retry: ")
    return st


def test_resume_after_redis_lost_its_data_is_a_reset(start_server, tmp_path):
    """Redis without persistence restarts empty; events are published again. A client that
    read the old stream resumes on a fresh node: the new stream cannot prove it holds what
    came after the client's id (its first entry is newer, and the entries in between are
    gone), so the client gets the reset event, byte for byte as from the local backlog, and
    never the newer events alone. Both ways a fresh node decides: from its backlog (started
    before the new events) and from Redis (started after them, its backlog empty)."""
    redis = volatile_redis(tmp_path)
    try:
        a = node(start_server, redis)
        old = [pub(a.port, "old %d" % i) for i in range(20)]
        a.stop()
        redis.kill()
        redis.start()
        assert redis.command("XLEN", "sse") == b":0\r\n"  # gone
        b = node(start_server, redis)  # follows the new stream from its start (0-0)
        new = [pub(b.port, "new %d" % i) for i in range(19)]
        c = node(start_server, redis)  # started after the new events: nothing in its backlog
        since_c = []  # what c has followed (its backlog)
        for srv in (c, b, c, b):
            for asked in (old[0], old[-1]):
                oldest = new[0] if srv is b else (since_c[0] if since_c else None)
                st = resume(srv.port, asked)
                try:
                    assert st.read_block() == reset_block(asked, oldest, new[-1])
                    assert st.nothing_pending(0.3), st.buf  # none of the 19: a reset, no gap
                    after = pub(b.port, "live")
                    assert read_events(st, 1) == [(after, "live")]  # and live events follow
                    new.append(after)
                    since_c.append(after)
                finally:
                    st.close()
    finally:
        redis.stop()


def test_resume_from_a_trimmed_id_is_a_reset(start_server, tmp_path):
    """MAXLEN trimming removed the entries after the client's id: reset, exactly; an id the
    stream still holds replays exactly."""
    redis = volatile_redis(tmp_path)
    try:
        a = node(start_server, redis, "--redis-maxlen", "10")
        ids = [pub(a.port, "t%d" % i) for i in range(400)]
        assert int(redis.command("XLEN", "sse")[1:-2]) < 400
        late = node(start_server, redis, "--backlog", "5")
        st = resume(late.port, ids[0])
        try:
            assert st.read_block() == reset_block(ids[0], None, ids[-1])
            assert st.nothing_pending(0.3), st.buf
        finally:
            st.close()
        st = resume(late.port, ids[-8])
        try:
            assert read_events(st, 7) == [(i, "t%d" % (393 + k)) for k, i in enumerate(ids[-7:])]
            assert st.nothing_pending(0.3), st.buf
        finally:
            st.close()
    finally:
        redis.stop()


def test_covered_resume_replays_exactly_without_reset(start_server, tmp_path):
    """Nothing lost: a fresh node (5-event backlog) replays from Redis and then its backlog,
    every event after the client's id once, in order, no reset; also from the position a
    client was given when the stream was still empty (0-0: nothing was ever removed)."""
    redis = volatile_redis(tmp_path)
    try:
        a = node(start_server, redis)
        first = Stream(a.port, "/events/news")
        try:
            first.read_block()
            position = re.search(rb"id: (\S+)", first.read_block()).group(1).decode()
        finally:
            first.close()
        assert position == "0-0"
        events = [(pub(a.port, "e%d" % i), "e%d" % i) for i in range(30)]
        late = node(start_server, redis, "--backlog", "5")
        for k in (9, 27, None):
            asked = events[k][0] if k is not None else position
            expected = events[k + 1:] if k is not None else events
            st = resume(late.port, asked)
            try:
                assert read_events(st, len(expected)) == expected
                assert st.nothing_pending(0.3), st.buf
            finally:
                st.close()
        resets = re.search(rb"sse_resets_total (\d+)", request(late.port, "GET", "/metrics").body)
        assert resets and resets.group(1) == b"0"
    finally:
        redis.stop()
