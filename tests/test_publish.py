"""POST /publish (and DELETE /publish): authorisation, the JSON answer, ids, parameter
validation, UTF-8, size limits, body framing, Expect: 100-continue, keep-alive."""

import re
import time

import pytest

from conftest import (
    Stream,
    build_request,
    connect,
    ev,
    expect_bytes,
    publish,
    read_prelude,
    read_response,
    recv_until,
    request,
)

PUB_RE = re.compile(rb'\{"id": "(\d+)", "topic": "([A-Za-z0-9._-]+)", "subscribers": (\d+)\}\n')
AUTH = {"Authorization": "Bearer secret"}


def parse_ok(r, topic="default"):
    assert r.status == 200, (r.status, r.body)
    assert r.header("Content-Type") == "application/json"
    m = PUB_RE.fullmatch(r.body)
    assert m, r.body
    assert m.group(2).decode() == topic
    return m.group(1).decode(), int(m.group(3))


def raw_exchange(port, raw, timeout=5):
    """Sends raw bytes on a fresh connection; returns (Response, socket). Caller closes."""
    s = connect(port, timeout)
    s.sendall(raw)
    resp, rest = read_response(s, timeout)
    return resp, rest, s


def is_text_error(r):
    assert r.header("Content-Type") == "text/plain; charset=utf-8", r.raw_head
    assert r.body.endswith(b"\n") and r.body.count(b"\n") == 1, r.body


# ---- authorisation ------------------------------------------------------------------------


def test_no_publish_token_configured_403(start_server):
    s = start_server()
    r = publish(s.port, "x")
    assert r.status == 403
    assert b"--publish-token" in r.body
    is_text_error(r)
    r = publish(s.port, "x", token=None)
    assert r.status == 403
    assert b"--publish-token" in r.body


def test_missing_authorization_401(server):
    r = publish(server.port, "x", token=None)
    assert r.status == 401
    assert r.header("WWW-Authenticate") == "Bearer"
    is_text_error(r)


@pytest.mark.valgrind
def test_wrong_tokens_401(server):
    for tok in ("secreT", "terces", "xxxxxx", "secre", "s", "secretx", "secret1", ""):
        r = publish(server.port, "x", token=tok)
        assert r.status == 401, (tok, r.status)
        assert r.header("WWW-Authenticate") == "Bearer"


def test_wrong_scheme_401(server):
    for auth in ("Basic c2VjcmV0", "secret", "Bearer", "Token secret"):
        r = request(server.port, "POST", "/publish", {"Authorization": auth}, b"x")
        assert r.status == 401, (auth, r.status)
        assert r.header("WWW-Authenticate") == "Bearer"


