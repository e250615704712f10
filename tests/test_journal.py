"""--journal: every event is in the file before it is acknowledged or delivered; the file is
replayed into the backlog at start (ids continue, Last-Event-ID works across restarts); a
torn end is dropped, damage elsewhere refuses to start; the file is compacted to the backlog;
the sync modes make the fdatasync() calls they promise; a failed write is a 503 and nobody
receives the event; and kill -9 at random moments never loses an acknowledged event."""

import os
import random
import re
import resource
import signal
import subprocess
import threading
import time
import zlib

import pytest

from conftest import (BINARY, Stream, metric_values, not_applicable, publish, request,
                      unavailable)

HEADER_RE = re.compile(rb"(sse-journal 2 (\d+) )([0-9a-f]{8})\n")


def pub(port, data, topic="news", event=None):
    r = publish(port, data.encode("utf-8") if isinstance(data, str) else data, topic=topic,
                event=event)
    assert r.status == 200, (r.status, r.body)
    return r.json()["id"]


def parse_journal(raw):
    """Checks the file's format independently of the server: header, then records whose
    length and CRC-32 (zlib's) match. Returns (floor, [(id, topic, bytes)])."""
    m = HEADER_RE.match(raw)
    assert m, raw[:80]
    assert "%08x" % zlib.crc32(m.group(1)) == m.group(3).decode()  # the header's own CRC
    at, records = m.end(), []
    while at < len(raw):
        nl = raw.index(b"\n", at)
        tag, id_, topic, length, crc = raw[at:nl].split(b" ")
        assert tag == b"#E"
        body = raw[nl + 1 : nl + 1 + int(length)]
        assert len(body) == int(length)
        assert "%08x" % zlib.crc32(b"#E %s %s %s " % (id_, topic, length) + body) == crc.decode()
        assert body.startswith(b"id: " + id_ + b"\n") and body.endswith(b"\n\n")
        records.append((id_.decode(), topic.decode(), body))
        at = nl + 1 + int(length)
    return int(m.group(2)), records


def read_events(st, n, timeout=5):
    """Reads n event blocks (skipping the prelude's position event); returns their bytes."""
    out = []
    while len(out) < n:
        block = st.read_block(timeout)
        if b"data" in block and b"\nevent: position\n" not in block:
            out.append(block)
    return out


@pytest.fixture
def journal(tmp_path):
    return str(tmp_path / "events.journal")


@pytest.mark.journal
@pytest.mark.valgrind
def test_format_is_the_wire_bytes_with_length_and_crc(start_server, journal):
    srv = start_server("--publish-token", "secret", "--journal", journal)
    st = Stream(srv.port, "/events?topic=news&topic=other")
    try:
        assert st.read_block() == b"retry: 3000\n\n"
        first = st.read_block()
        payloads = [("one", None, "news"), ("two\nlines\r\nand CR\r", "update", "other"),
                    ("h\u00e9llo \U0001F600", "news.v2", "news"), ("", None, "news")]
        ids = [pub(srv.port, d, topic=t, event=e) for d, e, t in payloads]
        got = read_events(st, len(ids))
    finally:
        st.close()
    with open(journal, "rb") as f:
        floor, records = parse_journal(f.read())
    # The header holds the id before any event.
    assert first == b"id: %d\nevent: position\ndata:\n\n" % floor
    assert [r[0] for r in records] == ids
    assert [r[1] for r in records] == [t for _, _, t in payloads]
    assert [r[2] for r in records] == got  # exactly what subscribers received
    assert os.stat(journal).st_mode & 0o777 == 0o600


