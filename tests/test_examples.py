"""The embedding examples, built the way an embedder would: sse.c, sse.h and the example copied
into an empty directory and compiled there with strict warnings as errors (the library with the
host's flags), then run on port 0 and read over a socket: real events with exact framing, then
SIGTERM and a clean exit 0. SSE_EXAMPLES_CFLAGS adds flags to those builds: `make test-core`
switches every part off there too (-DSSE_ENABLE_PROXY=0 ...), so the core alone is embedded."""

import calendar
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time

import pytest

from conftest import Stream, parse_block, request, unavailable

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STRICT = ["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
EXTRA = shlex.split(os.environ.get("SSE_EXAMPLES_CFLAGS", ""))
LOADAVG = r"\d+\.\d\d \d+\.\d\d \d+\.\d\d \d+/\d+ \d+"  # the format of /proc/loadavg


def build(tmp_path_factory, example, name, cc="cc", flags=()):
    """Copies sse.c, sse.h and the example alone into a fresh directory and compiles them
    there; returns the binary's path."""
    work = tmp_path_factory.mktemp(name)
    for src in ("sse.c", "sse.h", example):
        shutil.copy(os.path.join(ROOT, src), work)
    assert sorted(os.listdir(work)) == sorted(["sse.c", "sse.h", os.path.basename(example)])
    cmd = [cc, *STRICT, *flags, *EXTRA, "-O1", os.path.basename(example), "sse.c", "-o", name]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and not r.stderr, "%s\n%s" % (" ".join(cmd), r.stderr)
    return str(work / name)


@pytest.fixture(scope="module")
def minimal(tmp_path_factory):
    return build(tmp_path_factory, "examples/minimal.c", "minimal")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return build(tmp_path_factory, "examples/embed/host.c", "host", flags=["-Wshadow",
                                                                          "-Wconversion"])


class Program:
    """An example program running on 127.0.0.1:0; learns its port from the URL it prints."""

    def __init__(self, binary, prefix):
        self.proc = subprocess.Popen([binary, "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = self.read_line(10)
        m = re.fullmatch(prefix + r": (?:listening on )?http://127\.0\.0\.1:(\d+)/\n", line)
        assert m, line
        self.port = int(m.group(1))

    def read_line(self, timeout):
        r, _, _ = select.select([self.proc.stderr], [], [], timeout)
        assert r, "no line on stderr within %s s" % timeout
        return self.proc.stderr.readline().decode()

    def terminate(self, sig=signal.SIGTERM, timeout=5):
        """Signals the program; returns its exit status and what it wrote to stderr."""
        os.kill(self.proc.pid, sig)
        status = self.proc.wait(timeout=timeout)
        return status, self.proc.stderr.read().decode()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def run():
    programs = []

    def start(binary, prefix):
        p = Program(binary, prefix)
        programs.append(p)
        return p

    yield start
    for p in programs:
        p.kill()


def read_events(stream, n):
    """The next n blocks that carry data, as raw bytes (id-only blocks and the position
    event skipped)."""
    blocks = []
    while len(blocks) < n:
        block = stream.read_block(timeout=5)
        ev = parse_block(block)
        if ev["data"] is not None and not (ev["event"] == "position" and ev["data"] == ""):
            blocks.append(block)
    return blocks


def check_drain(prog, stream, sig=signal.SIGTERM):
    """A signal ends the stream with a retry: line and the program with status 0."""
    status, err = prog.terminate(sig)
    assert status == 0, err
    rest = stream.read_until_closed(timeout=5)
    assert re.search(rb"retry: \d+\n\n$", rest), rest
    return err


def test_minimal_is_under_30_lines():
    with open(os.path.join(ROOT, "examples", "minimal.c")) as f:
        assert len(f.read().split("\n")) - 1 < 30


def test_minimal_publishes_the_time_every_second(minimal, run):
    prog = run(minimal, "minimal")
    s = Stream(prog.port, "/events/time")
    assert s.status == 200 and s.header("Content-Type") == "text/event-stream"
    assert s.read_block() == b"retry: 3000\n\n"
    events = read_events(s, 2)
    stamps = []
    for block in events:
        m = re.fullmatch(rb"id: (\d+)\ndata: (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\n\n", block)
        assert m, block
        when = calendar.timegm(time.strptime(m.group(2).decode(), "%Y-%m-%dT%H:%M:%SZ"))
        stamps.append((int(m.group(1)), when))
    assert stamps[1][0] == stamps[0][0] + 1  # consecutive ids
    assert stamps[1][1] - stamps[0][1] in (1, 2)  # a second apart (2: a stalled machine)
    err = check_drain(prog, s)
    assert err == ""


def test_minimal_sigint_and_default_topic_untouched(minimal, run):
    prog = run(minimal, "minimal")
    other = Stream(prog.port, "/events")  # topic "default": nothing is published there
    assert other.read_block() == b"retry: 3000\n\n"
    time.sleep(1.2)
    block = other.read_block()  # the position event sent on subscribing, then nothing
    assert re.fullmatch(rb"id: \d+\nevent: position\ndata:\n\n", block), block
    assert other.nothing_pending(0.1)
    check_drain(prog, other, signal.SIGINT)


def check_host(binary, run):
    prog = run(binary, "host")
    page = request(prog.port, "GET", "/")
    assert page.status == 200 and page.header("Content-Type").startswith("text/html")
    assert b"new EventSource('/events/load')" in page.body
    s = Stream(prog.port, "/events/load")
    assert s.status == 200 and s.header("Content-Type") == "text/event-stream"
    assert s.read_block() == b"retry: 3000\n\n"
    ids = []
    for block in read_events(s, 2):
        m = re.fullmatch(rb"id: (\d+)\nevent: load\ndata: (%s)\n\n" % LOADAVG.encode(), block)
        assert m, block
        ids.append(int(m.group(1)))
    assert ids[1] == ids[0] + 1
    # The host's own route (on_request) answers with the latest line; the rest is declined
    # and falls through to the server's routes.
    latest = request(prog.port, "GET", "/load.json")
    assert latest.status == 200 and latest.header("Content-Type") == "application/json"
    assert re.fullmatch(rb'\{"load": "%s"\}\n' % LOADAVG.encode(), latest.body), latest.body
    assert request(prog.port, "POST", "/load.json").status == 405  # declined: built-in answer
    assert request(prog.port, "GET", "/healthz").body == b"ok\n"
    err = check_drain(prog, s)
    assert err == "host: signal %d, draining\n" % signal.SIGTERM, err


def test_embed_host_publishes_loadavg(host, run):
    check_host(host, run)


def test_embed_host_sigint_drains(host, run):
    prog = run(host, "host")
    s = Stream(prog.port, "/events/load")
    read_events(s, 1)
    err = check_drain(prog, s, signal.SIGINT)
    assert err == "host: signal %d, draining\n" % signal.SIGINT, err


def test_embed_host_built_with_clang(tmp_path_factory, run):
    if not shutil.which("clang"):
        unavailable("clang is not installed")
    check_host(build(tmp_path_factory, "examples/embed/host.c", "host",
                     cc="clang", flags=["-Wshadow", "-Wconversion"]), run)
