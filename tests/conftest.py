"""Shared fixtures for the black-box tests: start the real sse-server binary on port 0 and
talk to it over plain sockets. Only the standard library and pytest are used."""

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = os.environ.get("SSE_SERVER_BIN", os.path.join(HERE, "..", "sse-server"))
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
# SSE_SERVER_WRAPPER="valgrind ..." runs every server under that command (make valgrind). A
# wrapped server gets SLOW times longer to start and to exit, and must exit 0 on SIGTERM: the
# wrapper's error exit status (valgrind's --error-exitcode) fails the test.
WRAPPER = shlex.split(os.environ.get("SSE_SERVER_WRAPPER", ""))
SLOW = 6 if WRAPPER else 1


class Server:
    """One running sse-server process. Its stderr is collected in the background."""

    def __init__(self, args, stdin=None, env=None, preexec_fn=None, wrapper=()):
        self.args = list(args)
        self.wrapper = list(wrapper)
        if env is None:  # tokens in the caller's environment would change what is tested
            env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
        self.proc = subprocess.Popen(
            [*(wrapper or WRAPPER), BINARY, "--listen", "127.0.0.1:0", *self.args],
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=preexec_fn,
        )
        self.pid = self.proc.pid
        self.lines = []
        self.terminated = False  # stopped by SIGTERM from stop(), not killed
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        try:
            line = self.wait_for_line(r"listening on http://", timeout=10 * SLOW)
        except AssertionError:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise
        m = re.search(r"listening on http://(\S+):(\d+)/", line)
        assert m, line
        self.host = m.group(1)
        self.port = int(m.group(2))
        self.url = "http://127.0.0.1:%d" % self.port

    def _collect(self):
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, pattern, timeout=10, start=0):
        """Returns the first stderr line (from index start) matching the regex pattern."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        "no stderr line matching %r; got:\n%s" % (pattern, "\n".join(self.lines))
                    )
                self._cond.wait(min(left, 0.1))

    def stderr_text(self):
        with self._cond:
            return "\n".join(self.lines)

    def cpu_seconds(self):
        """User plus system CPU time the process has used so far."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_bytes(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout=5):
        return self.proc.wait(timeout=timeout * SLOW)

    def server_pid(self):
        """The sse-server process: under a wrapper that forks (strace) its child."""
        if self.wrapper:
            try:
                with open("/proc/%d/task/%d/children" % (self.pid, self.pid)) as f:
                    children = [int(p) for p in f.read().split()]
                if children:
                    return children[0]
            except OSError:
                pass
        return self.pid

    def stop(self):
        """SIGTERM (so a sanitizer build gets to check for leaks at exit), then SIGKILL.
        Under a wrapper the server itself is signalled: SIGTERM to strace would detach it
        and leave the server running."""
        if self.proc.poll() is None:
            target = self.server_pid()
            os.kill(target, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5 * SLOW)
                self.terminated = True
            except subprocess.TimeoutExpired:
                for pid in {target, self.pid}:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


# ---- skips: SSE_TESTS_STRICT=1 (CI) makes a skip a failure ----------------------------------
# In CI `make test` has installed every tool and package the tests use, so a test that cannot
# run there has found a fault, not a missing tool. A test skips in one of two ways:
# - unavailable(why): something it needs is missing here (a tool, a package, a privilege, a
#   kernel behaviour CI has): a skip on a developer's machine, a failure under strict;
# - not_applicable(why), or a skipif whose reason starts with "not applicable: ": the test
#   cannot apply to this build or machine even when everything is installed (no IPv6 loopback;
#   a sanitizer build, which makes system calls and runs at speeds of its own). These stay
#   skips under strict, with the reason shown.
# Under strict, pytest_runtest_makereport turns any other skip into a failure.
STRICT = os.environ.get("SSE_TESTS_STRICT") == "1"
NOT_APPLICABLE = "not applicable: "


def unavailable(why):
    """Something the test needs is missing here: skip, or fail under SSE_TESTS_STRICT=1."""
    if STRICT:
        pytest.fail(why + " (SSE_TESTS_STRICT=1)")
    pytest.skip(why)


def not_applicable(why):
    """The test cannot apply to this build or machine (see above): skip, also under strict."""
    pytest.skip(NOT_APPLICABLE + why)


