"""The command line: --help, --version, errors (exit 2, one line), --listen forms,
--opt=value, --verbose connection lines, --demo."""

import json
import os
import re
import socket
import subprocess
import time

import pytest

from conftest import (BINARY, Stream, build_request, connect, publish, read_response, recv_all,
                      request)

# (option, default as --help must show it: a string or alternatives, ANY when the README
# gives no literal default (--help must still say what the default is), None when the option
# has no default)
ANY = object()
OPTIONS = [
    ("--listen", "127.0.0.1:8080"),
    ("--root", ANY),
    ("--stream", "/events"),
    ("--backlog", "1024"),
    ("--backlog-bytes", ("67108864", "64m", "64M", "64 MiB", "64MiB")),
    ("--heartbeat", "15"),
    ("--retry", "3000"),
    ("--no-position-event", None),
    ("--publish-token", ANY),
    ("--subscribe-token", ANY),
    ("--stdin", ANY),
    ("--stdin-format", "lines"),
    ("--demo", ANY),
    ("--cors", ANY),
    ("--max-clients", ANY),
    ("--max-clients-per-ip", "0"),
    ("--client-buffer", ("1048576", "1m", "1M", "1 MiB", "1MiB")),
    ("--pace-high-water", ANY),
    ("--publish-wait", "5000"),
    ("--max-event-bytes", ("1048576", "1m", "1M", "1 MiB", "1MiB")),
    ("--header-timeout", "10"),
    ("--quiet", None),
    ("--verbose", None),
    ("--help", None),
    ("--version", None),
]


