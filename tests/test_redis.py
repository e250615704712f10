"""--redis: several sse-server nodes share one event history through a Redis stream. An
event published on any node reaches the subscribers of every node exactly once, in the
stream's order, under the stream entry's id; a client can resume on another node with its
Last-Event-ID; while Redis is down publishing answers 503 and subscribers stay connected;
after Redis comes back nothing acknowledged is lost and nothing is delivered twice.

Redis comes from Debian (redis-server; make test installs it) and runs on a loopback port,
with its append-only file synced on every write so a restart keeps what it acknowledged."""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from clients import wait_until
from conftest import BINARY, Stream, free_port, metric_values, publish, request, unavailable

pytestmark = pytest.mark.redis

ID_RE = re.compile(r"^[1-9][0-9]*-[0-9]+$")


class Redis:
    def __init__(self, tmp_path, *args):
        self.args = list(args)  # more redis-server options, e.g. --requirepass
        self.binary = shutil.which("redis-server")
        if not self.binary:
            unavailable("redis-server is not installed (apt-get install redis-server)")
        self.dir = str(tmp_path / "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--daemonize", "no", "--logfile", os.path.join(self.dir, "log"), *self.args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def command(self, *args):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"*%d\r\n" % len(args) + b"".join(
                b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() if isinstance(x, str) else x
                                                          for x in args)))
            return s.recv(65536)


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


def node(start_server, redis, *args, **kw):
    srv = start_server("--publish-token", "secret", "--redis", "127.0.0.1:%d" % redis.port,
                       "--retry", "200", *args, **kw)
    srv.wait_for_line(r"following stream sse after")
    return srv


def pub(port, data, topic="news", event=None):
    r = publish(port, data.encode(), topic=topic, event=event)
    assert r.status == 200, (r.status, r.body)
    body = r.json()
    assert ID_RE.match(body["id"]), body
    return body["id"]


def read_events(st, n, timeout=10):
    out = []
    while len(out) < n:
        block = st.read_block(timeout)
        m = re.match(rb"id: (\S+)\n(?:event: (\S+)\n)?((?:data: .*\n)+)\n$", block)
        if m:
            data = b"\n".join(l[6:] for l in m.group(3).split(b"\n") if l)
            out.append((m.group(1).decode(), data.decode()))
    return out


@pytest.mark.valgrind
def test_every_node_delivers_every_event_once_in_order(start_server, redis):
    nodes = [node(start_server, redis) for _ in range(3)]
    streams = [Stream(n.port, "/events/news") for n in nodes]
    try:
        for st in streams:
            assert st.read_block() == b"retry: 200\n\n"
            assert re.fullmatch(rb"id: 0-0\nevent: position\ndata:\n\n", st.read_block())
        acked = []
        for i in range(30):
            event = "update" if i % 2 else None
            id_ = pub(nodes[i % 3].port, "event %d\nline two" % i, event=event)
            acked.append((id_, event, "event %d\nline two" % i))
        want = b"".join(
            b"id: %s\n%sdata: event %d\ndata: line two\n\n"
            % (id_.encode(), b"event: update\n" if event else b"", i)
            for i, (id_, event, _) in enumerate(acked)
        )
        for st in streams:
            assert st.read_exactly(len(want)) == want  # exact framing, typed or not
            assert st.nothing_pending(0.3)
        acked = [(i, d) for i, _, d in acked]
    finally:
        for st in streams:
            st.close()
    ids = [int(i.split("-")[0]) * 2 ** 20 + int(i.split("-")[1]) for i, _ in acked]
    assert ids == sorted(set(ids))
    for n in nodes:
        m = metric_values(n.port)
        assert m["sse_redis_up"] == 1 and m["sse_redis_entries_total"] == 30
        assert request(n.port, "GET", "/healthz").body == b"ok\n"
    assert redis.command("XLEN", "sse") == b":30\r\n"


