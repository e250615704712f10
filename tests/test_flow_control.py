"""Flow control: when publishing outruns delivery, the publishers are paced, not the
subscribers dropped. Every way of publishing goes through one gate: --stdin (the writer
blocks on a full pipe), relays (the upstream is not read: TCP pushes back), HTTP publishes
(answered once the subscribers caught up, or 503 + Retry-After after a bound). A subscriber
slower than the rest does not pace them: it is left behind and dropped at --client-buffer.

The load comes from tests/flowreader.py processes (several, since one Python process reads
slower than the server writes). Every stream checks that it got 1, 2, 3, ... with no gap.
Durations are bounded (SSE_FLOW_SECONDS, default 10, for the firehoses) and nothing
here asserts a speed: only counts, order and what /metrics says."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import metric_values, publish
from upstream import Upstream

HERE = os.path.dirname(os.path.abspath(__file__))
FLOW_SECONDS = float(os.environ.get("SSE_FLOW_SECONDS", "10"))
PAD = "x" * 90  # events of about 100 bytes of data


class Readers:
    """`procs` flowreader processes with `per` streams each on path."""

    def __init__(self, port, path, procs, per, rate=0, timeout=180, reconnects=0, rcvbuf=32768):
        self.procs = [
            subprocess.Popen(
                [sys.executable, os.path.join(HERE, "flowreader.py"), str(port), path, str(per),
                 str(rate), str(timeout), str(rcvbuf), str(reconnects)],
                stdout=subprocess.PIPE, text=True)
            for _ in range(procs)
        ]
        for p in self.procs:
            assert p.stdout.readline().strip() == "ready"

    def results(self, timeout=200):
        out = []
        for p in self.procs:
            line = p.stdout.readline()
            p.wait(timeout=timeout)
            out.extend(json.loads(line))
        return out

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_subscribers(port, n, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric_values(port)["sse_subscribers"] >= n:
            return
        time.sleep(0.05)
    raise AssertionError("subscribers did not connect")


def numbered_lines(start, count, pad=PAD):
    return "".join("%d %s\n" % (i, pad) for i in range(start, start + count)).encode()


def firehose(fd, seconds, pad=PAD, until=None, cap=60):
    """Writes numbered lines to the non-blocking pipe fd as fast as it takes them, for
    seconds; with until, then on until until() is true (asked between batches of lines), for
    cap seconds at most. Returns (the last number written, seconds spent waiting for room)."""
    os.set_blocking(fd, False)
    n, waited, pending = 0, 0.0, b""
    import select

    start = time.monotonic()

    def over():
        now = time.monotonic()
        return now - start >= seconds and (until is None or now - start >= cap or until())

    while pending or not over():
        if not pending:
            pending = numbered_lines(n + 1, 200, pad)
            n += 200
        try:
            pending = pending[os.write(fd, pending):]
        except BlockingIOError:
            t = time.monotonic()
            select.select([], [fd], [], 1.0)
            waited += time.monotonic() - t
    os.set_blocking(fd, True)
    os.write(fd, b"END\n")
    return n, waited


def check_everyone_got_everything(results, last):
    assert results, "no streams"
    bad = [r for r in results if not (r["in_order"] and r["end"] and r["last"] == last
                                      and r["count"] == last)]
    assert not bad, "%d of %d streams incomplete, e.g. %r" % (len(bad), len(results), bad[:3])


# A reader process starved of CPU on a busy machine falls behind the others like any slow
# client: the server leaves it behind and drops it (by design: one laggard must not pace
# everyone). The firehoses below let such a stream come back with Last-Event-ID, as an
# EventSource would, over a backlog deep enough for the whole run, and check that it still
# got every event once, in order; and that a drop stayed the exception, not the pacing.
RESUMES = 3
DEEP_BACKLOG = ("--backlog", "2000000", "--backlog-bytes", "1g")


def check_drops_were_exceptions(results, m):
    resumed = sum(r["reconnects"] for r in results)
    print("%d of %d streams were dropped and resumed" % (resumed, len(results)))
    assert m["sse_subscribers_dropped_total"] == resumed, (resumed, m)
    assert resumed <= len(results) // 10, "%d drops: pacing failed" % resumed


def stdin_run(start_server, procs, per, seconds, slow=0, pad=PAD, client_buffer="4m"):
    """A --stdin firehose into procs * per subscribers (plus `slow` readers at 1 KiB/s) for
    seconds. Returns (results of the normal readers, slow results, last, waited, metrics)."""
    r_fd, w_fd = os.pipe()
    srv = start_server("--stdin", "--client-buffer", client_buffer, *DEEP_BACKLOG, stdin=r_fd)
    os.close(r_fd)
    readers = slow_readers = None
    try:
        readers = Readers(srv.port, "/events", procs, per, reconnects=RESUMES)
        if slow:
            slow_readers = Readers(srv.port, "/events", 1, slow, rate=1024, timeout=seconds + 5)
        wait_subscribers(srv.port, procs * per + slow)
        last, waited = firehose(w_fd, seconds, pad)
        os.close(w_fd)
        w_fd = -1
        results = readers.results()
        slow_results = slow_readers.results() if slow_readers else []
        return results, slow_results, last, waited, metric_values(srv.port)
    finally:
        if w_fd >= 0:
            os.close(w_fd)
        for r in (readers, slow_readers):
            if r:
                r.kill()


def test_stdin_firehose_paces_the_writer_and_drops_nobody(start_server):
    """200 subscribers, --stdin written as fast as the pipe takes it: every subscriber gets
    every event in order, none is dropped (but a reader the machine starved, which resumes),
    and the writer was held (it waited on the pipe)."""
    results, _, last, waited, m = stdin_run(start_server, 2, 100, FLOW_SECONDS)
    check_everyone_got_everything(results, last)
    check_drops_were_exceptions(results, m)
    assert m['sse_publish_holds_total{cause="subscribers"}'] > 0
    assert m['sse_inputs_held_seconds_total{cause="subscribers"}'] > 0
    assert waited > 0, "the writer never had to wait"
    print("firehose: %d events to 200 subscribers, writer waited %.1f s, held %.1f s" % (
        last, waited, m['sse_inputs_held_seconds_total{cause="subscribers"}']))


def test_starved_readers_are_dropped_and_resume_without_a_gap(start_server):
    """A reader process stopped in a firehose (what a starved client looks like) until the
    server dropped its streams: they hold the writer, are left behind, dropped at
    --client-buffer once the kernel's buffers are full too, and come back with
    Last-Event-ID; every one of them still gets every event once and in order."""
    import signal

    r_fd, w_fd = os.pipe()
    srv = start_server("--stdin", "--client-buffer", "256k", *DEEP_BACKLOG, stdin=r_fd)
    os.close(r_fd)
    readers = Readers(srv.port, "/events", 1, 10, reconnects=RESUMES)
    starved = Readers(srv.port, "/events", 1, 10, reconnects=RESUMES, rcvbuf=4096)
    stopped = starved.procs[0]
    resumed_at = []

    def dropped_then_resumed():
        # How long the kernel's buffers take to fill depends on the machine, so the reader
        # stays stopped until its ten streams were dropped, then reads for 2 s of firehose.
        if not resumed_at:
            if metric_values(srv.port)["sse_subscribers_dropped_total"] >= 10:
                os.kill(stopped.pid, signal.SIGCONT)
                resumed_at.append(time.monotonic())
            return False
        return time.monotonic() - resumed_at[0] >= 2

    try:
        wait_subscribers(srv.port, 20)
        threading.Timer(1.0, os.kill, (stopped.pid, signal.SIGSTOP)).start()
        last, _ = firehose(w_fd, 3, "z" * 16000, until=dropped_then_resumed)
        os.close(w_fd)
        w_fd = -1
        os.kill(stopped.pid, signal.SIGCONT)
        assert resumed_at, ("the stopped reader's streams were not dropped", metric_values(srv.port))
        results = readers.results() + starved.results()
        check_everyone_got_everything(results, last)
        m = metric_values(srv.port)
        assert m["sse_subscribers_left_behind_total"] >= 10, m
        assert all(r["reconnects"] >= 1 for r in results[10:]), results[10:]
        resumed = sum(r["reconnects"] for r in results)
        assert m["sse_subscribers_dropped_total"] == resumed, (resumed, m)
        assert m["sse_replays_total"] >= resumed, m
    finally:
        if w_fd >= 0:
            os.close(w_fd)
        if stopped.poll() is None:
            os.kill(stopped.pid, signal.SIGCONT)
        readers.kill()
        starved.kill()


def test_slow_reader_does_not_pace_the_others(start_server):
    """The same firehose into 100 subscribers, with and without one more that reads 1 KiB/s:
    the slow one is dropped, the others get everything, and the rate does not fall to the
    slow reader's (a slow reader pacing everyone would cut it by orders of magnitude; the
    issue's 10% bound is measured by bench/, not asserted on a shared machine)."""
    seconds, pad = max(3.0, FLOW_SECONDS / 2), "z" * 1000  # bytes enough to fill the kernel's
    small = "256k"  # so that the slow one reaches it within the run
    results, _, alone, _, _ = stdin_run(start_server, 2, 50, seconds, pad=pad,  # buffers too
                                        client_buffer=small)
    check_everyone_got_everything(results, alone)
    results, slow, with_slow, _, m = stdin_run(start_server, 2, 50, seconds, slow=1, pad=pad,
                                               client_buffer=small)
    check_everyone_got_everything(results, with_slow)
    assert not slow[0]["end"], slow  # (what the kernel had of it still trickles in)
    resumed = sum(r["reconnects"] for r in results)
    assert resumed <= len(results) // 10, "%d drops: the slow one paced the others" % resumed
    assert m["sse_subscribers_dropped_total"] == 1 + resumed
    assert m['sse_connections_closed_total{reason="slow_subscriber"}'] == 1 + resumed
    assert m["sse_subscribers_lagging"] == 0
    print("rate with a slow reader / without: %d / %d events = %.2f" % (
        with_slow, alone, with_slow / alone))
    assert with_slow >= alone * 0.25, (with_slow, alone)  # (two runs one after the other)


