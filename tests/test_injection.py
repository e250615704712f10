"""Nothing let in: CR, LF, CRLF, NUL and the other control bytes, percent-encoded and raw, in
topic names (the stream path's segment and ?topic=), event types (?event= of POST /publish:
the only way an event type arrives over HTTP), tokens (Authorization: Bearer and ?token=) and
request paths never reach a response head, never start a header line of their own, and never
split an event; each gets its 4xx; and no error answer carries an internal detail (a path of
the server's, an errno string, a pointer).

Every request goes over a raw socket, byte for byte, and every answer is compared whole, as
bytes, with the one expected: status line, Date (the only varying part, matched as an
IMF-fixdate), every header line and the body, then whether the connection was closed or kept
(and, when kept, that nothing followed the answer). So a server that echoed the value
anywhere, decoded or not, in a header of its own, a new header line or the body, would send
different bytes and fail. To show that this holds for each case and is not a property of the
comparison being loose, every case also feeds the comparison the answers a reflecting server
would send (the decoded value as a header line of its own, in the reason phrase, in the body)
and requires each to be rejected."""

import os
import re
import select
import time

import pytest

from conftest import Stream, connect, recv_all, recv_until

DATE = re.compile(
    rb"\r\nDate: ((Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT)\r\n"
)
TEXT = b"text/plain; charset=utf-8"
# What a value is made of: the line breaks HTTP and the event stream know (CR, LF, CRLF),
# NUL, and other C0 controls and DEL; each is tried as a byte and as a percent-escape.
CONTROLS = {
    "CR": b"\r",
    "LF": b"\n",
    "CRLF": b"\r\n",
    "NUL": b"\x00",
    "SOH": b"\x01",
    "TAB": b"\t",
    "VT": b"\x0b",
    "FF": b"\x0c",
    "ESC": b"\x1b",
    "DEL": b"\x7f",
}
TAIL = b"X-Injected: 1"  # what an attacker would like to become a header line


def pct(raw):
    return b"".join(b"%%%02x" % c for c in raw)


def pct_value(raw):
    """The value as it goes in a URL: percent-escaped, the space of TAIL included."""
    return pct(raw) + TAIL.replace(b" ", b"%20")


# ---- the comparison --------------------------------------------------------------------


def answer(status, reason, body, close=False, extra=b"", ctype=TEXT):
    """An answer as sse-server writes it (http_respond()), with DATE standing for the Date
    header: (status line and headers before Date, after Date, body, close)."""
    head = b"HTTP/1.1 %d %s" % (status, reason)
    rest = b""
    if ctype:
        rest += b"Content-Type: " + ctype + b"\r\n"
    rest += b"Content-Length: %d\r\n" % len(body)
    if close:
        rest += b"Connection: close\r\n"
    return head, rest + extra + b"\r\n", body, close


BAD = lambda msg, close: answer(400, b"Bad Request", msg + b"\n", close)  # noqa: E731
MALFORMED = BAD(b"malformed request", True)
PERCENT_NUL = BAD(b"malformed percent-escape, %00 or too many parameters in URL", True)
BAD_TOPIC = BAD(b"invalid topic name: use 1 to 64 of A-Z a-z 0-9 . _ -", False)
BAD_EVENT = BAD(b"invalid event type: 1 to 256 bytes of UTF-8 without CR, LF or NUL", True)
NOT_FOUND = answer(404, b"Not Found", b"not found\n")
SUB_401 = answer(401, b"Unauthorized", b"subscribing needs a token\n",
                 extra=b"WWW-Authenticate: Bearer\r\n")
PUB_401 = answer(401, b"Unauthorized", b"publishing needs Authorization: Bearer <token>\n",
                 close=True, extra=b"WWW-Authenticate: Bearer\r\n")
STREAM_HEAD = (b"HTTP/1.1 200 OK", b"Content-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache, no-transform\r\nX-Accel-Buffering: no\r\n\r\n",
               None, False)