@pytest.mark.journal
@pytest.mark.valgrind
def test_restart_replays_and_ids_continue(start_server, journal):
    srv = start_server("--publish-token", "secret", "--journal", journal)
    ids = [pub(srv.port, "event %d" % i) for i in range(5)]
    srv.stop()
    assert srv.proc.returncode == 0
    srv = start_server("--publish-token", "secret", "--journal", journal)
    srv.wait_for_line(r"journal .*: \d+ bytes, 5 events back in the backlog")
    st = Stream(srv.port, "/events/news", headers={"Last-Event-ID": ids[1]})
    try:
        assert st.read_block() == b"retry: 3000\n\n"
        assert read_events(st, 3) == [
            b"id: %s\ndata: event %d\n\n" % (ids[i].encode(), i) for i in (2, 3, 4)
        ]
        new = pub(srv.port, "after the restart")
        assert int(new) > int(ids[-1])
        assert read_events(st, 1) == [b"id: %s\ndata: after the restart\n\n" % new.encode()]
    finally:
        st.close()
    # A new subscriber starts at the current id; the oldest journaled id replays everything.
    st = Stream(srv.port, "/events/news")
    try:
        st.read_block()
        assert st.read_block() == b"id: %s\nevent: position\ndata:\n\n" % new.encode()
    finally:
        st.close()
    st = Stream(srv.port, "/events/news", headers={"Last-Event-ID": ids[0]})
    try:
        st.read_block()
        assert len(read_events(st, 5)) == 5
        assert metric_values(srv.port)["sse_replays_total"] == 2
    finally:
        st.close()


def test_without_journal_a_restart_resets(start_server):
    srv = start_server("--publish-token", "secret")
    old = pub(srv.port, "x")
    srv.stop()
    srv = start_server("--publish-token", "secret")
    st = Stream(srv.port, "/events/news", headers={"Last-Event-ID": old})
    try:
        st.read_block()
        assert b"event: reset\n" in st.read_block()
    finally:
        st.close()


def write_journal(start_server, journal, n=3):
    srv = start_server("--publish-token", "secret", "--journal", journal)
    ids = [pub(srv.port, "event %d\nsecond line" % i) for i in range(n)]
    srv.stop()
    with open(journal, "rb") as f:
        return ids, f.read()


@pytest.mark.journal
@pytest.mark.valgrind
@pytest.mark.parametrize("cut", ["in the record line", "in the bytes", "bad crc at the end"])
def test_torn_last_record_is_dropped(start_server, journal, cut):
    ids, raw = write_journal(start_server, journal)
    _, records = parse_journal(raw)
    last = raw.rindex(b"#E ")
    if cut == "in the record line":
        torn = raw[: last + 10]
    elif cut == "in the bytes":
        torn = raw[:-7]
    else:  # the length is all there but the bytes are not what was written (zeroed pages)
        torn = raw[:-12] + b"\0" * 12
    with open(journal, "wb") as f:
        f.write(torn)
    srv = start_server("--publish-token", "secret", "--journal", journal)
    srv.wait_for_line(r"journal .*: dropped a torn record at byte %d \(%d bytes\)"
                      % (last, len(torn) - last))
    srv.wait_for_line(r"2 events back in the backlog")
    with open(journal, "rb") as f:
        assert f.read() == raw[:last]  # cut back to the last whole record
    st = Stream(srv.port, "/events/news", headers={"Last-Event-ID": ids[0]})
    try:
        st.read_block()
        assert read_events(st, 1) == [records[1][2]]
        new = pub(srv.port, "appended after the cut")
        assert read_events(st, 1)[0].startswith(b"id: %s\n" % new.encode())
        assert st.nothing_pending(0.2)
    finally:
        st.close()
    srv.stop()
    with open(journal, "rb") as f:
        _, records = parse_journal(f.read())
    assert [r[0] for r in records] == ids[:2] + [new]


def start_failing(journal, *args):
    r = subprocess.run([BINARY, "--listen", "127.0.0.1:0", "--journal", journal, *args],
                       capture_output=True, timeout=10)
    return r.returncode, r.stderr.decode()


@pytest.mark.journal
def test_damage_before_valid_records_refuses_to_start(start_server, journal):
    ids, raw = write_journal(start_server, journal)
    damaged = raw.replace(b"data: event 0", b"data: evil! 0")
    with open(journal, "wb") as f:
        f.write(damaged)
    code, err = start_failing(journal)
    assert code == 1
    assert err == ("sse-server: journal %s: a damaged record is followed by valid ones\n"
                   % journal)
    with open(journal, "rb") as f:
        assert f.read() == damaged  # left for a person to look at


@pytest.mark.parametrize("content", [b"hello world\n" * 10, b"sse-journal 3 5\n",
                                     b"sse-journal 2 5\n", b"\x00" * 100])
@pytest.mark.journal
def test_not_a_journal_refuses_to_start(journal, content):
    with open(journal, "wb") as f:
        f.write(content)
    code, err = start_failing(journal)
    assert code == 1
    assert err == "sse-server: journal %s: not an sse-server journal (version 1 or 2)\n" % journal