def run(*args, timeout=5):
    """Runs the binary with args; a process still running after timeout is killed and the
    test fails (a bad value must make it exit, not listen)."""
    p = subprocess.Popen(
        [BINARY, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=5)
        raise AssertionError("sse-server %r did not exit; stderr: %r" % (args, err))
    return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def assert_usage_error(args):
    rc, out, err = run(*args)
    assert rc == 2, (args, rc, err)
    assert err.endswith("\n") and err.count("\n") == 1, (args, err)
    assert err.startswith("sse-server: "), (args, err)
    assert "listening" not in err


def option_chunk(help_text, opt):
    """The --help text describing opt: its line and any continuation lines up to the next
    line that starts (after indentation) with another option."""
    lines = help_text.split("\n")
    pat = re.compile(r"^\s*(-\w, )?" + re.escape(opt) + r"(?![\w-])")
    for i, line in enumerate(lines):
        if pat.match(line):
            chunk = [line]
            for nxt in lines[i + 1 :]:
                if re.match(r"^\s*--?\w", nxt) or not nxt.strip():
                    break
                chunk.append(nxt)
            return "\n".join(chunk)
    return None


def test_help_lists_every_option_with_default():
    rc, out, err = run("--help")
    assert rc == 0, err
    assert "sse-server" in out
    for opt, default in OPTIONS:
        chunk = option_chunk(out, opt)
        assert chunk is not None, "--help does not list %s:\n%s" % (opt, out)
        if default is None:
            continue
        if default is ANY:
            assert re.search(r"\bdefault\b", chunk), "no default for %s in %r" % (opt, chunk)
            continue
        defaults = default if isinstance(default, tuple) else (default,)
        assert any(
            re.search(r"\bdefault:? " + re.escape(d) + r"(?![\w.])", chunk) for d in defaults
        ), "no default %r for %s in %r" % (default, opt, chunk)


# The parts' options (sse.h: SSE_ENABLE_*), as OPTIONS plus a valid value and the switch.
PART_OPTIONS = [
    ("--proxy", "/api=http://127.0.0.1:9", ANY, "SSE_ENABLE_PROXY"),
    ("--proxy-connect-timeout", "5", "5", "SSE_ENABLE_PROXY"),
    ("--proxy-heartbeat", "5", "0", "SSE_ENABLE_PROXY"),
    ("--relay", "t=http://127.0.0.1:9/events", ANY, "SSE_ENABLE_PROXY"),
    ("--journal", "/nonexistent/journal", ANY, "SSE_ENABLE_JOURNAL"),
    ("--journal-sync", "always", "batch", "SSE_ENABLE_JOURNAL"),
    ("--journal-max-bytes", "1m", ("67108864", "64m", "64M", "64 MiB", "64MiB"),
     "SSE_ENABLE_JOURNAL"),
    ("--redis", "127.0.0.1:9", ANY, "SSE_ENABLE_REDIS"),
    ("--redis-stream", "k", "sse", "SSE_ENABLE_REDIS"),
    ("--redis-password", "p", ANY, "SSE_ENABLE_REDIS"),
    ("--redis-maxlen", "10", "100000", "SSE_ENABLE_REDIS"),
]


@pytest.mark.parametrize("opt,value,default,switch", PART_OPTIONS, ids=[o[0] for o in PART_OPTIONS])
def test_part_option_listed_and_taken_or_refused_naming_its_switch(opt, value, default, switch):
    """Every build lists a part's options with their defaults. A build with the part takes
    the option (the bad value after it is what stops it); one without (make core) says so in
    --help and refuses the option, exit 2, naming the switch."""
    rc, out, err = run("--help")
    assert rc == 0, err
    chunk = option_chunk(out, opt)
    assert chunk is not None, "--help does not list %s:\n%s" % (opt, out)
    text = " ".join(chunk.split())
    if default is ANY:
        assert re.search(r"\bdefault\b", text), "no default for %s in %r" % (opt, chunk)
    else:
        defaults = default if isinstance(default, tuple) else (default,)
        assert any(re.search(r"\bdefault:? " + re.escape(d) + r"(?![\w.])", text)
                   for d in defaults), "no default %r for %s in %r" % (default, opt, chunk)
    built_without = "built without %s" % switch
    rc, out, err = run("--listen", "127.0.0.1:0", opt, value, "--backlog", "abc")
    assert rc == 2, (opt, rc, err)
    if "(not in this build: %s)" % built_without in text:
        assert err == "sse-server: %s: %s (see --help)\n" % (opt, built_without), err
    else:
        assert "not in this build" not in text, chunk
        assert err.startswith("sse-server: invalid value 'abc' for --backlog"), err


def test_version():
    rc, out, err = run("--version")
    assert rc == 0, err
    assert re.match(r"^sse-server \S+\n$", out), out


def test_unknown_option_exit_2():
    assert_usage_error(["--listen", "127.0.0.1:0", "--no-such-option"])


def test_positional_argument_exit_2():
    assert_usage_error(["--listen", "127.0.0.1:0", "stray"])


BAD_VALUES = [
    ["--backlog", "-1"],
    ["--backlog", "abc"],
    ["--backlog", ""],
    ["--heartbeat", "x"],
    ["--retry", "-5"],
    ["--listen", "nonsense"],
    ["--listen", "127.0.0.1:99999"],
    ["--listen", "127.0.0.1:"],
    ["--stdin-format", "xml"],
    ["--max-event-bytes", "0"],
    ["--max-event-bytes", "65m"],
    ["--max-clients", "many"],
    ["--backlog-bytes", "0"],
    ["--backlog-bytes", "2x"],
    ["--max-clients-per-ip", "-1"],
    ["--max-clients-per-ip", "some"],
    ["--client-buffer", "12q"],
    ["--pace-high-water", "0"],
    ["--pace-high-water", "lots"],
    ["--publish-wait", "0"],
    ["--header-timeout", "soon"],
    ["--stream", "noslash"],
    ["--backlog"],  # missing value
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=lambda a: "_".join(a) or "empty")
def test_bad_value_exit_2(args):
    if args[0] == "--listen":
        assert_usage_error(args)
    else:
        assert_usage_error(["--listen", "127.0.0.1:0", *args])


def test_bad_value_equals_form_exit_2():
    assert_usage_error(["--listen", "127.0.0.1:0", "--backlog=abc"])


def ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
        return True
    except OSError:
        return False


def healthz_over(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(addr)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        resp, rest = read_response(s)
    finally:
        s.close()
    assert (resp.status, resp.body) == (200, b"ok\n")


@pytest.mark.skipif(not ipv6_loopback(),
                    reason="not applicable: this machine has no IPv6 loopback (::1)")
def test_listen_ipv6(start_server):
    srv = start_server("--listen", "[::1]:0")
    line = srv.wait_for_line(r"listening on")
    m = re.match(r"^sse-server: listening on http://\[::1\]:(\d+)/$", line)
    assert m, line
    port = int(m.group(1))
    assert port != 0
    healthz_over(socket.AF_INET6, ("::1", port))


def test_listen_all_addresses(start_server):
    srv = start_server("--listen", ":0")
    line = srv.wait_for_line(r"listening on")
    m = re.match(r"^sse-server: listening on http://(\S+):(\d+)/$", line)
    assert m, line
    assert m.group(1) != "127.0.0.1"
    healthz_over(socket.AF_INET, ("127.0.0.1", int(m.group(2))))


def test_listening_line_exact(start_server):
    srv = start_server()
    line = srv.wait_for_line(r"listening on")
    assert line == "sse-server: listening on http://127.0.0.1:%d/" % srv.port


def test_equals_form(start_server):
    srv = start_server("--retry=1234", "--stream=/sse", "--publish-token=secret")
    st = Stream(srv.port, "/sse")
    try:
        assert st.status == 200
        assert st.read_block() == b"retry: 1234\n\n"
        assert re.match(rb"^id: \d+\nevent: position\ndata:\n\n$", st.read_block())
    finally:
        st.close()
    r = request(srv.port, "GET", "/events")
    assert r.status == 404


def test_later_args_win(start_server):
    srv = start_server("--retry", "1000", "--retry", "2000")
    st = Stream(srv.port, "/events")
    try:
        assert st.read_block() == b"retry: 2000\n\n"
    finally:
        st.close()


def test_size_suffix(start_server):
    srv = start_server("--max-event-bytes", "1k", "--publish-token", "secret")
    ok = request(
        srv.port,
        "POST",
        "/publish",
        {"Authorization": "Bearer secret"},
        b"a" * 1024,
    )
    assert ok.status == 200, ok.body
    too_big = request(
        srv.port,
        "POST",
        "/publish",
        {"Authorization": "Bearer secret"},
        b"a" * 1025,
    )
    assert too_big.status == 413


def test_verbose_connection_lines(start_server):
    srv = start_server("--verbose", "--header-timeout", "1")
    # done: a request with Connection: close
    s = connect(srv.port)
    local = s.getsockname()[1]
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    resp, rest = read_response(s)
    assert rest + recv_all(s) == b""
    s.close()
    line = srv.wait_for_line(r"connection #\d+ opened from 127\.0\.0\.1:%d$" % local)
    n = re.search(r"#(\d+)", line).group(1)
    assert line == "sse-server: connection #%s opened from 127.0.0.1:%d" % (n, local)
    srv.wait_for_line(r"^sse-server: connection #%s closed \(done\)$" % n)

    # bad request
    s = connect(srv.port)
    local = s.getsockname()[1]
    s.sendall(b"\x00garbage\r\n\r\n")
    recv_all(s)
    s.close()
    line = srv.wait_for_line(r"opened from 127\.0\.0\.1:%d$" % local)
    n = re.search(r"#(\d+)", line).group(1)
    srv.wait_for_line(r"^sse-server: connection #%s closed \(bad request\)$" % n)

    # client closed an idle keep-alive connection
    s = connect(srv.port)
    local = s.getsockname()[1]
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    read_response(s)
    s.close()
    line = srv.wait_for_line(r"opened from 127\.0\.0\.1:%d$" % local)
    n = re.search(r"#(\d+)", line).group(1)
    srv.wait_for_line(r"^sse-server: connection #%s closed \(client closed\)$" % n)

    # header timeout
    s = connect(srv.port)
    local = s.getsockname()[1]
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert recv_all(s, timeout=6) == b""
    s.close()
    line = srv.wait_for_line(r"opened from 127\.0\.0\.1:%d$" % local)
    n = re.search(r"#(\d+)", line).group(1)
    srv.wait_for_line(r"^sse-server: connection #%s closed \(header timeout\)$" % n)


ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_demo_generator(start_server):
    srv = start_server("--demo")
    st = Stream(srv.port, "/events?topic=time&topic=stocks&topic=news")
    try:
        assert st.status == 200
        assert st.header("Content-Type") == "text/event-stream"
        seen_time = seen_quote = seen_headline = None
        deadline = time.monotonic() + 8  # a headline every five seconds
        while not (seen_time and seen_quote and seen_headline):
            left = deadline - time.monotonic()
            assert left > 0, "time: %r, quote: %r, headline: %r" % (
                seen_time, seen_quote, seen_headline)
            ev = st.read_event(timeout=left)
            assert ev["id"] is not None and re.match(r"^\d+$", ev["id"]), ev
            if ev["event"] == "time":
                assert ISO_UTC.match(ev["data"]), ev
                seen_time = ev
            elif ev["event"] == "quote":
                q = json.loads(ev["data"])
                assert isinstance(q, dict), q
                for key in ("symbol", "price", "change"):
                    assert key in q, q
                assert isinstance(q["symbol"], str) and q["symbol"]
                seen_quote = ev
            elif ev["event"] == "headline":
                # Two lines, so two data: lines on the wire.
                assert re.match(r"^[A-Z]+ (up|down) \d+\.\d\d% since the demo started\n"
                                r"last trade \d+\.\d\d at \d\d:\d\d:\d\d UTC$", ev["data"]), ev
                seen_headline = ev
    finally:
        st.close()


def test_demo_drop_ends_only_the_visitors_stream(start_server):
    """--demo's own route (main.c through on_request): POST /demo/drop?topic=visitor-X ends
    the streams following that topic, however many topics they follow, and nobody else's;
    the stream ends cleanly (no 204), so an EventSource reconnects."""
    srv = start_server("--demo")
    mine = Stream(srv.port, "/events?topic=time&topic=visitor-1a2b")
    other = Stream(srv.port, "/events?topic=time&topic=visitor-ffff")
    try:
        assert mine.read_event()["event"] == "time" and other.read_event()["event"] == "time"
        r = request(srv.port, "POST", "/demo/drop?topic=visitor-1a2b")
        assert (r.status, r.header("Content-Type"), r.body) == (
            200, "application/json", b'{"ended": 1}\n')
        rest = mine.read_until_closed()
        assert rest == b"" or rest.endswith(b"\n\n"), rest  # whole events, then the end
        assert other.read_event()["event"] == "time"  # still streaming
        for path in ("/demo/drop?topic=time", "/demo/drop", "/demo/drop?topic=visitor-",
                     "/demo/drop?topic=visitor-a%20b"):
            r = request(srv.port, "POST", path)
            assert (r.status, r.body) == (
                400, b"topic must be the page's own visitor-... topic\n"), (path, r.body)
        r = request(srv.port, "POST", "/demo/drop?topic=visitor-none")
        assert (r.status, r.body) == (200, b'{"ended": 0}\n')
        # A host route never reads a body, so the connection is not reused after one.
        for body, closes in ((b"", False), (b"unread", True)):
            with connect(srv.port) as s:
                s.sendall(build_request("POST", "/demo/drop?topic=visitor-none", body=body)
                          + build_request("GET", "/healthz"))
                first, rest = read_response(s)
                assert first.status == 200 and first.body == b'{"ended": 0}\n'
                assert (first.header("Connection") == "close") == closes, first.headers
                if closes:  # the unread body is not taken for the next request
                    assert rest + recv_all(s) == b""
                else:
                    second, _ = read_response(s, buf=rest)
                    assert second.body == b"ok\n"
        assert request(srv.port, "GET", "/demo/drop?topic=visitor-1a2b").status == 404
    finally:
        mine.close()
        other.close()
    plain = start_server()  # without --demo there is no such route
    assert request(plain.port, "POST", "/demo/drop?topic=visitor-1a2b").status == 405


def token_env(**values):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
    env.update(values)
    return env


def test_tokens_from_the_environment(start_server):
    srv = start_server(env=token_env(SSE_PUBLISH_TOKEN="envpub", SSE_SUBSCRIBE_TOKEN="envsub"))
    assert publish(srv.port, b"x", token="secret").status == 401
    assert publish(srv.port, b"x", token="envpub").status == 200
    assert request(srv.port, "GET", "/events", {"Accept": "text/event-stream"}).status == 401
    st = Stream(srv.port, "/events?token=envsub")
    try:
        assert st.status == 200
    finally:
        st.close()


def test_token_option_wins_over_environment_and_empty_is_unset(start_server):
    srv = start_server("--publish-token", "opt", env=token_env(SSE_PUBLISH_TOKEN="envpub"))
    assert publish(srv.port, b"x", token="envpub").status == 401
    assert publish(srv.port, b"x", token="opt").status == 200
    srv = start_server(env=token_env(SSE_PUBLISH_TOKEN="", SSE_SUBSCRIBE_TOKEN=""))
    assert publish(srv.port, b"x", token="").status == 403  # publishing stays off
    st = Stream(srv.port, "/events")
    try:
        assert st.status == 200
    finally:
        st.close()


# ---- a build without Redis (SSE_ENABLE_REDIS=0) ----------------------------------------

@pytest.fixture(scope="module")
def noredis_build():
    """Builds the server and the unit tests with SSE_ENABLE_REDIS=0 into build/noredis
    (a few seconds: no optimisation, no sanitizers)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = os.path.join(root, "build", "noredis")
    os.makedirs(out, exist_ok=True)
    flags = ["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion",
             "-Werror", "-O0", "-DSSE_ENABLE_REDIS=0"]
    subprocess.run(["make", "-s", "-C", root, "build/demo_page.c"], check=True, timeout=60)
    builds = [
        [os.path.join(root, "sse.c"), os.path.join(root, "main.c"),
         os.path.join(root, "build", "demo_page.c"), "-o", os.path.join(out, "sse-server")],
        [os.path.join(root, "tests", "unit.c"), "-o", os.path.join(out, "unit")],
    ]
    for files in builds:
        r = subprocess.run(["cc", *flags, *files], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    return out


def test_built_without_redis_refuses_redis_options(noredis_build):
    binary = os.path.join(noredis_build, "sse-server")
    for args in (["--redis", "127.0.0.1:6379"], ["--redis-stream", "s"], ["--redis-maxlen", "5"]):
        r = subprocess.run([binary, "--listen", "127.0.0.1:0", *args], capture_output=True,
                           text=True, timeout=10)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f"sse-server: {args[0]}: built without SSE_ENABLE_REDIS (see --help)"]
    # The library refuses it too (sse_server_new), and the unit tests pass without Redis.
    r = subprocess.run([os.path.join(noredis_build, "unit")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and ", 0 failed" in r.stdout, r.stdout + r.stderr