def test_stalled_subscriber_among_few_is_left_behind(start_server):
    """5 subscribers that read and one that never does: the stalled one holds the writer
    only until the watch sees it took nothing, then is left behind (once) and dropped; the
    five get everything."""
    r_fd, w_fd = os.pipe()
    srv = start_server("--stdin", "--client-buffer", "256k", stdin=r_fd)
    os.close(r_fd)
    stalled = __import__("socket").create_connection(("127.0.0.1", srv.port))
    stalled.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    readers = None
    try:
        readers = Readers(srv.port, "/events", 1, 5)
        wait_subscribers(srv.port, 6)
        last, _ = firehose(w_fd, 3, "z" * 4000,  # until the kernel's buffers are full too
                           until=lambda: metric_values(srv.port)["sse_subscribers_dropped_total"])
        os.close(w_fd)
        w_fd = -1
        check_everyone_got_everything(readers.results(), last)
        m = metric_values(srv.port)
        # Once: left behind, it is not counted again while the kernel still holds its bytes
        # unsent (else it would lag, hold everyone and be left behind over and over).
        assert m["sse_subscribers_left_behind_total"] == 1, m
        assert m["sse_subscribers_dropped_total"] == 1, (last, m)
        assert srv.wait_for_line(r"flow control: \d+ subscriber\(s\) could not keep up")
    finally:
        stalled.close()
        if w_fd >= 0:
            os.close(w_fd)
        if readers:
            readers.kill()