def test_resume_on_another_node_with_last_event_id(start_server, redis):
    a, c = node(start_server, redis), node(start_server, redis)
    st = Stream(a.port, "/events/news")
    try:
        st.read_block()
        st.read_block()
        first = [(pub(a.port, "e%d" % i), "e%d" % i) for i in range(5)]
        assert read_events(st, 5) == first
    finally:
        st.close()
    missed = [(pub(a.port, "m%d" % i), "m%d" % i) for i in range(5)]
    wait_until(lambda: metric_values(c.port)["sse_redis_entries_total"] >= 10,
               what="C's follower to take in all ten events")
    st = Stream(c.port, "/events/news", headers={"Last-Event-ID": first[-1][0]})
    try:
        st.read_block()
        assert read_events(st, 5) == missed
        assert st.nothing_pending(0.3)
    finally:
        st.close()
    # A node that started later fetches what the client missed from Redis (XRANGE), then
    # goes on live: every event once, in order.
    late = node(start_server, redis)
    st = Stream(late.port, "/events/news", headers={"Last-Event-ID": first[0][0]})
    try:
        st.read_block()
        assert read_events(st, 9) == first[1:] + missed
        live = pub(c.port, "live")
        assert read_events(st, 1) == [(live, "live")]
        assert st.nothing_pending(0.3)
    finally:
        st.close()
    assert metric_values(late.port)["sse_replays_total"] == 1


@pytest.mark.valgrind
def test_replay_from_redis_pages_and_topics(start_server, redis):
    a = node(start_server, redis)
    start = Stream(a.port, "/events/news")
    start.read_block()
    base = start.read_block().split(b"\n")[0].split(b" ")[1].decode()
    start.close()
    news = []
    for i in range(700):
        topic = "news" if i % 3 else "other"
        id_ = pub(a.port, "n%d" % i, topic=topic)
        if topic == "news":
            news.append((id_, "n%d" % i))
    late = node(start_server, redis, "--backlog", "50")
    st = Stream(late.port, "/events/news", headers={"Last-Event-ID": base})
    try:
        st.read_block()
        assert read_events(st, len(news)) == news  # three XRANGE pages, only its topic
        more = [(pub(a.port, "m%d" % i), "m%d" % i) for i in range(60)]  # past the backlog
        assert read_events(st, 60) == more
        assert st.nothing_pending(0.3)
    finally:
        st.close()


def test_trimmed_history_is_a_reset(start_server, redis):
    a = node(start_server, redis, "--redis-maxlen", "10")
    ids = [pub(a.port, "t%d" % i) for i in range(400)]
    assert int(redis.command("XLEN", "sse")[1:-2]) < 400  # Redis trimmed whole nodes
    late = node(start_server, redis, "--backlog", "5")
    st = Stream(late.port, "/events/news", headers={"Last-Event-ID": ids[0]})
    try:
        st.read_block()
        block = st.read_block()
        assert b"event: reset\n" in block and ids[0].encode() in block
    finally:
        st.close()
    st = Stream(late.port, "/events/news", headers={"Last-Event-ID": ids[-20]})
    try:
        st.read_block()
        assert [i for i, _ in read_events(st, 19)] == ids[-19:]  # recent enough: exact
    finally:
        st.close()


def test_replay_from_redis_keeps_the_client_buffer_rule(start_server, redis):
    """Events replayed from Redis obey the rule live events do (stream_room): a subscriber
    whose queue would pass --client-buffer is dropped as slow, and comes back later."""
    a = node(start_server, redis)
    start = Stream(a.port, "/events/news")
    start.read_block()
    base = start.read_block().split(b"\n")[0].split(b" ")[1].decode()
    start.close()
    ids = [pub(a.port, "%04d" % i + "x" * 1000) for i in range(60)]
    late = node(start_server, redis, "--backlog", "5", "--client-buffer", "8k")
    st = Stream(late.port, "/events/news", headers={"Last-Event-ID": base})
    try:
        got = st.read_until_closed(10)  # one XRANGE page is about 15 KB: over 8 KiB
    finally:
        st.close()
    assert len(got) < 16 * 1024 and ids[-1].encode() not in got, len(got)
    values = metric_values(late.port)
    assert values['sse_connections_closed_total{reason="slow_subscriber"}'] == 1, values
    assert values["sse_subscribers_dropped_total"] == 1


