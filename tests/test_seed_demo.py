"""--demo's GET /.sse, the demo stream of the API7 article this project grew from: each
subscriber gets an event `server` (who answered) and an event `request` (the request as the
server received it, every header in order) of its own, then the shared `time` ticks.
Straight, through sse-server --proxy (the X-Forwarded-* it adds show; ticks arrive as sent)
and through nginx with docs/seed-demo.md's configuration (and a control: the same nginx told
to ignore X-Accel-Buffering holds the stream back); docs/seed-demo.md's transcripts are
compared with what the same curl commands print now."""

import os
import re
import shlex
import socket
import subprocess

import pytest

from conftest import (
    BINARY, HERE, Stream, build_request, connect, parse_block, parse_head,
    recv_until, request, unavailable,
)
from test_nginx import Nginx, nginx_binary  # noqa: F401 (a fixture: finds or installs nginx)

DOC = os.path.join(HERE, "..", "docs", "seed-demo.md")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
# Seconds a tick may take to arrive: one tick a second, plus slack. A buffering proxy holds
# them for minutes (docs/seed-demo.md).
TICK = 3.5
CLIENT = [("Accept", "text/event-stream"), ("User-Agent", "seed-test/1"), ("X-Probe", "one"),
          ("x-probe", "two")]


def version():
    out = subprocess.run([BINARY, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.split()[1]


def who(port):
    """The server event's data for the server listening on port."""
    return "sse-server %s on host %s, listening on http://127.0.0.1:%d/" % (
        version(), socket.gethostname(), port)


class Stream10(Stream):
    """A Stream that asks in HTTP/1.0, so nginx answers close-delimited (not chunked) and the
    bytes read are the event stream itself."""

    def __init__(self, port, path, headers):
        self.sock = connect(port)
        self.sock.sendall(build_request("GET", path, headers, version="HTTP/1.0"))
        head, self.buf = recv_until(self.sock, b"\r\n\r\n")
        self.status, self.reason, self.headers = parse_head(head)
        self.raw_head = head
        self.last_id = None


def opening(st):
    """Reads retry:, server and request; returns (server data, request lines)."""
    assert st.status == 200, st.raw_head
    assert st.header("Content-Type") == "text/event-stream", st.raw_head
    assert st.read_block() == b"retry: 3000\n\n"
    server, req = parse_block(st.read_block()), parse_block(st.read_block())
    assert (server["event"], server["id"]) == ("server", None), server
    assert (req["event"], req["id"]) == ("request", None), req
    return server["data"], req["data"].split("\n")


def ticks(st, n, position=True):
    """Reads the position event (unless position is False) and n time ticks, each within
    TICK seconds; returns the ticks, checked: ids and times increasing."""
    if position:
        pos = parse_block(st.read_block())
        assert (pos["event"], pos["data"]) == ("position", ""), pos
    got = []
    for _ in range(n):
        ev = parse_block(st.read_block(timeout=TICK))
        assert ev["event"] == "time" and TIME_RE.fullmatch(ev["data"]), ev
        assert not got or (int(ev["id"]) > int(got[-1]["id"]) and ev["data"] > got[-1]["data"])
        got.append(ev)
    return got


def test_straight_server_then_request_then_time_ticks(start_server):
    srv = start_server("--demo")
    st = Stream(srv.port, "/.sse", CLIENT)
    try:
        server, lines = opening(st)
        assert server == who(srv.port)
        assert lines == ["GET /.sse HTTP/1.1", "Host: localhost", "Accept: text/event-stream",
                         "User-Agent: seed-test/1", "X-Probe: one", "x-probe: two"]
        ticks(st, 2)
    finally:
        st.close()


def test_each_subscriber_gets_its_own_server_and_request(start_server):
    """A second subscriber, resuming after the first one's tick, gets its own opening (its
    Last-Event-ID shows) and then the ticks replayed; the first sees nothing of it."""
    srv = start_server("--demo")
    a = Stream(srv.port, "/.sse", [("Accept", "text/event-stream")])
    b = None
    try:
        opening(a)
        first = ticks(a, 1)[0]
        ticks(a, 1, position=False)
        b = Stream(srv.port, "/.sse", [("Last-Event-ID", first["id"]), ("X-Who", "b")])
        server, lines = opening(b)
        assert server == who(srv.port)
        assert lines == ["GET /.sse HTTP/1.1", "Host: localhost", "Last-Event-ID: " + first["id"],
                         "X-Who: b"]
        replayed = parse_block(b.read_block())
        assert replayed["event"] == "time" and int(replayed["id"]) > int(first["id"]), replayed
        assert ticks(a, 1, position=False)  # a time tick: b's events went to b alone
    finally:
        a.close()
        if b:
            b.close()


def test_seed_stream_is_demo_and_get_only(start_server):
    plain = start_server()
    assert request(plain.port, "GET", "/.sse").status == 404
    demo = start_server("--demo")
    assert request(demo.port, "HEAD", "/.sse").status == 404  # declined: the built-in routes
    assert request(demo.port, "POST", "/.sse").status == 405


@pytest.mark.proxy
def test_through_proxy_forwarding_headers_show_and_ticks_arrive_as_sent(start_server):
    origin = start_server("--demo")
    proxy = start_server("--proxy", "/seed=http://127.0.0.1:%d" % origin.port)
    st = Stream(proxy.port, "/seed/.sse", CLIENT)
    try:
        server, lines = opening(st)
        assert server == who(origin.port)  # who answered: the origin, not the proxy
        assert lines[:6] == ["GET /.sse HTTP/1.1", "Host: localhost", "Accept: text/event-stream",
                             "User-Agent: seed-test/1", "X-Probe: one", "x-probe: two"]
        added = dict(line.split(": ", 1) for line in lines[6:])
        for name, value in {
            "X-Forwarded-For": "127.0.0.1",
            "X-Forwarded-Host": "localhost",
            "X-Forwarded-Port": str(proxy.port),
            "X-Forwarded-Proto": "http",
            "X-Real-IP": "127.0.0.1",
            "Forwarded": 'for=127.0.0.1;host="localhost";proto=http',
        }.items():
            assert added.get(name) == value, (name, lines)
        ticks(st, 2)  # each within TICK seconds: nothing held back
    finally:
        st.close()


def doc_nginx_conf():
    """docs/seed-demo.md's nginx.conf (the here-document), with its ports as placeholders."""
    with open(DOC) as f:
        text = f.read()
    m = re.search(r"cat > /tmp/seed-nginx/nginx.conf <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert m, "no nginx.conf in docs/seed-demo.md"
    conf = m.group(1)
    assert "listen 127.0.0.1:8082;" in conf and "proxy_pass http://127.0.0.1:8080;" in conf
    return conf


def start_doc_nginx(binary, tmp_path, upstream_port, extra=""):
    """nginx with docs/seed-demo.md's configuration in front of upstream_port; extra goes at
    the top of its location."""
    conf = doc_nginx_conf().replace("location / {", "location / {\n" + extra)

    def make_conf(d, port):
        return (conf.replace("127.0.0.1:8082", "127.0.0.1:%d" % port)
                .replace("127.0.0.1:8080", "127.0.0.1:%d" % upstream_port))
    return Nginx(binary, tmp_path, make_conf)


def test_through_nginx_forwarded_for_shows_and_ticks_arrive_as_sent(
        start_server, nginx_binary, tmp_path):  # noqa: F811
    origin = start_server("--demo")
    nginx = start_doc_nginx(nginx_binary, tmp_path, origin.port)
    try:
        st = Stream10(nginx.port, "/.sse", CLIENT)
        try:
            server, lines = opening(st)
            assert server == who(origin.port)
            # nginx puts what its configuration sets first, then the client's headers.
            assert lines == ["GET /.sse HTTP/1.1", "Host: localhost",
                             "X-Forwarded-For: 127.0.0.1", "Accept: text/event-stream",
                             "User-Agent: seed-test/1", "X-Probe: one", "x-probe: two"]
            ticks(st, 2)  # proxy_buffering is on, but X-Accel-Buffering: no turns it off
        finally:
            st.close()
    finally:
        nginx.stop()


def test_control_nginx_ignoring_x_accel_buffering_holds_the_stream(
        start_server, nginx_binary, tmp_path):  # noqa: F811
    """The docs' second nginx: told to ignore X-Accel-Buffering, it buffers, and no tick
    comes through in the time the test above waits for two: its check can fail."""
    origin = start_server("--demo")
    nginx = start_doc_nginx(nginx_binary, tmp_path, origin.port,
                            "proxy_ignore_headers X-Accel-Buffering;\n")
    try:
        s = connect(nginx.port)
        try:
            s.sendall(build_request("GET", "/.sse", CLIENT, version="HTTP/1.0"))
            s.settimeout(2 * TICK)
            with pytest.raises(socket.timeout):
                data = s.recv(65536)
                raise AssertionError("nginx passed %r through" % data)
        finally:
            s.close()
    finally:
        nginx.stop()


# ---- docs/seed-demo.md's transcripts ---------------------------------------------------------

DOC_PORTS = {"straight": 8080, "proxy": 8081, "nginx": 8082}


def doc_transcripts():
    """{"straight"|"proxy"|"nginx": (curl command, transcript)} from docs/seed-demo.md: each
    sh block that runs curl on 127.0.0.1:8080, 8081 or 8082 and the text block after it."""
    with open(DOC) as f:
        blocks = re.findall(r"```(\w*)\n(.*?)```", f.read(), re.S)
    found = {}
    for (lang, body), (next_lang, output) in zip(blocks, blocks[1:] + [("", "")]):
        curl = [line for line in body.split("\n") if line.startswith("curl -sN")]
        if lang != "sh" or not curl or next_lang != "text":
            continue
        for name, port in DOC_PORTS.items():
            if "127.0.0.1:%d/" % port in curl[0]:
                found[name] = (curl[0], output)
    assert sorted(found) == sorted(DOC_PORTS), found.keys()
    return found


def masked(text, ports):
    """Ids, times, the host name and curl's version masked; real ports spelt as the docs'."""
    text = re.sub(r"(?m)^id: \d+$", "id: ID", text)
    text = TIME_RE.sub("TIME", text)
    text = re.sub(r"on host [^,\n]+,", "on host HOST,", text)
    text = re.sub(r"curl/[0-9.]+", "curl/VERSION", text)
    for real, doc in ports.items():
        text = re.sub(r"(?<!\d)%d(?!\d)" % real, str(doc), text)
    return text


def check_transcript(name, ports):
    """Runs the docs' curl command for name on the real ports and compares its output, event
    by event, with the docs' transcript (a tick fewer is allowed: 2.5 s may hold only one
    after a slow start)."""
    command, shown = doc_transcripts()[name]
    real_url = re.sub(r"127\.0\.0\.1:(\d+)",
                      lambda m: "127.0.0.1:%d" % {d: r for r, d in ports.items()}[int(m.group(1))],
                      command)
    out = subprocess.run(shlex.split(real_url), capture_output=True, timeout=15)
    assert out.returncode == 28, (out.returncode, out.stderr)  # --max-time ended it
    got = masked(out.stdout.decode("utf-8"), ports).split("\n\n")
    want = masked(shown, ports).split("\n\n")
    assert want[-1] == "" and got[-1] == "", (want[-1:], got[-1:])  # whole events only
    want, got = want[:-1], got[:-1]
    n = min(len(want), len(got))
    assert n >= len(want) - 1 and got[:n] == want[:n], "\n\n".join(got)


def have_curl():
    if not any(os.access(os.path.join(d, "curl"), os.X_OK)
               for d in os.environ.get("PATH", "/usr/bin").split(":")):
        unavailable("curl is not installed (tests/install-deps.sh installs it)")


def test_doc_transcript_straight(start_server):
    have_curl()
    origin = start_server("--demo")
    check_transcript("straight", {origin.port: 8080})


@pytest.mark.proxy
def test_doc_transcript_through_proxy(start_server):
    have_curl()
    origin = start_server("--demo")
    proxy = start_server("--proxy", "/seed=http://127.0.0.1:%d" % origin.port)
    check_transcript("proxy", {origin.port: 8080, proxy.port: 8081})


def test_doc_transcript_through_nginx(start_server, nginx_binary, tmp_path):  # noqa: F811
    have_curl()
    origin = start_server("--demo")
    nginx = start_doc_nginx(nginx_binary, tmp_path, origin.port)
    try:
        check_transcript("nginx", {origin.port: 8080, nginx.port: 8082})
    finally:
        nginx.stop()