@pytest.mark.relay
def test_relay_is_paced_by_its_subscribers(start_server):
    """An upstream sending numbered events as fast as its socket takes them: the relay stops
    reading it while the subscribers lag (its sends block), and every subscriber gets every
    event in order."""
    state = {"last": 0, "blocked": 0.0}
    go, done = threading.Event(), threading.Event()

    def handler(conn, req):
        conn.send_head(200, "OK", [("Content-Type", "text/event-stream")])
        go.wait(60)  # until every subscriber is there
        sock = conn.sock
        sock.settimeout(30)
        n = 0
        end = time.monotonic() + FLOW_SECONDS / 2
        while time.monotonic() < end:
            block = "".join("data: %d %s\n\n" % (i, PAD) for i in range(n + 1, n + 101))
            t = time.monotonic()
            sock.sendall(block.encode())
            state["blocked"] = max(state["blocked"], time.monotonic() - t)
            n += 100
        sock.sendall(b"data: END\n\n")
        state["last"] = n
        done.set()
        conn.wait_eof(60)

    up = Upstream(handler=handler).start()
    readers = None
    try:
        srv = start_server("--relay", "feed=" + up.url + "/s", *DEEP_BACKLOG)
        readers = Readers(srv.port, "/events/feed", 2, 20, reconnects=RESUMES)
        wait_subscribers(srv.port, 40)
        go.set()
        assert done.wait(FLOW_SECONDS + 60)
        results = readers.results()
        check_everyone_got_everything(results, state["last"])
        m = metric_values(srv.port)
        check_drops_were_exceptions(results, m)
        assert m['sse_publish_holds_total{cause="subscribers"}'] > 0
        assert state["blocked"] > 0.05, "the upstream was never pushed back"
    finally:
        if readers:
            readers.kill()
        up.stop()