@pytest.mark.valgrind
def test_redis_down_publish_503_subscribers_stay(start_server, redis):
    a, b = node(start_server, redis), node(start_server, redis, "--heartbeat", "1")
    st = Stream(b.port, "/events/news")
    try:
        st.read_block()
        st.read_block()
        before = pub(a.port, "before")
        assert read_events(st, 1) == [(before, "before")]
        redis.stop()
        a.wait_for_line(r"link lost")
        r = publish(a.port, b"while down", topic="news")
        assert r.status == 503 and r.body == b"the event could not be stored; it was not published\n"
        assert request(a.port, "GET", "/healthz").status == 503
        assert metric_values(a.port)["sse_redis_up"] == 0
        assert st.read_exactly(2, timeout=5) == b":\n"  # the stream lives on, heartbeats too
        redis.start()
        wait_ready(a, b)
        after = pub(a.port, "after")
        assert read_events(st, 1) == [(after, "after")]  # same connection, nothing twice
        assert st.nothing_pending(0.3)
    finally:
        st.close()
    assert metric_values(a.port)["sse_redis_reconnects_total"] >= 2


def test_redis_restart_during_steady_publish_loses_nothing(start_server, redis):
    nodes = [node(start_server, redis) for _ in range(3)]
    streams = [Stream(n.port, "/events/news") for n in nodes]
    for st in streams:
        st.read_block()
        st.read_block()
    acked, refused, stop = [], [0], threading.Event()

    def publisher():
        i = 0
        while not stop.is_set():
            try:
                r = publish(nodes[i % 2].port, b"s%d" % i, topic="news")
            except (OSError, AssertionError):
                r = None
            if r is not None and r.status == 200:
                acked.append((r.json()["id"], "s%d" % i))
            elif r is not None:
                assert r.status == 503, r
                refused[0] += 1
            i += 1
            time.sleep(0.005)  # a steady pace, not a wait

    def more_acked(n, what):
        have = len(acked)
        wait_until(lambda: len(acked) >= have + n or not t.is_alive(), timeout=20, what=what)
        assert t.is_alive(), "the publisher thread failed"

    t = threading.Thread(target=publisher)
    t.start()
    try:
        more_acked(20, "publishes before Redis is killed")
        redis.kill()
        have = refused[0]
        wait_until(lambda: refused[0] > have or not t.is_alive(), timeout=20,
                   what="a publish refused while Redis is down")
        redis.start()
        more_acked(20, "publishes after Redis is back")
        redis.kill()
        redis.start()
        more_acked(20, "publishes after the second restart")
    finally:
        stop.set()
        t.join(timeout=30)
    assert refused[0] > 0 and len(acked) > 50
    final = pub(nodes[2].port, "final")
    seen = []
    try:
        for st in streams:
            got = []
            while not got or got[-1][0] != final:
                got += read_events(st, 1)
            seen.append(got)
    finally:
        for st in streams:
            st.close()
    for got in seen:
        ids = [i for i, _ in got]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        assert [e for e in got if e in set(acked)] == acked, "an acknowledged event is missing"
    assert seen[0] == seen[1] == seen[2]  # every node, the same sequence


@pytest.mark.journal
def test_options(start_server, tmp_path):
    def run(*args):
        return subprocess.run([BINARY, "--listen", "127.0.0.1:0", *args], capture_output=True,
                              timeout=10)

    r = run("--redis", "nohostport")
    assert r.returncode == 2 and b"--redis" in r.stderr
    r = run("--redis", "127.0.0.1:1", "--journal", str(tmp_path / "j"))
    assert r.returncode == 2  # a usage error: main.c refuses the pair before the library does
    assert r.stderr == (b"sse-server: --redis cannot be used with --journal: Redis keeps the "
                        b"history (see --help)\n")
    # Redis not there: the node starts, says it cannot serve yet, and keeps trying.
    srv = start_server("--publish-token", "secret", "--redis", "127.0.0.1:%d" % free_port())
    assert request(srv.port, "GET", "/healthz").status == 503
    assert publish(srv.port, b"x", topic="t").status == 503
    st = Stream(srv.port, "/events/t")
    try:
        assert st.status == 200 and st.read_block().startswith(b"retry: ")
    finally:
        st.close()