@pytest.mark.journal
def test_a_record_that_is_not_a_canonical_event_is_refused(start_server, journal):
    """A record whose CRC matches but whose bytes are not what the formatter makes (a
    forged file) is never served: alone at the end it is dropped as torn."""
    ids, raw = write_journal(start_server, journal, n=1)
    body = b"id: 99999999999999999\ndata: forged\nretry: 1\n\n"
    line = b"#E 99999999999999999 news %d " % len(body)
    record = line + b"%08x\n" % zlib.crc32(line + body) + body
    with open(journal, "wb") as f:
        f.write(raw + record)
    srv = start_server("--journal", journal)
    srv.wait_for_line(r"dropped a torn record at byte %d" % len(raw))
    srv.wait_for_line(r"1 events back in the backlog")


@pytest.mark.journal
def test_one_server_per_journal(start_server, journal):
    start_server("--journal", journal)
    code, err = start_failing(journal)
    assert code == 1
    assert err == "sse-server: journal %s: in use by another process\n" % journal


@pytest.mark.journal
def test_missing_directory_is_a_clear_error(tmp_path):
    path = str(tmp_path / "no" / "such" / "dir" / "j")
    code, err = start_failing(path)
    assert code == 1
    assert err == "sse-server: journal %s: No such file or directory\n" % path


@pytest.mark.journal
@pytest.mark.valgrind
def test_compaction_keeps_the_backlog_and_bounds_the_file(start_server, journal):
    srv = start_server("--publish-token", "secret", "--journal", journal, "--backlog", "5",
                       "--journal-max-bytes", "4096")
    ids = []
    sizes = []
    for i in range(300):
        ids.append(pub(srv.port, "event %d " % i + "x" * 100))
        sizes.append(os.path.getsize(journal))
    m = metric_values(srv.port)
    assert m["sse_journal_compactions_total"] >= 5
    assert max(sizes) <= 2 * 4096 + 200
    assert m["sse_journal_bytes"] == os.path.getsize(journal)
    srv.wait_for_line(r"journal .*: compacted to \d+ bytes \(5 events\)")
    srv.stop()
    with open(journal, "rb") as f:
        floor, records = parse_journal(f.read())
    assert [r[0] for r in records] == ids[-len(records):]
    assert len(records) >= 5
    assert int(records[0][0]) <= floor <= int(records[-1][0])  # ids continue above it
    assert not os.path.exists(journal + ".new")
    srv = start_server("--publish-token", "secret", "--journal", journal, "--backlog", "5")
    st = Stream(srv.port, "/events/news", headers={"Last-Event-ID": ids[-4]})
    try:
        st.read_block()
        assert [b.split(b"\n")[0] for b in read_events(st, 3)] == [
            b"id: " + i.encode() for i in ids[-3:]
        ]
    finally:
        st.close()
    st = Stream(srv.port, "/events/news", headers={"Last-Event-ID": ids[0]})
    try:
        st.read_block()
        assert b"event: reset\n" in st.read_block()  # compacted away: said, not pretended
    finally:
        st.close()


def count_fdatasync(start_server, tmp_path, mode, n=30):
    strace = subprocess.run(["which", "strace"], capture_output=True).stdout.strip()
    if not strace:
        unavailable("strace is not installed")
    trace = str(tmp_path / ("trace-" + mode))
    journal = str(tmp_path / ("j-" + mode))
    srv = start_server("--publish-token", "secret", "--journal", journal, "--journal-sync", mode,
                       wrapper=[strace.decode(), "-f", "-qq", "-e", "trace=fdatasync", "-o", trace])
    for i in range(n):
        pub(srv.port, "e%d" % i)
    time.sleep(1.5)  # a batch sync falls due within a second
    pub(srv.port, "last")
    with open(trace) as f:
        return f.read().count("fdatasync(")


@pytest.mark.journal
def test_sync_modes_make_the_promised_fdatasync_calls(start_server, tmp_path):
    with open(BINARY, "rb") as f:
        if b"__asan_init" in f.read():
            not_applicable("a sanitizer build runs too slowly under strace for the batch "
                           "count to mean anything")
    always = count_fdatasync(start_server, tmp_path, "always")
    batch = count_fdatasync(start_server, tmp_path, "batch")
    none = count_fdatasync(start_server, tmp_path, "none")
    assert always >= 31 + 1  # every publish, and the new file's header
    assert 2 <= batch <= 5  # the header, then about one per second of writes
    assert none == 0


