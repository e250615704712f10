"""The command line: --help, --version, errors (exit 2, one line), --listen forms,
--opt=value, --verbose connection lines, --demo."""

import json
import os
import re
import shlex
import socket
import subprocess
import time

import pytest

from conftest import (BINARY, Stream, build_request, connect, free_port, metric_values, publish,
                      read_response, recv_all, request, unavailable)

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
    ("--jwt-secret", "k", ANY, "SSE_ENABLE_AUTH"),
    ("--jwt-secret-file", "/etc/hostname", ANY, "SSE_ENABLE_AUTH"),
    ("--jwt-cookie", "c", "sse_token", "SSE_ENABLE_AUTH"),
    ("--jwt-audience", "a", ANY, "SSE_ENABLE_AUTH"),
    ("--public", "news", ANY, "SSE_ENABLE_AUTH"),
    ("--auth-url", "http://127.0.0.1:9/check", ANY, "SSE_ENABLE_AUTH"),
    ("--auth-cache", "5", "0", "SSE_ENABLE_AUTH"),
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


# ---- the conventions: every bad value exits 2 naming the option and the real rule --------

def help_text():
    rc, out, err = run("--help")
    assert rc == 0, err
    return out


def help_options(text):
    """{"--name": "ARG" or None} for every option --help lists (the option table)."""
    found = {}
    for line in text.split("\n"):
        m = re.match(r"^  (--[a-z][\w-]*)(?: (\S+))?(?:\s|$)", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def test_help_parse_sees_the_whole_table():
    """The parse the tests below rely on: every option of OPTIONS and PART_OPTIONS, and the
    valued ones with their value's name."""
    opts = help_options(help_text())
    assert set(opts) == {o for o, _ in OPTIONS} | {o[0] for o in PART_OPTIONS}, opts
    assert opts["--publish-token"] == "TOKEN" and opts["--stdin"] is None


def built_without(opt):
    """The switch this build was made without when --help says so of opt, else None."""
    chunk = " ".join(option_chunk(help_text(), opt).split())
    m = re.search(r"\(not in this build: built without (\w+)\)", chunk)
    return m and m.group(1)


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_empty_value_names_the_option(form):
    """`--publish-token ''` (and every other option that takes a value) says which option
    is empty; it used to say "empty value for  (see --help)"."""
    opts = help_options(help_text())
    valued = [o for o, arg in opts.items() if arg]
    assert len(valued) >= 25, valued
    for opt in valued:
        args = [opt, ""] if form == "separate" else [opt + "="]
        rc, out, err = run("--listen", "127.0.0.1:0", *args)
        switch = built_without(opt) if opt != "--listen" else None
        want = ("sse-server: %s: built without %s (see --help)\n" % (opt, switch) if switch
                else "sse-server: empty value for %s (see --help)\n" % opt)
        assert (rc, err) == (2, want), (args, rc, err)


def starts(*args):
    """True when the server starts (says it is listening) with args; it is then stopped."""
    p = subprocess.Popen([BINARY, "--listen", "127.0.0.1:0", *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = p.stderr.readline()  # the listening line, or the reason it exits
    finally:
        p.terminate()
        _, rest = p.communicate(timeout=10)
    assert b"AddressSanitizer" not in rest, rest
    return line.startswith(b"sse-server: listening on ")


def number_options():
    """(option, its value's name) for every option --help lists with a numeric value."""
    opts = help_options(help_text())
    return [(o, a) for o, a in opts.items() if a in ("N", "BYTES", "SECONDS", "MS")]


def test_number_errors_state_the_real_range():
    """Each number's error message states its range, and the range is the real one: the
    bounds it names are taken (the server starts with them: the library takes them too) and
    one past either is refused with the same message. --max-event-bytes 65m used to say
    "such as 65536 or 64k" with a limit of 64m."""
    size_re = re.compile(r"^sse-server: invalid value '(.*)' for (--[\w-]+): expected a size "
                         r"from (\d+[kmg]?) to (\d+[kmg]?) \(bytes, or with a k, m or g "
                         r"suffix: powers of 1024\) \(see --help\)\n$")
    num_re = re.compile(r"^sse-server: invalid value '(.*)' for (--[\w-]+): expected a whole "
                        r"number from (\d+) to (\d+)( seconds| milliseconds)? \(see --help\)\n$")
    units = {"SECONDS": " seconds", "MS": " milliseconds"}
    checked = 0
    for opt, arg in number_options():
        if built_without(opt):
            continue
        rc, out, err = run("--listen", "127.0.0.1:0", opt, "x")
        assert rc == 2, (opt, err)
        m = (size_re if arg == "BYTES" else num_re).match(err)
        assert m and m.group(1, 2) == ("x", opt), (opt, err)
        if arg != "BYTES":
            assert (m.group(5) or "") == units.get(arg, ""), (opt, err)
        lo, hi = m.group(3), m.group(4)

        def number(s):
            return int(s[:-1]) << {"k": 10, "m": 20, "g": 30}[s[-1]] if s[-1] in "kmg" else int(s)

        for taken in (lo, hi):
            assert starts(opt, taken), (opt, taken)
        for refused in (str(number(lo) - 1), str(number(hi) + 1)):
            rc, out, err2 = run("--listen", "127.0.0.1:0", opt, refused)
            assert rc == 2 and err2 == err.replace("'x'", "'%s'" % refused), (opt, refused, err2)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("args,message", [
    (["--max-event-bytes", "65m"], "invalid value '65m' for --max-event-bytes: expected a size "
     "from 1 to 64m (bytes, or with a k, m or g suffix: powers of 1024)"),
    (["--backlog-bytes", "2x"], "invalid value '2x' for --backlog-bytes: expected a size from "
     "1 to 1024g (bytes, or with a k, m or g suffix: powers of 1024)"),
    (["--heartbeat", "86401"], "invalid value '86401' for --heartbeat: expected a whole number "
     "from 0 to 86400 seconds"),
    (["--retry", "-5"], "invalid value '-5' for --retry: expected a whole number from 0 to "
     "86400000 milliseconds"),
    (["--max-clients", "many"], "invalid value 'many' for --max-clients: expected a whole "
     "number from 1 to 10000000"),
    (["--cors", "https://a.example https://b.example"], "invalid value 'https://a.example "
     "https://b.example' for --cors: expected * or an origin such as https://example.com "
     "(printable ASCII without spaces, at most 512 bytes)"),
    (["--cors", "x" * 513], "invalid value '%s' for --cors: expected * or an origin such as "
     "https://example.com (printable ASCII without spaces, at most 512 bytes)" % ("x" * 513)),
    (["--stream", "/publish"], "invalid value '/publish' for --stream: /publish is the "
     "server's own endpoint"),
    (["--stream", "/ev?x"], "invalid value '/ev?x' for --stream: expected a path such as "
     "/events (printable ASCII without ?, #, % or a trailing /)"),
    (["--stdin-format", "xml"], "invalid value 'xml' for --stdin-format: expected lines or sse"),
    (["--backlog"], "option '--backlog' needs a value"),
])
def test_bad_value_message_and_exit_2(args, message):
    rc, out, err = run("--listen", "127.0.0.1:0", *args)
    assert (rc, err) == (2, "sse-server: %s (see --help)\n" % message), (args, rc, err)


HTTPS = ("https upstreams are not supported, only plain http:// (reach an https-only upstream "
         "through a local proxy that ends TLS)")


@pytest.mark.proxy
@pytest.mark.parametrize("value,message", [
    ("/x=https://127.0.0.1:1", HTTPS),
    ("/x=HTTPS://127.0.0.1:1/base", HTTPS),
    ("x=http://127.0.0.1:1", "PREFIX must be a path starting with /, such as /api (without "
     "?, # or %)"),
    ("/x?y=http://127.0.0.1:1", "PREFIX must be a path starting with /, such as /api (without "
     "?, # or %)"),
    ("/x=ftp://127.0.0.1:1", "the URL must start with http://"),
    ("/x=http://:80", "the URL has no host"),
    ("/x=http://127.0.0.1:0", "the URL's port must be 1 to 65535"),
    ("/x=http://127.0.0.1:1?q", "the URL's path must start with /"),
])
def test_proxy_value_says_the_rule(value, message):
    """--proxy names what is wrong: an https upstream (not supported: plain http only), a
    PREFIX not starting with /, and what the library would refuse at start (exit 1 before)."""
    rc, out, err = run("--listen", "127.0.0.1:0", "--proxy", value)
    want = "sse-server: invalid value '%s' for --proxy: %s (see --help)\n" % (value, message)
    assert (rc, err) == (2, want), (rc, err)


@pytest.mark.relay
@pytest.mark.parametrize("value,message", [
    ("bad topic=http://127.0.0.1:1/x", "TOPIC must be 1 to 64 of A-Z a-z 0-9 . _ -"),
    ("t=https://127.0.0.1:1/x", HTTPS),
])
def test_relay_value_says_the_rule(value, message):
    """`--relay 'bad topic=...'` exited 1 (refused by sse_server_new()); a bad value is a
    usage error."""
    rc, out, err = run("--listen", "127.0.0.1:0", "--relay", value)
    want = "sse-server: invalid value '%s' for --relay: %s (see --help)\n" % (value, message)
    assert (rc, err) == (2, want), (rc, err)


def test_failure_to_start_still_exits_1(start_server):
    """Exit 1 stays for what no command line can fix: here the port is in use."""
    srv = start_server()
    rc, out, err = run("--listen", "127.0.0.1:%d" % srv.port)
    assert rc == 1 and err.startswith("sse-server: cannot listen on"), (rc, err)


def test_help_states_the_exit_statuses():
    text = " ".join(help_text().split())
    m = re.search(r"Exit status: 0 (.*?) 1 (.*?) 2 (.*?) Examples:", text)
    assert m, text
    assert "SIGTERM" in m.group(1)
    assert "address is in use" in m.group(2)
    assert "usage error" in m.group(3) and "bad value" in m.group(3)


# ---- --help's examples: each a real, working command line ------------------------------

def help_examples():
    """[(comment, [command, ...])] from the Examples: block that ends --help."""
    text = help_text()
    assert "\nExamples:\n" in text
    block = text.split("\nExamples:\n", 1)[1]
    examples = []
    for line in block.rstrip("\n").split("\n"):
        assert line.startswith("  ") and len(line) <= 92, repr(line)
        if line.startswith("  # "):
            examples.append((line[4:], []))
        else:
            examples[-1][1].append(line[2:])
    return examples


def test_help_ends_with_the_five_examples():
    commands = [c for _, cmds in help_examples() for c in cmds if "sse-server" in c]
    assert commands == [
        "sse-server --demo",
        "sse-server --publish-token secret",
        "tail -F app.log | sse-server --stdin",
        "sse-server --proxy /api=http://127.0.0.1:3000",
        "sse-server --publish-token secret --journal events.journal",
    ]


class Example:
    """Runs one of --help's command lines as written, in a shell in directory cwd, with
    sse-server meaning this binary and 127.0.0.1:8080 a free port (the binary gets --listen
    with it). Stopped by killing its process group, which it leads."""

    def __init__(self, command, cwd, port):
        self.command = command.replace("sse-server", "%s --listen 127.0.0.1:%d"
                                       % (shlex.quote(BINARY), port))
        self.command = self.command.replace("127.0.0.1:8080", "127.0.0.1:%d" % port)
        self.proc = subprocess.Popen(["sh", "-c", self.command], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
        return self.proc.communicate(timeout=10)


def wait_healthy(port, proc):
    for _ in range(100):
        assert proc.poll() is None, proc.communicate(timeout=5)
        try:
            return request(port, "GET", "/healthz")
        except OSError:
            time.sleep(0.05)
    raise AssertionError("not listening on %d" % port)


@pytest.fixture
def example(tmp_path):
    """example(first command) -> (the Example started, its group's other commands, port),
    run in tmp_path; every one started is stopped afterwards."""
    started = []
    port = free_port()
    groups = dict((cmds[0], cmds[1:]) for _, cmds in help_examples())

    def start(first):
        ex = Example(first, tmp_path, port)
        started.append(ex)
        wait_healthy(port, ex.proc)
        return ex, groups[first], port

    yield start
    for ex in started:
        ex.stop()


def need_tools(*tools):
    for tool in tools:
        if subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).returncode:
            unavailable("%s is missing (tests/install-deps.sh installs it)" % tool)


def test_help_example_demo(example):
    ex, _, port = example("sse-server --demo")
    assert request(port, "GET", "/").status == 200
    st = Stream(port, "/events/time")
    try:
        assert st.read_event()["event"] == "time"
    finally:
        st.close()


def test_help_example_publish(example, tmp_path):
    """The server, a reader (curl -N) and a publish (curl -d), as written: the reader prints
    the event."""
    need_tools("curl")
    ex, (reader_cmd, publish_cmd), port = example("sse-server --publish-token secret")
    reader = Example(reader_cmd, tmp_path, port)
    try:
        for _ in range(100):
            if metric_values(port)["sse_subscribers"] >= 1:
                break
            time.sleep(0.05)
        out = subprocess.run(["sh", "-c", publish_cmd.replace("127.0.0.1:8080",
                                                              "127.0.0.1:%d" % port)],
                             cwd=tmp_path, capture_output=True, timeout=10)
        assert out.returncode == 0, out
        assert json.loads(out.stdout)["subscribers"] == 1, out.stdout
        for _ in range(100):
            if metric_values(port)["sse_events_delivered_total"] >= 1:
                break
            time.sleep(0.05)
    finally:
        got, _ = reader.stop()
    assert b"\ndata: hello\n" in got, got


def test_help_example_stdin(example, tmp_path):
    need_tools("tail")
    (tmp_path / "app.log").write_text("")
    ex, _, port = example("tail -F app.log | sse-server --stdin")
    st = Stream(port, "/events")
    try:
        with open(tmp_path / "app.log", "a") as f:
            f.write("disk almost full\n")
        assert st.read_event()["data"] == "disk almost full"
    finally:
        st.close()


@pytest.mark.proxy
def test_help_example_proxy(example):
    """The proxy example starts and serves its own paths; /api/... goes to port 3000 (where
    nothing listens here, or something that is not ours: any answer but a hang will do)."""
    ex, _, port = example("sse-server --proxy /api=http://127.0.0.1:3000")
    assert request(port, "GET", "/healthz").status == 200
    assert request(port, "GET", "/api/x").status in (502, 503, 504, 200, 404)


@pytest.mark.journal
def test_help_example_journal(example, tmp_path):
    """An acknowledged event is in events.journal, in the directory the command ran in, and
    replayed by the same command after a restart."""
    cmd = "sse-server --publish-token secret --journal events.journal"
    ex, _, port = example(cmd)
    first = publish(port, b"first", topic="news")
    assert first.status == 200 and publish(port, b"kept", topic="news").status == 200
    ex.stop()
    assert b"kept" in (tmp_path / "events.journal").read_bytes()
    ex, _, port = example(cmd)
    st = Stream(port, "/events/news", headers={"Last-Event-ID": first.json()["id"]})
    try:
        assert st.read_event()["data"] == "kept"
    finally:
        st.close()


# ---- the man page: generated from the option table, like --help -------------------------

def man_page():
    rc, out, err = run("--help-man")
    assert rc == 0 and not err, err
    return out


def man_options(roff):
    """{"--name": "ARG" or None} for every option the man page's OPTIONS section lists."""
    options = roff.split("\n.SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    found = {}
    for m in re.finditer(r"^\.TP\n\\fB((?:\\-){2}[a-z][\w\\-]*)\\fR(?: \\fI(\S+)\\fR)?\n",
                         options, re.M):
        found[m.group(1).replace("\\-", "-")] = m.group(2) and m.group(2).replace("\\-", "-")
    return found


def test_man_page_lists_every_option_of_help():
    """sse-server.1 comes from the same table as --help (--help-man): the same options, with
    the same value names and the same text (defaults included)."""
    roff = man_page()
    help_out = help_text()
    assert man_options(roff) == help_options(help_out)
    assert "--help-man" not in help_out and "help\\-man" not in roff
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES",
                    "SEE ALSO"):
        assert "\n.SH %s\n" % section in roff, section
    plain = " ".join(roff.replace("\\-", "-").replace("\\e", "\\").split())
    for opt in help_options(help_out):
        text = " ".join(option_chunk(help_out, opt).split())
        described = text.split(" ", 2 if help_options(help_out)[opt] else 1)[-1]
        assert described in plain, (opt, described)
    for _, commands in help_examples():
        for command in commands:
            assert command in plain, command


def test_man_page_renders_without_warnings(tmp_path):
    """man -l (groff underneath with -ww, every warning on) renders it with nothing on stderr."""
    page = tmp_path / "sse-server.1"
    page.write_text(man_page())
    env = dict(os.environ, MANWIDTH="80", MAN_DISABLE_SECCOMP="1", LC_ALL="C.UTF-8")
    if subprocess.run(["sh", "-c", "command -v man"], capture_output=True).returncode == 0:
        cmd = ["man", "--warnings=w", "-l", str(page)]  # groff -ww: every warning
    elif subprocess.run(["sh", "-c", "command -v groff"], capture_output=True).returncode == 0:
        cmd = ["groff", "-man", "-Tutf8", "-ww", str(page)]
    else:
        unavailable("man and groff are missing (tests/install-deps.sh installs man-db)")
    r = subprocess.run(cmd, capture_output=True, env=env, timeout=30)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    out = re.sub(r".\x08", "", r.stdout.decode("utf-8", "replace"))
    assert "SSE-SERVER(1)" in out and "--publish-token TOKEN" in out, out[:2000]
    assert "EXIT STATUS" in out and "sse-server --demo" in out