def test_resume_on_a_node_that_has_not_read_the_id_yet(start_server, redis):
    """A client that read an event on one node may reconnect to a node whose follower has
    not read it yet: it waits for the follower, then goes on, without a reset or a gap."""
    a, b = node(start_server, redis), node(start_server, redis)
    # Cut the followers (XREAD) so the nodes lag: they reconnect only after a back-off.
    def followers():
        clients = redis.command("CLIENT", "LIST").decode()
        ids = [re.search(r"id=(\d+)", l).group(1) for l in clients.splitlines()
               if "cmd=xread" in l]
        return ids if len(ids) == 2 else None

    for f in wait_until(followers, interval=0.02, what="both nodes' XREAD in CLIENT LIST"):
        assert redis.command("CLIENT", "KILL", "ID", f) == b":1\r\n"
    seen = pub(a.port, "read on a")
    st = Stream(b.port, "/events/news", headers={"Last-Event-ID": seen})
    try:
        st.read_block()
        after = pub(a.port, "after it")
        assert read_events(st, 1) == [(after, "after it")]  # not the one it had, no reset
        assert st.nothing_pending(0.3)
    finally:
        st.close()
    m = metric_values(b.port)
    assert m["sse_resets_total"] == 0 and m["sse_replays_total"] == 1
    # An id newer than anything Redis issued is a reset, as locally.
    st = Stream(b.port, "/events/news", headers={"Last-Event-ID": "99999999999999-0"})
    try:
        st.read_block()
        assert b"event: reset\n" in st.read_block()
    finally:
        st.close()


def wait_ready(*nodes, timeout=15):
    wait_until(lambda: all(request(n.port, "GET", "/healthz").status == 200 for n in nodes),
               timeout=timeout, interval=0.1, what="the nodes to reconnect")


def read_data(st, n, timeout=10):
    """n events: their ids strictly increase (each once); returns their data, in order."""
    got = read_events(st, n, timeout)
    ids = [tuple(int(x) for x in i.split("-")) for i, _ in got]
    assert ids == sorted(set(ids)), ids
    return [d for _, d in got]


def settle(srv):
    """Publishes on a topic nobody follows through srv and waits for the answer. Redis answers
    a link's commands in order, so every XADD srv sent before has been answered: a kill now
    cannot leave one whose outcome is unknown, which would be sent or fetched again and
    might be stored twice (docs/scaling.md: at least once for inputs and relays)."""
    assert publish(srv.port, b"settled", topic="probe").status == 200


def test_stdin_across_a_redis_outage_loses_nothing(start_server, redis):
    """What stdin brings while Redis is down is not dropped: the node stops reading its
    input (the pipe holds it) and publishes it once Redis is back, once, in order."""
    a = node(start_server, redis, "--stdin", stdin=subprocess.PIPE)
    b = node(start_server, redis)
    streams = [Stream(n.port, "/events") for n in (a, b)]

    def feed(lines):
        a.proc.stdin.write(b"".join(b"%s\n" % l.encode() for l in lines))
        a.proc.stdin.flush()

    try:
        for st in streams:
            st.read_block()
            st.read_block()
        batches = [["before %d" % i for i in range(20)], ["during %d" % i for i in range(300)],
                   ["after %d" % i for i in range(20)]]
        feed(batches[0])
        for st in streams:
            assert read_data(st, 20) == batches[0]
        settle(a)
        redis.kill()
        a.wait_for_line(r"commands link lost")
        seen = len(a.lines)
        feed(batches[1])  # held in the pipe: the node does not read it while Redis is down
        a.wait_for_line(r"input: Redis cannot take events: holding fd 0", start=seen)
        redis.start()
        wait_ready(a, b)
        feed(batches[2])
        want = batches[0] + batches[1] + batches[2]
        for st in streams:
            assert read_data(st, len(want) - 20) == want[20:]
            assert st.nothing_pending(0.3)
    finally:
        for st in streams:
            st.close()
    assert redis.command("XLEN", "sse") == b":341\r\n"  # and the probe
    a.wait_for_line(r"input: Redis cannot take events: holding fd 0")
    assert metric_values(a.port)["sse_redis_publish_unknown_total"] == 0