@pytest.mark.journal
@pytest.mark.valgrind
def test_failed_write_is_503_and_nobody_receives_it(start_server, journal):
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    srv = start_server("--publish-token", "secret", "--journal", journal,
                       preexec_fn=limit_file_size)
    st = Stream(srv.port, "/events/news")
    try:
        st.read_block()
        st.read_block()
        acked = []
        for i in range(100):
            r = publish(srv.port, ("event %d " % i + "y" * 200).encode(), topic="news")
            if r.status != 200:
                break
            acked.append(r.json()["id"])
        assert r.status == 503, r
        assert r.body == b"the event could not be stored; it was not published\n"
        assert 3 <= len(acked) < 10
        assert len(read_events(st, len(acked))) == len(acked)
        assert st.nothing_pending(0.3)  # the refused event went to nobody
        assert publish(srv.port, b"again " + b"y" * 300, topic="news").status == 503
        assert metric_values(srv.port)["sse_journal_errors_total"] == 2
        r = request(srv.port, "GET", "/healthz")  # the file cannot grow: said, not hidden
        assert (r.status, r.body) == (503, b"journal cannot write\n")
    finally:
        st.close()
    srv.stop()
    with open(journal, "rb") as f:
        _, records = parse_journal(f.read())  # no torn record left behind
    assert [r[0] for r in records] == acked


def strace_path():
    path = subprocess.run(["which", "strace"], capture_output=True).stdout.strip().decode()
    if not path:
        unavailable("strace is not installed")
    return path


def start_faulty(start_server, tmp_path, journal, mode, *inject, trace="fdatasync", extra=()):
    """A journaling server under strace, which makes the syscalls in inject fail
    (strace's -e inject=...), and writes each traced call, timestamped, to tmp_path/trace."""
    args = [strace_path(), "-f", "-qq", "-ttt", "-e", "trace=" + trace]
    for fault in inject:
        args += ["-e", "inject=" + fault]
    args += ["-o", str(tmp_path / "trace")]
    return start_server("--publish-token", "secret", "--journal", journal, "--journal-sync",
                        mode, *extra, wrapper=args)


def syncs_traced(tmp_path):
    """(time, result) of each fdatasync() in the trace."""
    with open(tmp_path / "trace") as f:
        return [(float(m.group(1)), m.group(2)) for m in
                re.finditer(r"(\d+\.\d+) fdatasync\(\d+\)\s+= (-?\d+)", f.read())]


def journal_ids(journal):
    with open(journal, "rb") as f:
        return [r[0] for r in parse_journal(f.read())[1]]


@pytest.mark.journal
def test_failed_sync_with_always_is_503_and_leaves_no_record(start_server, tmp_path, journal):
    """Syncs 1 (the new file's header), 2 and 3 work, 4 and 5 fail, then they work again.
    Linux reports a failed fdatasync() once and may have dropped the dirty pages, so an
    event whose sync failed is neither acknowledged nor left in the file to come back at
    the next start."""
    srv = start_faulty(start_server, tmp_path, journal, "always",
                       "fdatasync:error=EIO:when=4..5")
    st = Stream(srv.port, "/events/news")
    try:
        st.read_block()
        st.read_block()
        answers = [publish(srv.port, b"e%d" % i, topic="news") for i in range(5)]
        assert [r.status for r in answers] == [200, 200, 503, 503, 200]
        assert answers[2].body == b"the event could not be stored; it was not published\n"
        acked = [answers[i].json()["id"] for i in (0, 1, 4)]
        got = read_events(st, 3)
        assert [b.split(b"\n")[0] for b in got] == [b"id: " + i.encode() for i in acked]
        assert st.nothing_pending(0.3)
        m = metric_values(srv.port)
        assert m["sse_journal_errors_total"] == 2
        assert healthy_ok(srv.port)
        srv.wait_for_line(r"fdatasync works again")
    finally:
        st.close()
    srv.stop()
    log = srv.stderr_text()
    assert log.count("fdatasync: Input/output error") == 1, log  # once per streak
    assert [r for _, r in syncs_traced(tmp_path)] == ["0", "0", "0", "-1", "-1", "0"]
    assert journal_ids(journal) == acked  # the failed records were cut off