def test_wrong_token_publishes_nothing(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        assert publish(server.port, "bad", token="secreX").status == 401
        r = publish(server.port, "good")
        id_, _ = parse_ok(r)
        expect_bytes(st, ev(id_, "good"))
    finally:
        st.close()


def test_right_token_exact_json(server):
    r = publish(server.port, "hello")
    assert r.status == 200
    assert r.reason == "OK"
    assert r.header("Content-Type") == "application/json"
    assert r.header("Content-Length") == str(len(r.body))
    m = PUB_RE.fullmatch(r.body)
    assert m, r.body
    assert r.body == b'{"id": "%s", "topic": "default", "subscribers": 0}\n' % m.group(1)


def test_scheme_case_insensitive(server):
    r = request(server.port, "POST", "/publish", {"Authorization": "bearer secret"}, b"x")
    parse_ok(r)
    r = request(server.port, "POST", "/publish", {"Authorization": "BEARER secret"}, b"x")
    parse_ok(r)


def test_named_topic_in_json(server):
    r = publish(server.port, "n", topic="news.v1")
    id_, n = parse_ok(r, topic="news.v1")
    assert n == 0


# ---- subscribers count and ids ------------------------------------------------------------


def test_subscriber_count(server):
    port = server.port
    streams = [
        Stream(port, "/events/t"),
        Stream(port, "/events/t"),
        Stream(port, "/events?topic=t&topic=u"),
        Stream(port, "/events/u"),
        Stream(port, "/events"),
    ]
    try:
        for st in streams:
            read_prelude(st)
        _, n = parse_ok(publish(port, "x", topic="t"), topic="t")
        assert n == 3
        _, n = parse_ok(publish(port, "x", topic="u"), topic="u")
        assert n == 2
        _, n = parse_ok(publish(port, "x"))
        assert n == 1
        _, n = parse_ok(publish(port, "x", topic="nobody"), topic="nobody")
        assert n == 0
        # closing subscribers lowers the count once the server notices
        streams[0].close()
        streams[1].close()
        deadline = time.monotonic() + 5
        while True:
            _, n = parse_ok(publish(port, "x", topic="t"), topic="t")
            if n == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert n == 1
    finally:
        for st in streams:
            st.close()


def test_ids_strictly_increasing_across_topics(server):
    ids = []
    for i in range(30):
        r = publish(server.port, str(i), topic=("a", "b", "c")[i % 3])
        id_, _ = parse_ok(r, topic=("a", "b", "c")[i % 3])
        assert re.fullmatch(r"[1-9][0-9]*", id_)
        ids.append(int(id_))
    assert all(x < y for x, y in zip(ids, ids[1:]))


@pytest.mark.valgrind
def test_published_event_arrives_with_returned_id(server):
    st = Stream(server.port, "/events/live")
    try:
        read_prelude(st)
        for i in range(5):
            id_, n = parse_ok(publish(server.port, "msg %d" % i, topic="live", event="m"), "live")
            assert n == 1
            expect_bytes(st, ev(id_, "msg %d" % i, event="m"))
    finally:
        st.close()


# ---- parameters ---------------------------------------------------------------------------


def post(port, path, body=b"x", headers=None):
    h = dict(AUTH)
    h.update(headers or {})
    return request(port, "POST", path, h, body)


def test_bad_parameters_400(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        for path in (
            "/publish?topic=",
            "/publish?topic=a%20b",
            "/publish?topic=a/b",
            "/publish?topic=a%2Fb",
            "/publish?topic=" + "t" * 65,
            "/publish?event=",
            "/publish?event=a%0Ab",
            "/publish?event=a%0Db",
            "/publish?event=a%0D%0Ab",
            "/publish?event=" + "e" * 257,
            "/publish?topic=ok&event=",
        ):
            r = post(server.port, path)
            assert r.status == 400, (path, r.status)
            is_text_error(r)
        # nothing of that reached the subscriber
        id_, _ = parse_ok(post(server.port, "/publish", b"after"))
        expect_bytes(st, ev(id_, "after"))
    finally:
        st.close()


def test_event_256_bytes_ok_and_topic_64_ok(server):
    r = post(server.port, "/publish?event=" + "e" * 256)
    parse_ok(r)
    r = post(server.port, "/publish?topic=" + "t" * 64)
    parse_ok(r, topic="t" * 64)


def test_query_plus_is_space(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        id_, _ = parse_ok(post(server.port, "/publish?event=a+b", b"plus"))
        expect_bytes(st, ev(id_, "plus", event="a b"))
        id_, _ = parse_ok(post(server.port, "/publish?event=c%20d%2Be", b"pct"))
        expect_bytes(st, ev(id_, "pct", event="c d+e"))
    finally:
        st.close()


# ---- body ---------------------------------------------------------------------------------


@pytest.mark.valgrind
def test_invalid_utf8_400_nothing_delivered(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        for body in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"ok\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"):
            r = post(server.port, "/publish", body)
            assert r.status == 400, (body, r.status)
        assert st.nothing_pending(0.3)
        id_, _ = parse_ok(post(server.port, "/publish", "\u20ac\U0001F600".encode()))
        expect_bytes(st, ev(id_, "\u20ac\U0001F600"))
    finally:
        st.close()


def test_no_body_is_empty_data(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        raw = b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nConnection: close\r\n\r\n"
        r, _, s = raw_exchange(server.port, raw)
        s.close()
        id_, _ = parse_ok(r)
        expect_bytes(st, ev(id_, ""))
    finally:
        st.close()


def test_max_event_bytes(start_server):
    s = start_server("--publish-token", "secret", "--max-event-bytes", "10")
    r = post(s.port, "/publish", b"0123456789")
    parse_ok(r)
    r = post(s.port, "/publish", b"0123456789A")
    assert r.status == 413
    assert r.header("Connection") == "close"
    # still serving
    parse_ok(post(s.port, "/publish", b""))


@pytest.mark.valgrind
def test_413_closes_connection(start_server):
    s = start_server("--publish-token", "secret", "--max-event-bytes", "10")
    raw = build_request("POST", "/publish", AUTH, b"0123456789ABCDEF")
    r, rest, sock = raw_exchange(s.port, raw)
    try:
        assert r.status == 413
        assert r.header("Connection") == "close"
        sock.settimeout(5)
        try:
            tail = sock.recv(100)
        except ConnectionResetError:
            tail = b""
        assert rest + tail == b""
    finally:
        sock.close()


@pytest.mark.valgrind
def test_chunked_411(server):
    raw = (
        b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    r, _, s = raw_exchange(server.port, raw)
    s.close()
    assert r.status == 411


@pytest.mark.valgrind
def test_content_length_and_transfer_encoding_400(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        raw = (
            b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"
        )
        r, _, s = raw_exchange(server.port, raw)
        s.close()
        assert r.status == 400
        assert st.nothing_pending(0.3)
    finally:
        st.close()


@pytest.mark.valgrind
def test_expect_100_continue(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        s = connect(server.port)
        try:
            s.sendall(
                b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
                b"Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            interim, rest = recv_until(s, b"\r\n\r\n", 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            assert rest == b""
            s.sendall(b"hello")
            r, _ = read_response(s, 5, rest)
            id_, _ = parse_ok(r)
        finally:
            s.close()
        expect_bytes(st, ev(id_, "hello"))
    finally:
        st.close()


def test_keep_alive_two_publishes(server):
    st = Stream(server.port, "/events/ka")
    s = connect(server.port)
    try:
        read_prelude(st)
        s.sendall(build_request("POST", "/publish?topic=ka", AUTH, b"first"))
        r1, rest = read_response(s, 5)
        assert r1.header("Connection") in (None, "keep-alive")
        id1, n1 = parse_ok(r1, "ka")
        s.sendall(build_request("POST", "/publish?topic=ka", AUTH, b"second"))
        r2, rest = read_response(s, 5, rest)
        id2, n2 = parse_ok(r2, "ka")
        assert rest == b""
        assert int(id1) < int(id2)
        assert n1 == n2 == 1
        expect_bytes(st, ev(id1, "first") + ev(id2, "second"))
    finally:
        s.close()
        st.close()


@pytest.mark.valgrind
def test_pipelined_publishes(server):
    st = Stream(server.port)
    s = connect(server.port)
    try:
        read_prelude(st)
        s.sendall(
            build_request("POST", "/publish", AUTH, b"p1")
            + build_request("POST", "/publish", AUTH, b"p2")
            + build_request("POST", "/publish", AUTH, b"p3", close=True)
        )
        rest = b""
        ids = []
        for _ in range(3):
            r, rest = read_response(s, 5, rest)
            ids.append(parse_ok(r)[0])
        expect_bytes(st, ev(ids[0], "p1") + ev(ids[1], "p2") + ev(ids[2], "p3"))
    finally:
        s.close()
        st.close()


# ---- DELETE and methods -------------------------------------------------------------------


@pytest.mark.valgrind
def test_delete_publish_json(server):
    r = request(server.port, "DELETE", "/publish?topic=gone", AUTH)
    assert r.status == 200
    assert r.header("Content-Type") == "application/json"
    assert r.body == b'{"topic": "gone", "closed": 0}\n'


def test_delete_publish_needs_token(server):
    r = request(server.port, "DELETE", "/publish?topic=gone")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == "Bearer"
    r = request(server.port, "DELETE", "/publish?topic=gone", {"Authorization": "Bearer secreX"})
    assert r.status == 401


def test_get_publish_405(server):
    r = request(server.port, "GET", "/publish", AUTH)
    assert r.status == 405
    assert r.header("Allow") == "POST, DELETE, OPTIONS"


def test_default_max_event_bytes_1mib(start_server):
    # (--client-buffer above the default 1 MiB: a framed 1 MiB event is larger than 1 MiB,
    # so with the default buffer the subscriber would be dropped as slow)
    s = start_server("--publish-token", "secret", "--client-buffer", "4m")
    st = Stream(s.port)
    try:
        read_prelude(st)
        body = b"x" * 1048576
        id_, n = parse_ok(post(s.port, "/publish", body))
        assert n == 1
        expect_bytes(st, b"id: %s\ndata: %s\n\n" % (id_.encode(), body), timeout=10)
        r = post(s.port, "/publish", body + b"x")
        assert r.status == 413
        assert st.nothing_pending(0.3)
    finally:
        st.close()


@pytest.mark.valgrind
def test_max_size_event_reaches_idle_subscriber(server):
    """With the defaults a 1 MiB payload frames to more than --client-buffer (1 MiB), but an
    idle subscriber always takes one event: it is delivered whole, not counted as a drop."""
    st = Stream(server.port)
    try:
        read_prelude(st)
        id_, n = parse_ok(post(server.port, "/publish", b"x" * 1048576))
        assert n == 1
        want = ("id: %s\ndata: " % id_).encode() + b"x" * 1048576 + b"\n\n"
        assert st.read_exactly(len(want), timeout=10) == want
        m = request(server.port, "GET", "/metrics").body.decode()
        assert "\nsse_subscribers_dropped_total 0\n" in m
    finally:
        st.close()


@pytest.mark.valgrind
def test_cors_on_publish_and_preflight(start_server):
    s = start_server("--publish-token", "secret", "--cors", "https://example.com")
    r = request(s.port, "OPTIONS", "/publish", {"Origin": "https://evil.example"})
    assert r.status == 204
    assert r.header("Access-Control-Allow-Origin") == "https://example.com"
    assert r.header("Access-Control-Allow-Credentials") == "true"
    assert r.header("Access-Control-Allow-Methods") == "POST, DELETE, OPTIONS"
    assert r.header("Access-Control-Allow-Headers") == "Authorization, Content-Type, Last-Event-ID"
    assert r.header("Access-Control-Max-Age") == "600"
    assert b"evil" not in r.raw_head
    r = request(
        s.port, "POST", "/publish", {"Authorization": "Bearer secret", "Origin": "https://evil.example"}, b"x"
    )
    parse_ok(r)
    assert r.header_all("Access-Control-Allow-Origin") == ["https://example.com"]
    assert b"evil" not in r.raw_head


def test_options_publish_without_cors(server):
    r = request(server.port, "OPTIONS", "/publish")
    assert r.status == 204
    assert b"Access-Control" not in r.raw_head


@pytest.mark.valgrind
def test_body_arriving_in_pieces(server):
    """A publish whose head and body arrive over several reads, with a pipelined request
    right behind the body, is read exactly: nothing of the body is lost or taken for the
    next request."""
    import time

    st = Stream(server.port)
    try:
        read_prelude(st)
        s = connect(server.port)
        s.sendall(
            b"POST /publish?topic=default HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer secret\r\nContent-Length: 11\r\n\r\nhel"
        )
        time.sleep(0.2)
        s.sendall(b"lo ")
        time.sleep(0.2)
        s.sendall(b"worldGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first, rest = read_response(s)
        assert first.status == 200, first.body
        second, _ = read_response(s, buf=rest)
        assert second.status == 200 and second.body == b"ok\n"
        s.close()
        assert st.read_event()["data"] == "hello world"
    finally:
        st.close()