@pytest.mark.relay
def test_relay_across_a_redis_outage_loses_nothing(start_server, redis):
    """A relay stops taking upstream events while Redis is down and, once it is back,
    reconnects with the last upstream id Redis took: the events published upstream
    meanwhile arrive, once, in order, on every node."""
    origin = start_server("--publish-token", "secret", "--retry", "200")
    a = node(start_server, redis, "--relay", "news=http://127.0.0.1:%d/events/src" % origin.port)
    b = node(start_server, redis)
    a.wait_for_line(r"relay news: following")
    streams = [Stream(n.port, "/events/news") for n in (a, b)]

    def upstream(prefix, n):
        sent = []
        for i in range(n):
            r = publish(origin.port, b"%s %d" % (prefix.encode(), i), topic="src")
            assert r.status == 200, r
            sent.append("%s %d" % (prefix, i))
        return sent

    try:
        for st in streams:
            st.read_block()
            st.read_block()
        want = upstream("before", 10)
        for st in streams:
            assert read_data(st, 10) == want
        settle(a)
        seen = len(a.lines)
        redis.kill()
        a.wait_for_line(r"commands link lost")
        during = upstream("during", 30)
        # the relay lets go of its upstream (and reconnects only once Redis is back)
        a.wait_for_line(r"relay news: reconnecting", start=seen)
        redis.start()
        wait_ready(a, b)
        after = upstream("after", 10)
        for st in streams:
            assert read_data(st, 40) == during + after
            assert st.nothing_pending(0.5)
    finally:
        for st in streams:
            st.close()
    assert redis.command("XLEN", "sse") == b":51\r\n"  # and the probe


class FakeRedis:
    """Answers the follower (an empty stream; XREAD never answered) and an idle link's PING.
    On the command link, by default, closes the link as soon as an XADD has arrived, without
    answering it; with hold=True it takes XADDs without answering them until release(), then
    answers every one (ids 1-1, 1-2, ...). xadds counts the XADDs received, data collects
    their payloads."""

    XADD = b"\r\n$4\r\nXADD\r\n"

    def __init__(self, hold=False):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.hold, self.released, self.answered = hold, False, 0
        self.lock = threading.Lock()
        self.xadds = 0
        self.received = b""  # the command link's bytes (hold mode)
        self.cmd = None
        self.stop = threading.Event()
        self.conns = []
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.listener.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def answer(self):
        with self.lock:
            if self.released and self.cmd:
                self.cmd.sendall(b"".join(b"$%d\r\n1-%d\r\n" % (len(b"1-%d" % i), i)
                                          for i in range(self.answered + 1, self.xadds + 1)))
                self.answered = self.xadds

    def release(self):
        self.released = True
        self.answer()

    def data(self):
        return re.findall(rb"\$4\r\ndata\r\n\$\d+\r\n([^\r]*)\r\n", self.received)

    def serve(self, c):
        c.settimeout(30)
        buf = b""
        try:
            while not self.stop.is_set():
                got = c.recv(65536)
                if not got:
                    return
                buf += got
                if buf == b"*1\r\n$4\r\nPING\r\n":  # an idle link's probe
                    buf = b""
                    c.sendall(b"+PONG\r\n")
                elif b"XREVRANGE" in buf:
                    buf = b""
                    c.sendall(b"*0\r\n")
                elif self.hold and b"XADD" in buf:
                    with self.lock:
                        self.cmd = c
                        self.received += buf
                        self.xadds = self.received.count(self.XADD)
                    buf = b""
                    self.answer()
                elif b"XADD" in buf and buf.endswith(b"\r\n"):
                    self.xadds += 1
                    c.close()  # read, and gone before answering
                    return
        except OSError:
            pass

    def close(self):
        self.stop.set()
        self.listener.close()
        for c in self.conns:
            c.close()