@pytest.mark.journal
def test_a_record_that_cannot_be_cut_off_stops_publishing(start_server, tmp_path, journal):
    """Sync 4 fails and so does cutting its record off: appending after that record would
    hide it under valid ones (a restart would refuse the file as damaged), so nothing more
    is published until a restart, and /healthz says so."""
    srv = start_faulty(start_server, tmp_path, journal, "always",
                       "fdatasync:error=EIO:when=4", "ftruncate:error=EIO",
                       trace="fdatasync,ftruncate")
    answers = [publish(srv.port, b"e%d" % i, topic="news") for i in range(4)]
    assert [r.status for r in answers] == [200, 200, 503, 503]
    r = request(srv.port, "GET", "/healthz")
    assert (r.status, r.body) == (503, b"journal unusable\n")
    srv.wait_for_line(r"cannot cut back a failed record: Input/output error; refusing to "
                      r"publish until restart")
    srv.stop()
    srv = start_server("--publish-token", "secret", "--journal", journal)
    assert healthy_ok(srv.port)  # the restart reads the file back, the last record whole
    assert journal_ids(journal)[:2] == [answers[0].json()["id"], answers[1].json()["id"]]
    assert publish(srv.port, b"after", topic="news").status == 200


@pytest.mark.journal
def test_failing_syncs_in_batch_mode_back_off(start_server, tmp_path, journal):
    """Syncs 2 to 4 fail. The events were acknowledged already (batch mode's trade), so the
    server tries again a period later, not in a loop that would spin the CPU and flood
    the log, and says once that syncs fail and once that they work again."""
    srv = start_faulty(start_server, tmp_path, journal, "batch", "fdatasync:error=EIO:when=2..4")
    assert publish(srv.port, b"one", topic="news").status == 200
    srv.wait_for_line(r"fdatasync works again", timeout=15)
    assert publish(srv.port, b"two", topic="news").status == 200  # publishing never stopped
    m = metric_values(srv.port)
    assert (m["sse_journal_errors_total"], m["sse_journal_syncs_total"]) == (3, 1)
    srv.stop()
    log = srv.stderr_text()
    assert log.count("fdatasync: Input/output error; trying again every second") == 1, log
    syncs = syncs_traced(tmp_path)
    assert [r for _, r in syncs[:5]] == ["0", "-1", "-1", "-1", "0"]
    gaps = [b[0] - a[0] for a, b in zip(syncs[1:5], syncs[2:5])]
    assert min(gaps) >= 0.9, gaps  # one attempt per period (lower bound: noise only adds)


@pytest.mark.journal
def test_a_failing_compaction_is_not_retried_at_every_publish(start_server, tmp_path, journal):
    """Every rename() fails, so no compaction completes: the server keeps appending (the
    old file stays whole) and tries again only once the file has doubled, not by copying
    the backlog at every publish."""
    srv = start_faulty(start_server, tmp_path, journal, "none", "rename:error=EACCES",
                       trace="rename", extra=("--backlog", "5", "--journal-max-bytes", "4096"))
    ids = [pub(srv.port, "event %d " % i + "x" * 100) for i in range(300)]
    m = metric_values(srv.port)
    assert m["sse_journal_compactions_total"] == 0
    assert 1 <= m["sse_journal_errors_total"] <= 5, m  # 4 KiB, then 8, 16, 32: not 270
    srv.stop()
    assert not os.path.exists(journal + ".new")
    assert journal_ids(journal) == ids  # every event, in the file that stayed in use


@pytest.mark.journal
def test_a_new_journal_is_durable_with_its_directory(start_server, tmp_path):
    """fdatasync() makes the file's bytes durable, not the directory entry that finds it:
    a new journal's directory is synced too (except with --journal-sync none)."""
    for mode, synced in (("batch", True), ("none", False)):
        sub = tmp_path / mode
        sub.mkdir()
        srv = start_faulty(start_server, sub, str(sub / "journal"), mode,
                           trace="openat,fsync,fdatasync")
        srv.stop()
        with open(sub / "trace") as f:
            trace = f.read()
        m = re.search(r'openat\(AT_FDCWD, "%s", O_RDONLY\|O_CLOEXEC\|O_DIRECTORY\) = (\d+)'
                      % re.escape(str(sub)), trace)
        fsynced = bool(m) and re.search(r"fsync\(%s\)\s+= 0" % m.group(1), trace) is not None
        assert fsynced == synced, trace