def skip_reason(report):
    """The reason a skipped report gives, without pytest's "Skipped: " prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


# The markers (the settings a pytest.ini would hold, kept here so the top level stays small).
# A marker not listed is an error (--strict-markers), so a typo cannot quietly select nothing.
MARKERS = {
    "valgrind": "the representative subset `make valgrind` runs under valgrind",
    "proxy": "needs the reverse proxy (--proxy; SSE_ENABLE_PROXY)",
    "relay": "needs relays (--relay; SSE_ENABLE_PROXY)",
    "journal": "needs the journal (--journal; SSE_ENABLE_JOURNAL)",
    "redis": "needs Redis (--redis; SSE_ENABLE_REDIS)",
    "auth": "needs authorization (--jwt-secret, --auth-url, --public; SSE_ENABLE_AUTH)",
}


def pytest_configure(config):
    config.option.strict_markers = True
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", "%s: %s" % (name, meaning))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under SSE_TESTS_STRICT=1, a skip that does not say it is not applicable fails."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if not reason.startswith(NOT_APPLICABLE):
            report.outcome = "failed"
            report.longrepr = ("skipped under SSE_TESTS_STRICT=1, where every test must run "
                               "unless it is not applicable: %s" % reason)


@pytest.fixture
def start_server():
    """start_server(*args, stdin=None) -> Server; every server is killed (by PID) afterwards
    and its stderr checked for sanitizer reports."""
    servers = []

    def start(*args, stdin=None, env=None, preexec_fn=None, wrapper=()):
        """wrapper: a command to run the binary under (strace, say)."""
        s = Server(args, stdin=stdin, env=env, preexec_fn=preexec_fn, wrapper=wrapper)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
    for s in servers:
        text = s.stderr_text()
        for marker in SANITIZER_MARKERS:
            assert marker not in text, "sanitizer report from sse-server:\n" + text
        if WRAPPER and s.terminated:
            assert s.proc.returncode == 0, "sse-server under %s exited %d:\n%s" % (
                WRAPPER[0], s.proc.returncode, text)


@pytest.fixture
def server(start_server):
    """A server with default options plus a publish token 'secret'."""
    return start_server("--publish-token", "secret")


# ---- raw HTTP helpers --------------------------------------------------------------------


def connect(port, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Response:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) as sent
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        import json

        return json.loads(self.body)


def recv_until(sock, marker, timeout=5, buf=b""):
    """Reads until marker is in the data; returns (data up to and including marker, rest)."""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for %r; have %r" % (marker, buf[-300:]))
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError("timed out waiting for %r; have %r" % (marker, buf[-300:]))
        if not chunk:
            raise AssertionError("connection closed waiting for %r; have %r" % (marker, buf[-300:]))
        buf += chunk
    i = buf.index(marker) + len(marker)
    return buf[:i], buf[i:]


def recv_all(sock, timeout=5):
    """Reads until the peer closes; returns everything."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for close; have %r" % data[-300:])
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            raise AssertionError("timed out waiting for close; have %r" % data[-300:])
        if not chunk:
            return data
        data += chunk


def parse_head(raw_head):
    lines = raw_head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)", lines[0])
    assert m, lines[0]
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
    return int(m.group(1)), m.group(2), headers


def read_response(sock, timeout=5, buf=b"", head_only=False):
    """Reads one response (Content-Length bodies, or until close when there is none).
    Returns (Response, leftover bytes)."""
    head, rest = recv_until(sock, b"\r\n\r\n", timeout, buf)
    status, reason, headers = parse_head(head)
    resp = Response(status, reason, headers, b"", head)
    if head_only or status in (204, 304) or 100 <= status < 200:
        return resp, rest
    return resp, read_body(sock, resp, rest, timeout)


def read_body(sock, resp, rest, timeout=5):
    """Reads resp's body into resp.body: Content-Length bytes, or until close when there is
    none. rest is what came after the head; returns what came after the body."""
    cl = resp.header("Content-Length")
    if cl is not None:
        n = int(cl)
        deadline = time.monotonic() + timeout
        while len(rest) < n:
            left = deadline - time.monotonic()
            assert left > 0, "timed out reading body"
            sock.settimeout(left)
            chunk = sock.recv(65536)
            assert chunk, "closed in body"
            rest += chunk
        resp.body, rest = rest[:n], rest[n:]
    else:
        resp.body = rest + recv_all(sock, timeout)
        rest = b""
    return rest


def ask(port, path, headers=None, method="GET", version="HTTP/1.1", timeout=5):
    """One request with Connection: close. An event stream is not read beyond what came with
    its head (its body is that), nor is a 204 or 304; any other answer is read whole, by its
    Content-Length, which every answer of this server that is not a stream carries."""
    s = connect(port, timeout)
    try:
        s.sendall(build_request(method, path, headers, close=True, version=version))
        resp, rest = read_response(s, timeout, head_only=True)
        if resp.header("Content-Type") == "text/event-stream" or resp.status in (204, 304):
            resp.body = rest
        else:
            assert resp.header("Content-Length") is not None, resp.raw_head
            read_body(s, resp, rest, timeout)
        return resp
    finally:
        s.close()