def test_stdin_past_the_hold_mark_waits_for_redis(start_server):
    """Redis slower than the input: with 1 MiB of XADDs unanswered (the hold mark; or 16384
    commands, whichever comes first) the command link takes no more and the node stops
    reading its input (memory stays bounded; the writer blocks on the full pipe), and reads
    on, losing nothing, once Redis answers."""
    fake = FakeRedis(hold=True)
    lines = [b"x%05d" % i for i in range(60000)]
    try:
        srv = start_server("--redis", "127.0.0.1:%d" % fake.port, "--stdin",
                           stdin=subprocess.PIPE)
        srv.wait_for_line(r"following stream sse after 0-0")

        def write():
            srv.proc.stdin.write(b"".join(l + b"\n" for l in lines))
            srv.proc.stdin.flush()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        last, since = -1, time.monotonic()
        deadline = since + 20
        # A quiet second is the condition itself: no more XADDs come (the hold mark).
        while time.monotonic() - since < 1.0:  # until no XADD came for a second
            assert time.monotonic() < deadline
            time.sleep(0.1)
            if fake.xadds != last:
                last, since = fake.xadds, time.monotonic()
        # Exactly up to the hold mark: the command that crosses 1 MiB is the last one sent.
        xadd = (b"*10\r\n$4\r\nXADD\r\n$3\r\nsse\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n"
                b"$6\r\n100000\r\n$1\r\n*\r\n$5\r\ntopic\r\n$7\r\ndefault\r\n"
                b"$4\r\ndata\r\n$6\r\nx00000\r\n")
        assert fake.received.startswith(xadd)
        assert last == -(-(1 << 20) // len(xadd)), last
        assert writer.is_alive()  # blocked: the pipe holds the rest
        fake.release()
        wait_until(lambda: fake.xadds >= len(lines), timeout=20, what="every line's XADD")
        writer.join(5)
        assert fake.data() == lines  # every line once, in order
    finally:
        fake.close()


def test_publish_unanswered_when_the_link_dies_is_503_outcome_unknown(start_server):
    fake = FakeRedis()
    try:
        srv = start_server("--publish-token", "secret", "--redis", "127.0.0.1:%d" % fake.port)
        srv.wait_for_line(r"following stream sse after 0-0")
        wait_ready(srv)
        r = publish(srv.port, b"maybe stored", topic="news")
        assert r.status == 503
        assert r.body == (b"Redis went away before answering: the outcome is unknown, the event "
                          b"may have been stored; check before publishing it again\n")
        assert fake.xadds == 1
        m = metric_values(srv.port)
        assert m["sse_redis_publish_unknown_total"] == 1
    finally:
        fake.close()


def test_redis_password(start_server, tmp_path):
    password = "s3cret-Pa55word"
    redis = Redis(tmp_path, "--requirepass", password)
    try:
        good = node(start_server, redis, "--redis-password", password)
        st = Stream(good.port, "/events/news")
        try:
            st.read_block()
            st.read_block()
            id_ = pub(good.port, "authenticated")
            assert read_events(st, 1) == [(id_, "authenticated")]
        finally:
            st.close()
        bad = start_server("--publish-token", "secret", "--redis", "127.0.0.1:%d" % redis.port,
                           "--redis-password", "wrong-" + password)
        line = bad.wait_for_line(r"AUTH refused")
        assert "check --redis-password" in line and "WRONGPASS" in line, line
        bodies = []
        for _ in range(3):
            h = request(bad.port, "GET", "/healthz")
            p = publish(bad.port, b"x", topic="news")
            assert h.status == 503 and p.status == 503, (h.status, p.status)
            bodies += [h.raw_head + h.body, p.raw_head + p.body]
            time.sleep(0.2)  # samples spread over time, across the node's AUTH retries
        m = request(bad.port, "GET", "/metrics")
        assert metric_values(bad.port)["sse_redis_up"] == 0
        bodies += [m.body, request(good.port, "GET", "/metrics").body]
        for text in bodies + [good.stderr_text(), bad.stderr_text()]:
            t = text if isinstance(text, str) else text.decode("latin-1")
            assert password not in t, t
    finally:
        redis.stop()