def matches(got, want):
    """Whether the bytes got are exactly the answer want (see answer()); got is the head and
    body as read. Returns None, or what differs."""
    head, after_date, body, _ = want
    m = DATE.search(got)
    if not m:
        return "no Date header where it belongs: %r" % got[:300]
    expected = head + b"\r\nDate: " + m.group(1) + b"\r\n" + after_date
    if body is not None:
        expected += body
    if got != expected:
        return "answer differs:\n  got      %r\n  expected %r" % (got, expected)
    return None


def reflections(got, value):
    """The answers a server that reflected value (decoded) would send instead of got."""
    head, _, body = got.partition(b"\r\n\r\n")
    status_line, _, headers = head.partition(b"\r\n")
    return [
        status_line + b"\r\n" + value + b"\r\n" + headers + b"\r\n\r\n" + body,  # own line
        status_line + value + b"\r\n" + headers + b"\r\n\r\n" + body,  # reason phrase
        head + b"\r\nX-Topic: " + value + b"\r\n\r\n" + body,  # in a header of ours
        head + b"\r\n\r\n" + body + value,  # in the body
    ]


def exchange(port, raw, want):
    """Sends raw on a fresh connection and reads one answer (by its Content-Length; a stream
    head alone for a 200 stream). Returns the answer's bytes and whether the server closed
    the connection after it; a kept connection must have nothing more to say."""
    s = connect(port)
    try:
        s.sendall(raw)
        head, rest = recv_until(s, b"\r\n\r\n", 5)
        if want[2] is None:  # a stream: the head only
            return head, False
        m = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        assert m, head
        n = int(m.group(1))
        deadline = time.monotonic() + 5
        while len(rest) < n:
            assert time.monotonic() < deadline, (head, rest)
            chunk = s.recv(65536)
            assert chunk, (head, rest)
            rest += chunk
        got, rest = head + rest[:n], rest[n:]
        assert rest == b"", (got, rest)
        if want[3]:  # to be closed: the end of input must come
            try:
                return got, recv_all(s, 5) == b""
            except AssertionError:
                return got, False
        readable, _, _ = select.select([s], [], [], 0.2)
        if readable:
            assert s.recv(65536) == b"", got
        return got, bool(readable)
    finally:
        s.close()


def check(port, name, raw, want, value):
    """The whole check of one case: the exact answer and close, and that each reflecting
    variant of it would have been caught."""
    got, closed = exchange(port, raw, want)
    why = matches(got, want)
    assert why is None, "%s: %s" % (name, why)
    assert closed == want[3], "%s: %s the connection" % (name, "closed" if closed else "kept")
    assert b"X-Injected" not in got, (name, got)
    for variant in reflections(got, value):
        assert matches(variant, want) is not None, (name, variant)


@pytest.fixture
def srv(start_server, tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "index.html").write_bytes(b"<p>d</p>\n")
    return start_server("--publish-token", "secret", "--subscribe-token", "sub",
                        "--root", str(root))


def request_line(target, headers=b"", body=b""):
    return b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body


def publish_line(query, headers=b"Authorization: Bearer secret\r\n"):
    return (b"POST /publish?" + query + b" HTTP/1.1\r\nHost: x\r\n" + headers
            + b"Content-Length: 1\r\n\r\nx")


# ---- topic names, event types and paths, percent-encoded ---------------------------------

# target(value) -> request, and what a control byte there must get. %00 is refused by the
# percent-decoder before anything looks at the value (and the connection closed: the
# request is not trusted); any other control byte is an invalid topic (the request is fine,
# the connection kept), an invalid event type (closed: its body was never read) or, in a
# path, a file that does not exist.
ENCODED = {
    "topic in the stream path": (
        lambda v: request_line(b"/events/a" + v, b"Authorization: Bearer sub\r\n"),
        lambda c: BAD_TOPIC),
    "topic in ?topic=": (
        lambda v: request_line(b"/events?topic=a" + v, b"Authorization: Bearer sub\r\n"),
        lambda c: BAD_TOPIC),
    "topic of a publish": (
        lambda v: publish_line(b"topic=a" + v),
        lambda c: BAD(b"invalid topic name: use 1 to 64 of A-Z a-z 0-9 . _ -", True)),
    "event type of a publish": (
        lambda v: publish_line(b"topic=a&event=e" + v),
        lambda c: BAD_EVENT if c in (b"\r", b"\n", b"\r\n") else None),
    "path": (lambda v: request_line(b"/d" + v), lambda c: NOT_FOUND),
    "path under the stream prefix with a token": (
        lambda v: request_line(b"/events/" + v + b"?token=sub"), lambda c: BAD_TOPIC),
    "?token= of a stream": (lambda v: request_line(b"/events?token=sub" + v),
                            lambda c: SUB_401),
}