def request(port, method="GET", path="/", headers=None, body=b"", timeout=5, raw=None):
    """Sends one request on a fresh connection (Connection: close) and returns the Response."""
    s = connect(port, timeout)
    try:
        if raw is None:
            raw = build_request(method, path, headers, body, close=True)
        s.sendall(raw)
        resp, _ = read_response(s, timeout)
        return resp
    finally:
        s.close()


def build_request(method, path, headers=None, body=b"", close=False, version="HTTP/1.1"):
    if isinstance(body, str):
        body = body.encode()
    hs = [("Host", "localhost")]
    for k, v in (headers or {}).items() if isinstance(headers, dict) else (headers or []):
        hs.append((k, v))
    if body or method in ("POST", "PUT"):
        if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hs):
            hs.append(("Content-Length", str(len(body))))
    if close:
        hs.append(("Connection", "close"))
    head = "%s %s %s\r\n" % (method, path, version)
    head += "".join("%s: %s\r\n" % (k, v) for k, v in hs)
    return head.encode("utf-8") + b"\r\n" + body


def publish(port, data, topic=None, event=None, token="secret", method="POST"):
    from urllib.parse import urlencode

    q = []
    if topic is not None:
        q.append(("topic", topic))
    if event is not None:
        q.append(("event", event))
    path = "/publish" + ("?" + urlencode(q) if q else "")
    headers = {}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    return request(port, method, path, headers, data)


class Stream:
    """A raw EventSource-like subscriber: sends the GET, reads the head, then reads events."""

    STREAM_HEAD_RE = re.compile(rb"\r\n\r\n")

    def __init__(self, port, path="/events", headers=None, timeout=5):
        self.sock = connect(port, timeout)
        self.sock.sendall(build_request("GET", path, headers))
        head, self.buf = recv_until(self.sock, b"\r\n\r\n", timeout)
        self.status, self.reason, self.headers = parse_head(head)
        self.raw_head = head
        self.last_id = None

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def read_bytes_until(self, marker, timeout=5):
        data, self.buf = recv_until(self.sock, marker, timeout, self.buf)
        return data

    def read_block(self, timeout=5):
        """Reads up to and including the next blank line (b'\\n\\n'); returns those bytes."""
        return self.read_bytes_until(b"\n\n", timeout)

    def read_exactly(self, n, timeout=5):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            assert left > 0, "timed out; have %r" % self.buf
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError("timed out; have %r" % self.buf)
            assert chunk, "closed; have %r" % self.buf
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_event(self, timeout=5, position=False):
        """Reads the next block that holds a data: line and returns it parsed as a dict with
        id, event, data (WHATWG rules); blocks without data (id-only, comments) are skipped
        but the id is remembered, and so is the position event a stream opens with (type
        "position", empty data) unless position is True."""
        while True:
            block = self.read_block(timeout)
            ev = parse_block(block)
            if ev.get("id") is not None:
                self.last_id = ev["id"]
            if ev.get("data") is None:
                continue
            if position or not (ev.get("event") == "position" and ev["data"] == ""):
                return ev

    def read_until_closed(self, timeout=5):
        data = self.buf + recv_all(self.sock, timeout)
        self.buf = b""
        return data

    def nothing_pending(self, wait=0.3):
        """True if no byte arrives within wait seconds."""
        if self.buf:
            return False
        r, _, _ = select.select([self.sock], [], [], wait)
        return not r

    def close(self):
        self.sock.close()


def parse_block(block):
    """Parses one text/event-stream block per the WHATWG rules into a dict
    {id, event, data, retry, comments}; data is None when no data: line was present."""
    ev = {"id": None, "event": None, "data": None, "retry": None, "comments": []}
    data_lines = []
    for line in re.split(r"\r\n|\r|\n", block.decode("utf-8")):
        if line == "":
            continue
        if line.startswith(":"):
            ev["comments"].append(line[1:])
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data_lines.append(value)
        elif name == "id":
            ev["id"] = value
        elif name == "event":
            ev["event"] = value
        elif name == "retry":
            ev["retry"] = value
    if data_lines:
        ev["data"] = "\n".join(data_lines)
    return ev