def test_http_publisher_is_paced(start_server):
    """A publisher POSTing numbered events back to back on one keep-alive connection: every
    answer is 200 (some wait for the subscribers), every subscriber gets everything."""
    import socket

    from conftest import build_request, read_response

    srv = start_server("--publish-token", "secret", "--pace-high-water", "16k",
                       "--client-buffer", "16m", *DEEP_BACKLOG)
    readers = Readers(srv.port, "/events", 2, 20, reconnects=RESUMES)
    try:
        wait_subscribers(srv.port, 40)
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        n, buf = 0, b""
        end = time.monotonic() + FLOW_SECONDS / 2
        body = PAD * 200  # 18 KB events: more than the readers can take, so they lag
        while time.monotonic() < end:
            n += 1
            s.sendall(build_request("POST", "/publish", {"Authorization": "Bearer secret"},
                                    ("%d %s" % (n, body)).encode()))
            r, buf = read_response(s, timeout=30, buf=buf)
            assert r.status == 200, (r.raw_head, r.body)
        s.sendall(build_request("POST", "/publish", {"Authorization": "Bearer secret"}, b"END"))
        r, buf = read_response(s, timeout=30, buf=buf)
        assert r.status == 200
        s.close()
        results = readers.results()
        check_everyone_got_everything(results, n)
        m = metric_values(srv.port)
        check_drops_were_exceptions(results, m)
        assert m["sse_events_published_total"] == n + 1
        assert m['sse_publish_holds_total{cause="subscribers"}'] > 0
    finally:
        readers.kill()


def test_http_publish_held_too_long_gets_503(start_server):
    """Two subscribers that do not read, with 20 MB queued (one event, which both take at
    once), hold the publishers longer than a publish may wait (--publish-wait 500): that
    publish is answered 503 with Retry-After and not published. Once the watch sees they took
    nothing (a second into the hold) they are left behind, and publishing works again."""
    import socket

    srv = start_server("--publish-token", "secret", "--client-buffer", "64m",
                       "--max-event-bytes", "32m", "--publish-wait", "500")
    subs = []
    try:
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", srv.port))
            s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            subs.append(s)
        wait_subscribers(srv.port, 2)
        assert publish(srv.port, "y" * (20 << 20)).status == 200
        assert metric_values(srv.port)["sse_subscribers_lagging"] == 2
        t = time.monotonic()
        r = publish(srv.port, "late")
        waited = time.monotonic() - t
        assert (r.status, r.header("Retry-After")) == (503, "1"), (r.raw_head, r.body)
        assert r.body == b"subscribers are behind; the event was not published, send it again\n"
        assert waited >= 0.45, waited
        m = metric_values(srv.port)
        assert m["sse_publish_wait_timeouts_total"] == 1
        assert m["sse_events_published_total"] == 1
        deadline = time.monotonic() + 10  # the watch: a second of taking nothing
        while metric_values(srv.port)["sse_subscribers_left_behind"] < 2:
            assert time.monotonic() < deadline, "the stalled subscribers were not left behind"
            time.sleep(0.05)
        m = metric_values(srv.port)
        assert (m["sse_subscribers_left_behind"], m["sse_subscribers_lagging"]) == (2, 0)
        r = publish(srv.port, "again")
        assert r.status == 200, (r.raw_head, r.body)
        assert metric_values(srv.port)["sse_events_published_total"] == 2
    finally:
        for s in subs:
            s.close()