@pytest.mark.parametrize("where", sorted(ENCODED))
def test_percent_encoded_controls(srv, where):
    build, rule = ENCODED[where]
    for name, c in CONTROLS.items():
        want = PERCENT_NUL if c == b"\x00" else rule(c)
        if want is None:
            continue  # allowed: see test_event_type_controls_stay_on_their_line
        check(srv.port, "%s, %s" % (where, name), build(pct_value(c)), want, c + TAIL)


TOPIC_PLACES = ["topic in the stream path", "topic in ?topic=", "topic of a publish",
                "path under the stream prefix with a token"]


@pytest.mark.parametrize("where", TOPIC_PLACES)
def test_a_control_alone_makes_a_topic_invalid(srv, where):
    """The same cases with nothing else wrong in the name ("a%0Db" rather than the tail
    above, whose ':' and space are invalid in a topic on their own): the control byte alone
    must make the topic invalid."""
    build, rule = ENCODED[where]
    for name, c in CONTROLS.items():
        if c != b"\x00":
            check(srv.port, "%s, %s alone" % (where, name), build(pct(c) + b"b"), rule(c), c)


# ---- the same, raw ------------------------------------------------------------------------


RAW_TARGETS = {
    "topic in the stream path": lambda v: request_line(b"/events/a" + v),
    "topic in ?topic=": lambda v: request_line(b"/events?topic=a" + v),
    "event type of a publish": lambda v: publish_line(b"topic=a&event=e" + v),
    "path": lambda v: request_line(b"/d" + v),
    "?token= of a stream": lambda v: request_line(b"/events?token=sub" + v),
}


@pytest.mark.parametrize("where", sorted(RAW_TARGETS))
def test_raw_controls_in_the_request_target(srv, where):
    """A control byte (a space even) cannot be part of a request target: a raw one breaks the
    request line, which is refused as a whole with 400 and a close."""
    for name, c in CONTROLS.items():
        check(srv.port, "%s, raw %s" % (where, name), RAW_TARGETS[where](c + TAIL.replace(
            b" ", b"")), MALFORMED, c + TAIL)


# ---- tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["stream", "publish"])
def test_controls_in_a_bearer_token(srv, endpoint):
    """Authorization: Bearer <token><control>X-Injected: 1, raw, in a header. A field value
    may hold no control byte but TAB (RFC 9110 5.5): any other is refused with 400 and a
    close. TAB makes the token wrong (401). LF and CRLF end the field line (a bare LF ends a
    line, RFC 9112 2.2), so X-Injected is a field the client sent itself and the token before
    it is right: the request succeeds, and nothing of the field comes back."""
    token = b"sub" if endpoint == "stream" else b"secret"
    for name, c in CONTROLS.items():
        field = b"Authorization: Bearer " + token + c + TAIL + b"\r\n"
        raw = request_line(b"/events", field) if endpoint == "stream" else publish_line(
            b"topic=a", field)
        if c in (b"\n", b"\r\n"):
            if endpoint == "publish":
                continue  # accepted: test_bearer_token_ended_by_lf_publishes checks the answer
            want = STREAM_HEAD
        elif c == b"\t":
            want = SUB_401 if endpoint == "stream" else PUB_401
        else:
            want = MALFORMED
        check(srv.port, "%s token, %s" % (endpoint, name), raw, want, c + TAIL)


def test_bearer_token_ended_by_lf_publishes(srv):
    for c in (b"\n", b"\r\n"):
        raw = publish_line(b"topic=a", b"Authorization: Bearer secret" + c + TAIL + b"\r\n")
        got, closed = exchange(srv.port, raw, answer(200, b"OK", b"", False))
        m = re.search(rb'\r\n\r\n\{"id": "(\d+)", "topic": "a", "subscribers": 0\}\n$', got)
        assert m and not closed, got
        body = b'{"id": "%s", "topic": "a", "subscribers": 0}\n' % m.group(1)
        assert matches(got, answer(200, b"OK", body, ctype=b"application/json")) is None, got