@pytest.mark.journal
def test_a_backlog_larger_than_the_bound_doubles_between_compactions(start_server, journal):
    """The documented bound: the file stays under the larger of --journal-max-bytes and
    twice the backlog's size, plus one event, and a backlog larger than the bound does
    not make every publish rewrite the file."""
    srv = start_server("--publish-token", "secret", "--journal", journal, "--backlog", "40",
                       "--journal-max-bytes", "4096")
    record = 0
    sizes = []
    for i in range(240):
        pub(srv.port, "event %03d " % i + "z" * 500)
        sizes.append(os.path.getsize(journal))
        record = max(record, sizes[-1] - sizes[-2] if len(sizes) > 1 else 0)
    m = metric_values(srv.port)
    backlog_bytes = 40 * record
    assert max(sizes) <= max(4096, 2 * backlog_bytes) + record
    assert m["sse_journal_compactions_total"] <= 240 // 40 + 4  # 8, 16, 32 events, then 40s
    assert m["sse_journal_compactions_total"] >= 240 // 40


def healthy_ok(port):
    return request(port, "GET", "/healthz").status == 200


# ---- kill -9 at random moments ------------------------------------------------------------


class Follower(threading.Thread):
    """A subscriber that reconnects with its last id whenever its connection ends (also
    while the server is down), collecting (id, data) of every event."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.events, self.last_id = port, [], None
        self.running = True
        self.reconnects = 0
        self.failure = None  # what made take() fail: the test asserts it stayed None

    def run(self):
        try:
            self.follow()
        except BaseException as e:  # a failed check in take(): kept for the test to raise
            self.failure = e
            self.running = False

    def follow(self):
        import socket

        from conftest import build_request, recv_until

        while self.running:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError:
                time.sleep(0.05)  # the server is down: poll for it to come back
                continue
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                self.read(sock, build_request("GET", "/events/news", headers), recv_until)
            finally:
                sock.close()
            self.reconnects += 1

    def read(self, sock, req, recv_until):
        """One connection. recv_until's AssertionError (closed, timed out) and socket errors
        end it (the server was killed); take()'s failed checks are not caught here."""
        try:
            sock.sendall(req)
            _, buf = recv_until(sock, b"\r\n\r\n", 2)
        except (OSError, AssertionError):
            return
        while self.running:
            try:
                block, buf = recv_until(sock, b"\n\n", 30, buf)
            except (OSError, AssertionError):
                return
            self.take(block)

    def take(self, block):
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"event" in fields:
            assert fields[b"event"] != b"reset", block  # the journal makes every replay exact
        if b"id" in fields:
            self.last_id = fields[b"id"].decode()
        if b"data" in fields:
            self.events.append((fields[b"id"].decode(), fields[b"data"].decode()))


def read_replay(port, after, until_id):
    """(id, data) of every event after id `after`, up to and including id until_id."""
    st = Stream(port, "/events/news", headers={"Last-Event-ID": after})
    try:
        raw = st.read_bytes_until(b"id: %s\n" % until_id.encode(), timeout=20)
        raw += st.read_bytes_until(b"\n\n")
    finally:
        st.close()
    seen = []
    for block in raw.split(b"\n\n")[1:]:  # after the retry: line
        if not block:
            continue
        lines = dict(l.split(b": ", 1) for l in block.split(b"\n") if b": " in l)
        assert lines.get(b"event") != b"reset", block
        seen.append((lines[b"id"].decode(), lines[b"data"].decode()))
    return seen