def healthy(port):
    """Asserts that the server still answers a fresh /healthz request exactly."""
    r = request(port, "GET", "/healthz")
    assert (r.status, r.body) == (200, b"ok\n"), (r.raw_head, r.body)


def metric_values(port):
    """The samples of /metrics as a dict name -> int (float for the seconds counters)."""
    r = request(port, "GET", "/metrics")
    assert r.status == 200, (r.raw_head, r.body)
    values = {}
    for line in r.body.decode("utf-8").split("\n"):
        if line and not line.startswith("#"):
            name, value = line.split(" ")
            values[name] = float(value) if "." in value else int(value)
    return values


# The reason labels of sse_connections_closed_total, in the order /metrics lists them.
CLOSE_REASONS = [
    "client_closed", "done", "slow_subscriber", "header_timeout", "bad_request", "shutdown",
    "retired", "error", "send_timeout", "overload", "upstream_failed", "reconnect", "reset",
    "expired",
]


def closed_by_reason(values):
    """The sse_connections_closed_total series of a scrape (metric_values), by reason. Checks
    that there is one per reason and that closed + open == accepted, true at every scrape."""
    closed = {r: values['sse_connections_closed_total{reason="%s"}' % r] for r in CLOSE_REASONS}
    series = [k for k in values if k.startswith("sse_connections_closed_total")]
    assert len(series) == len(CLOSE_REASONS), series
    assert sum(closed.values()) + values["sse_connections"] == values["sse_connections_total"], (
        closed, values["sse_connections"], values["sse_connections_total"])
    return closed


def settled_fd_count(srv, quiet=0.5, timeout=5):
    """The server's fd count once it has not changed for `quiet` seconds (connections of
    earlier requests may still be closing)."""
    deadline = time.monotonic() + timeout
    n = srv.fd_count()
    since = time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.05)
        m = srv.fd_count()
        if m != n:
            n, since = m, time.monotonic()
    return n


# ---- helpers more than one test file uses --------------------------------------------------


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago, for a process (nginx, redis-server,
    an upstream) that must be told its port before it starts."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ev(id_, *lines, event=None):
    """The exact bytes of one event as the server frames it: one data: line per line."""
    out = "id: %s\n" % id_
    if event is not None:
        out += "event: %s\n" % event
    for line in lines:
        out += ("data: %s\n" % line) if line != "" else "data:\n"
    return (out + "\n").encode("utf-8")


def reset_bytes(current, requested, oldest):
    """The exact bytes of the reset event a stream opens with when the requested id cannot be
    replayed (oldest None: nothing is kept)."""
    o = "null" if oldest is None else '"%s"' % oldest
    return (
        'id: %s\nevent: reset\ndata: {"requested": %s, "oldest": %s, "current": "%s"}\n\n'
        % (current, json.dumps(requested), o, current)
    ).encode("utf-8")


def pub(port, data, topic=None, event=None, token="secret"):
    """Publishes data over HTTP, requires 200 and returns the event's id."""
    r = publish(port, data, topic=topic, event=event, token=token)
    assert r.status == 200, (r.status, r.body)
    return r.json()["id"]


def read_prelude(st, retry=3000, initial_id=True):
    """Reads `retry: N\\n\\n` (unless retry is 0) and the position event (`id: CURRENT`,
    `event: position`, an empty `data:`); returns CURRENT (or None when initial_id is False)."""
    if retry:
        want = b"retry: %d\n\n" % retry
        assert st.read_exactly(len(want)) == want
    if not initial_id:
        return None
    blk = st.read_block()
    m = re.fullmatch(rb"id: (\d+)\nevent: position\ndata:\n\n", blk)
    assert m, blk
    return m.group(1).decode()


def expect_bytes(st, want, timeout=5):
    """The next len(want) bytes of the stream are exactly want."""
    got = st.read_exactly(len(want), timeout)
    assert got == want


def wait_metric(port, name, pred, timeout=10):
    """Scrapes /metrics until pred(value of name) holds; returns that scrape (metric_values)."""
    deadline = time.monotonic() + timeout
    while True:
        m = metric_values(port)
        if pred(m[name]):
            return m
        assert time.monotonic() < deadline, "%s stuck at %r" % (name, m[name])
        time.sleep(0.05)


def exchange_closing(port, raw, timeout=5):
    """Sends raw bytes on a fresh connection, reads one response, then requires the server
    to close the connection. Returns (Response, bytes after the response before EOF)."""
    s = connect(port, timeout)
    try:
        s.sendall(raw)
        resp, rest = read_response(s, timeout)
        tail = rest + recv_all(s, timeout)
    finally:
        s.close()
    return resp, tail