# ---- what is allowed is delivered on its own line -------------------------------------------


def test_event_type_controls_stay_on_their_line(srv):
    """An event type may hold any UTF-8 but CR, LF and NUL (WHATWG 9.2.6 splits lines only on
    those): the other controls are published and reach a subscriber inside the one event:
    line, never as a line (or a field) of their own."""
    st = Stream(srv.port, "/events/a", headers={"Authorization": "Bearer sub"})
    try:
        assert st.read_block() == b"retry: 3000\n\n"
        st.read_block()  # id: the current id
        for name, c in CONTROLS.items():
            if c in (b"\r", b"\n", b"\r\n", b"\x00"):
                continue
            got, closed = exchange(srv.port, publish_line(b"topic=a&event=e" + pct_value(c)),
                                   answer(200, b"OK", b""))
            m = re.search(rb'\{"id": "(\d+)", "topic": "a", "subscribers": 1\}\n$', got)
            assert m and not closed, (name, got)
            block = st.read_block()
            assert block == b"id: %s\nevent: e%s%s\ndata: x\n\n" % (m.group(1), c, TAIL), (
                name, block)
    finally:
        st.close()


def test_last_event_id_reaches_only_the_reset_events_json(start_server):
    """A Last-Event-ID that can't be replayed is echoed only inside the reset event's JSON,
    escaped: never as a line of the stream."""
    srv = start_server("--subscribe-token", "sub")
    st = Stream(srv.port, "/events?token=sub&lastEventId=1%0d%0aid:%202%0aevent:%20evil")
    try:
        assert st.status == 200
        st.read_block()
        block = st.read_block()
        assert block.count(b"\n") == 4  # id, event: reset, one data line, blank line
        assert b"event: reset\n" in block and b"event: evil" not in block.split(b"data:")[0]
        assert b"\\u000d\\u000aid: 2\\u000aevent: evil" in block
    finally:
        st.close()


# ---- no internal details -------------------------------------------------------------------


def test_error_answers_carry_no_internal_details(srv, tmp_path):
    """Every error answer is one of the short fixed texts: none names a file of the server's
    (its working directory, its root), an errno string, or a pointer."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret\n")
    os.symlink(outside, tmp_path / "root" / "link")
    raws = [
        request_line(b"/nope.html"),
        request_line(b"/../outside.txt"),
        request_line(b"/%2e%2e/outside.txt"),
        request_line(b"/link"),
        request_line(b"/d/missing/"),
        request_line(b"/d/index.html/"),
        request_line(b"/events/a%0d%0a"),
        request_line(b"/events"),
        b"DELETE /events HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        publish_line(b"topic=a", b""),
        publish_line(b"topic=a&event=%0a"),
        b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
        b"Content-Length: 99999999999\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
        b"Transfer-Encoding: gzip\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
        b"Content-Length: 2\r\n\r\n\xff\xfe",
        request_line(b"/events", b"Accept: text/html\r\n"),
    ]
    internal = [os.getcwd().encode(), str(tmp_path).encode(), b"sse.c", b"errno", b".c:"]
    internal += [os.strerror(e).encode() for e in range(1, 134)]
    for raw in raws:
        s = connect(srv.port)
        try:
            s.sendall(raw)
            head, rest = recv_until(s, b"\r\n\r\n", 5)
            n = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head).group(1))
            while len(rest) < n:
                chunk = s.recv(65536)
                assert chunk, (raw[:80], head)
                rest += chunk
        finally:
            s.close()
        status = int(head[9:12])
        assert 400 <= status < 500 or status == 505, (raw[:80], head)
        got = head + rest
        assert not re.search(rb"0x[0-9a-fA-F]{4,}", got), (raw[:80], got)
        for detail in internal:
            assert detail not in got, (raw[:80], detail, got)
        assert re.fullmatch(rb"[ -~]{1,80}\n", rest[:n]), (raw[:80], rest)  # one short line