@pytest.mark.journal
def test_kill_9_at_random_moments_loses_no_acknowledged_event(start_server, journal):
    rng = random.Random(9)
    args = ("--publish-token", "secret", "--journal", journal, "--backlog", "100000",
            "--retry", "100")
    srv = start_server(*args)
    port = srv.port
    st = Stream(port, "/events/news")
    st.read_block()
    base = st.read_block().split(b"\n")[0].split(b" ")[1].decode()  # the id before any event
    st.close()
    follower = Follower(port)
    follower.last_id = base  # from the first event on, however late its thread connects
    follower.start()
    acked, seq, rounds = [], 0, 0
    deadline = time.monotonic() + 40
    while rounds < 30 and time.monotonic() < deadline:
        killer = threading.Timer(rng.uniform(0.05, 0.6), srv.signal, (signal.SIGKILL,))
        killer.start()
        while True:
            try:
                r = publish(srv.port, b"n-%d" % seq, topic="news")
            except (OSError, AssertionError):
                break  # killed mid-request: unacknowledged, may or may not be there
            assert r.status == 200, r
            acked.append((r.json()["id"], "n-%d" % seq))
            seq += 1
            time.sleep(0.002)
        seq += 1
        killer.join()
        srv.wait(timeout=10)
        rounds += 1
        srv = start_server("--listen", "127.0.0.1:%d" % port, *args)
        # Every acknowledged event is there, once, in order, whatever else is.
        seen = read_replay(port, base, acked[-1][0])
        ids = [int(i) for i, _ in seen]
        assert ids == sorted(set(ids)), "duplicates or disorder"
        assert [e for e in seen if e in set(acked)] == acked, "an acknowledged event is missing"
    final = pub(port, "final")
    seen = read_replay(port, base, final)
    wait_deadline = time.monotonic() + 15
    while (not follower.events or follower.events[-1][0] != final) and \
            follower.failure is None and time.monotonic() < wait_deadline:
        time.sleep(0.05)
    follower.running = False
    assert follower.failure is None, "the follower: %r" % follower.failure
    assert len(acked) > 100 and rounds >= 10, (len(acked), rounds)
    # The follower reconnected with its last id after every kill and ends with the whole
    # sequence: everything the server holds, each exactly once, in order.
    assert follower.events == seen
    assert follower.reconnects >= rounds


# ---- the id space and the header's CRC ----------------------------------------------------


def header_v2(floor):
    line = b"sse-journal 2 %d " % floor
    return line + b"%08x\n" % zlib.crc32(line)


@pytest.mark.journal
@pytest.mark.parametrize("version", [1, 2])
def test_ids_never_wrap_past_2_64(start_server, journal, version):
    """A journal whose floor is 2^64 - 3: two publishes take the last two ids, then the id
    space is exhausted: 503 (never id 0), /healthz says so, and the file still starts."""
    top = 2**64 - 1
    with open(journal, "wb") as f:
        f.write(header_v2(top - 2) if version == 2 else b"sse-journal 1 %d\n" % (top - 2))
    srv = start_server("--publish-token", "secret", "--journal", journal)
    st = Stream(srv.port, "/events/news")
    try:
        st.read_block()
        assert st.read_block().startswith(b"id: %d\n" % (top - 2))
        assert [pub(srv.port, "e%d" % i) for i in range(2)] == [str(top - 1), str(top)]
        for _ in range(3):
            r = publish(srv.port, b"one too many", topic="news")
            assert (r.status, r.body) == (503, b"id space exhausted: the last id is "
                                               b"18446744073709551615; it was not published\n")
        r = request(srv.port, "GET", "/healthz")
        assert (r.status, r.body) == (503, b"id space exhausted\n")
        assert read_events(st, 2) == [b"id: %d\ndata: e%d\n\n" % (top - 1 + i, i)
                                      for i in range(2)]
        assert st.nothing_pending(0.3)
    finally:
        st.close()
    srv.stop()
    assert journal_ids(journal) == [str(top - 1), str(top)]
    srv = start_server("--publish-token", "secret", "--journal", journal)
    srv.wait_for_line(r"2 events back in the backlog")  # not refused at the next start
    assert publish(srv.port, b"still full", topic="news").status == 503


@pytest.mark.journal
@pytest.mark.parametrize("how", ["floor changed", "crc changed", "crc missing"])
def test_a_header_that_fails_its_crc_is_refused(start_server, journal, how):
    ids, raw = write_journal(start_server, journal)
    header, rest = raw.split(b"\n", 1)
    magic, floor, crc = header.split(b" ")[:2], header.split(b" ")[2], header.split(b" ")[3]
    if how == "floor changed":
        header = b" ".join(magic + [b"18446744073709551614", crc])
    elif how == "crc changed":
        header = b" ".join(magic + [floor, b"%08x" % (int(crc, 16) ^ 1)])
    else:
        header = b" ".join(magic + [floor])
    damaged = header + b"\n" + rest
    with open(journal, "wb") as f:
        f.write(damaged)
    code, err = start_failing(journal)
    assert code == 1
    if how == "crc missing":
        assert err == ("sse-server: journal %s: not an sse-server journal (version 1 or 2)\n"
                       % journal)
    else:
        assert err == ("sse-server: journal %s: the header fails its CRC check (damaged or "
                       "edited): refusing to guess where ids go on\n" % journal)
    with open(journal, "rb") as f:
        assert f.read() == damaged  # left for a person to look at


@pytest.mark.journal
def test_a_version_1_journal_is_read_and_rewritten_with_a_checked_header(start_server, journal):
    """Files written before the header had a CRC still load (ids go on above them), and are
    compacted at once into version 2."""
    ids, raw = write_journal(start_server, journal)
    header, rest = raw.split(b"\n", 1)
    floor = int(header.split(b" ")[2])
    with open(journal, "wb") as f:
        f.write(b"sse-journal 1 %d\n" % floor + rest)
    srv = start_server("--publish-token", "secret", "--journal", journal)
    srv.wait_for_line(r"3 events back in the backlog")
    srv.wait_for_line(r"compacted to \d+ bytes \(3 events\)")
    assert journal_ids(journal) == ids  # parse_journal: a version 2 header with its CRC
    new = pub(srv.port, "after the upgrade")
    assert int(new) > int(ids[-1])
    st = Stream(srv.port, "/events/news", headers={"Last-Event-ID": ids[0]})
    try:
        st.read_block()
        assert [b.split(b"\n")[0] for b in read_events(st, 3)] == [
            b"id: " + i.encode() for i in ids[1:] + [new]]
    finally:
        st.close()


@pytest.mark.journal
def test_a_full_disk_is_reported_by_healthz_until_writing_works(start_server, tmp_path, journal):
    """The second event's write fails with ENOSPC: the publish is a 503, and /healthz says
    "journal cannot write" (not 200) until a probe (fallocate, once a second, the first two
    failing too) finds space again; then publishing works."""
    srv = start_faulty(start_server, tmp_path, journal, "none", "writev:error=ENOSPC:when=3",
                       "fallocate:error=ENOSPC:when=1..2", trace="writev,fallocate")
    assert publish(srv.port, b"one", topic="news").status == 200
    r = publish(srv.port, b"two", topic="news")
    assert (r.status, r.body) == (503, b"the event could not be stored; it was not published\n")
    r = request(srv.port, "GET", "/healthz")
    assert (r.status, r.body) == (503, b"journal cannot write\n")
    srv.wait_for_line(r"writing works again", timeout=15)
    assert healthy_ok(srv.port)
    assert publish(srv.port, b"three", topic="news").status == 200
    with open(tmp_path / "trace") as f:
        probes = re.findall(r"fallocate\(\d+, FALLOC_FL_KEEP_SIZE, \d+, \d+\)\s+= (-?\d+)",
                            f.read())
    assert probes == ["-1", "-1", "0"], probes


@pytest.mark.journal
def test_stdin_stops_at_the_end_of_the_id_space(start_server, journal):
    """The input path checks the id space as publishing over HTTP does: the last id taken,
    the next lines are refused with a log line, never given id 0."""
    top = 2**64 - 1
    with open(journal, "wb") as f:
        f.write(b"sse-journal 1 %d\n" % (top - 1))  # version 1: today's reader too
    srv = start_server("--stdin", "--journal", journal, stdin=subprocess.PIPE)
    st = Stream(srv.port, "/events/default")
    try:
        st.read_block()
        st.read_block()
        srv.proc.stdin.write(b"last\nnone left\nnor here\n")
        srv.proc.stdin.flush()
        assert read_events(st, 1) == [b"id: %d\ndata: last\n\n" % top]
        srv.wait_for_line(r"input: could not publish: id space exhausted")
        assert st.nothing_pending(0.3)
    finally:
        st.close()
    srv.stop()
    assert journal_ids(journal) == [str(top)]
    assert srv.stderr_text().count("input: could not publish: id space exhausted") == 2
