"""The stream endpoint: response head, prelude, framing, topics, Accept, subscribe token,
heartbeats, HTTP/1.0, methods, retiring topics, CORS."""

import re
import time

import pytest

from conftest import (
    Stream,
    ask,
    build_request,
    connect,
    ev,
    expect_bytes,
    parse_head,
    pub,
    read_prelude,
    recv_until,
    request,
)

DATE_RE = rb"Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT"
STREAM_HEADERS = [
    b"Content-Type: text/event-stream",
    b"Cache-Control: no-cache, no-transform",
    b"X-Accel-Buffering: no",
]


# ---- helpers ------------------------------------------------------------------------------


def pub_raw_path(port, path, data=b"", token="secret"):
    r = request(port, "POST", path, {"Authorization": "Bearer " + token}, data)
    assert r.status == 200, (r.status, r.body)
    return r.json()["id"]


def check_stream_head(raw_head, extra=()):
    lines = raw_head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK", raw_head
    assert re.fullmatch(DATE_RE, lines[1]), raw_head
    assert lines[2:] == STREAM_HEADERS + list(extra) + [b"", b""], raw_head


def open_raw_stream(port, raw, timeout=5):
    st = Stream.__new__(Stream)
    st.sock = connect(port, timeout)
    st.sock.sendall(raw)
    head, st.buf = recv_until(st.sock, b"\r\n\r\n", timeout)
    st.status, st.reason, st.headers = parse_head(head)
    st.raw_head = head
    return st


# ---- head and prelude ---------------------------------------------------------------------


@pytest.mark.valgrind
def test_stream_head_exact(server):
    st = Stream(server.port)
    try:
        check_stream_head(st.raw_head)
        for name in ("Content-Length", "Transfer-Encoding", "Connection"):
            assert st.header(name) is None
        read_prelude(st)
    finally:
        st.close()


def test_prelude_is_retry_then_current_id(server):
    cur = pub(server.port, "x", topic="elsewhere")
    st = Stream(server.port)
    try:
        want = b"retry: 3000\n\nid: %s\nevent: position\ndata:\n\n" % cur.encode()
        expect_bytes(st, want)
        assert st.nothing_pending(0.3)
    finally:
        st.close()


def test_initial_id_without_any_publish_is_clock_seed(start_server):
    before = time.time()
    s = start_server()
    after = time.time()
    st = Stream(s.port)
    try:
        cur = int(read_prelude(st))
        # seeded with the wall clock in microseconds
        assert int((before - 60) * 1e6) <= cur <= int((after + 60) * 1e6)
    finally:
        st.close()


def test_initial_id_follows_latest_publish(server):
    ids = [pub(server.port, "e%d" % i, topic="t%d" % i) for i in range(3)]
    st = Stream(server.port, "/events/zzz")
    try:
        assert read_prelude(st) == ids[-1]
    finally:
        st.close()


def test_initial_id_refreshed_by_each_publish(start_server):
    """The opening id is the latest id at the moment of subscribing, also when streams have
    opened before (the server keeps that block between publishes, so each publish must
    replace it). Checked exactly, with and without the position event."""
    for extra, shape in (((), b"id: %s\nevent: position\ndata:\n\n"),
                         (("--no-position-event",), b"id: %s\n\n")):
        s = start_server("--publish-token", "secret", *extra)
        cur = None
        for i in range(4):
            st = Stream(s.port, "/events/watch")
            try:
                got = st.read_block() + st.read_block()  # the retry block, the opening id
                if cur is None:  # before any publish: the clock seed
                    seed = re.escape(shape).replace(b"%s", rb"\d+")
                    assert re.fullmatch(b"retry: 3000\n\n" + seed, got), got
                else:
                    assert got == b"retry: 3000\n\n" + shape % cur.encode(), (i, cur, got)
                assert st.nothing_pending(0.1)
            finally:
                st.close()
            cur = pub(s.port, "e%d" % i, topic="elsewhere")


def test_no_position_event_opens_with_a_bare_id_block(start_server):
    """--no-position-event: the current id alone, in a block that dispatches nothing (for
    clients that handle every event alike; only Chromium records its id)."""
    s = start_server("--no-position-event", "--publish-token", "secret")
    cur = pub(s.port, "x", topic="elsewhere")
    st = Stream(s.port)
    try:
        expect_bytes(st, b"retry: 3000\n\nid: %s\n\n" % cur.encode())
        assert st.nothing_pending(0.3)
    finally:
        st.close()


def test_retry_option(start_server):
    s = start_server("--retry", "1234")
    st = Stream(s.port)
    try:
        check_stream_head(st.raw_head)
        blk = st.read_block()
        assert blk == b"retry: 1234\n\n"
        assert re.fullmatch(rb"id: \d+\nevent: position\ndata:\n\n", st.read_block())
    finally:
        st.close()


def test_retry_zero_sends_no_retry_line(start_server):
    s = start_server("--retry", "0")
    st = Stream(s.port)
    try:
        check_stream_head(st.raw_head)
        blk = st.read_block()
        assert re.fullmatch(rb"id: \d+\nevent: position\ndata:\n\n", blk), blk
    finally:
        st.close()


# ---- framing ------------------------------------------------------------------------------


# Each case: what is published (payload, event type) and the data lines the server frames it
# as. tests/test_node.py runs the bytes of every case through eventsource-parser as well.
FRAMING_CASES = {
    "simple": ("hello", None, ["hello"]),
    "multiline_cr_crlf_lf": ("a\rb\r\nc\nd", None, ["a", "b", "c", "d"]),
    "empty_payload": ("", None, [""]),
    "trailing_newline": ("x\n", None, ["x", ""]),
    "blank_lines_inside": ("a\n\nb\r\rc\r\n\r\nd", None, ["a", "", "b", "", "c", "", "d"]),
    "leading_spaces_kept": (" x", None, [" x"]),
    "utf8_multibyte_and_emoji": (
        "h\u00e9llo \u20ac \u4e2d\u6587 \U0001F600\n\u00fcber",
        None,
        ["h\u00e9llo \u20ac \u4e2d\u6587 \U0001F600", "\u00fcber"],
    ),
    "event_type_line": ("p", "price", ["p"]),
    "event_type_and_multiline": ("1\n2", "update.v2", ["1", "2"]),
    "colon_and_data_like_payload": ("data: fake\nid: 7\n: c", None, ["data: fake", "id: 7", ": c"]),
    "many_lines": ("\n".join("line %d" % i for i in range(5000)), None,
                   ["line %d" % i for i in range(5000)]),
}


@pytest.mark.valgrind
@pytest.mark.parametrize("case", sorted(FRAMING_CASES))
def test_framing(server, case):
    payload, event, want_lines = FRAMING_CASES[case]
    st = Stream(server.port)
    try:
        read_prelude(st)
        id_ = pub(server.port, payload.encode("utf-8"), event=event)
        expect_bytes(st, ev(id_, *want_lines, event=event))
        assert st.nothing_pending(0.2)
    finally:
        st.close()


def test_leading_space_is_doubled_on_the_wire(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        id_ = pub(server.port, " x")
        expect_bytes(st, b"id: %s\ndata:  x\n\n" % id_.encode())
    finally:
        st.close()


# ---- topics -------------------------------------------------------------------------------


def test_default_topic(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        pub(server.port, "other", topic="notdefault")
        id_ = pub(server.port, "mine", topic="default")
        expect_bytes(st, ev(id_, "mine"))
        assert st.nothing_pending(0.2)
    finally:
        st.close()


def test_default_topic_is_publish_default(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        id_ = pub(server.port, "implicit")
        expect_bytes(st, ev(id_, "implicit"))
    finally:
        st.close()


def test_single_named_topic(server):
    st = Stream(server.port, "/events/news")
    try:
        read_prelude(st)
        pub(server.port, "d")
        pub(server.port, "s", topic="sports")
        id_ = pub(server.port, "n", topic="news")
        expect_bytes(st, ev(id_, "n"))
        assert st.nothing_pending(0.2)
    finally:
        st.close()


def test_topic_name_charset_allowed(server):
    name = "Az09._-x"
    st = Stream(server.port, "/events/" + name)
    try:
        assert st.status == 200
        read_prelude(st)
        id_ = pub(server.port, "ok", topic=name)
        expect_bytes(st, ev(id_, "ok"))
    finally:
        st.close()


def test_topic_64_chars_ok(server):
    name = "a" * 64
    st = Stream(server.port, "/events/" + name)
    try:
        assert st.status == 200
        read_prelude(st)
        id_ = pub(server.port, "long", topic=name)
        expect_bytes(st, ev(id_, "long"))
    finally:
        st.close()


@pytest.mark.valgrind
def test_multi_topic_in_id_order(server):
    st = Stream(server.port, "/events?topic=a&topic=b")
    try:
        check_stream_head(st.raw_head)
        read_prelude(st)
        a1 = pub(server.port, "a1", topic="a")
        pub(server.port, "c1", topic="c")
        b1 = pub(server.port, "b1", topic="b")
        a2 = pub(server.port, "a2", topic="a")
        pub(server.port, "d1")
        b2 = pub(server.port, "b2", topic="b", event="bee")
        want = ev(a1, "a1") + ev(b1, "b1") + ev(a2, "a2") + ev(b2, "b2", event="bee")
        expect_bytes(st, want)
        assert int(a1) < int(b1) < int(a2) < int(b2)
        assert st.nothing_pending(0.3)
    finally:
        st.close()


def test_path_topic_union_with_query_topic(server):
    st = Stream(server.port, "/events/x?topic=y")
    try:
        assert st.status == 200
        read_prelude(st)
        x = pub(server.port, "x", topic="x")
        pub(server.port, "z", topic="z")
        y = pub(server.port, "y", topic="y")
        pub(server.port, "d")
        expect_bytes(st, ev(x, "x") + ev(y, "y"))
        assert st.nothing_pending(0.3)
    finally:
        st.close()


def test_32_topics_ok(server):
    q = "&".join("topic=t%d" % i for i in range(32))
    st = Stream(server.port, "/events?" + q)
    try:
        assert st.status == 200
        read_prelude(st)
        id_ = pub(server.port, "last", topic="t31")
        expect_bytes(st, ev(id_, "last"))
    finally:
        st.close()


@pytest.mark.valgrind
def test_33_topics_rejected(server):
    q = "&".join("topic=t%d" % i for i in range(33))
    r = ask(server.port, "/events?" + q)
    assert r.status == 400


def test_33_topics_with_path_topic_rejected(server):
    q = "&".join("topic=t%d" % i for i in range(32))
    r = ask(server.port, "/events/extra?" + q)
    assert r.status == 400


def test_invalid_topic_names(server):
    for path in (
        "/events/" + "a" * 65,
        "/events/a%20b",
        "/events/a/b",
        "/events/",
        "/events/a%2Fb",
        "/events/caf%C3%A9",
        "/events?topic=",
        "/events?topic=a%20b",
        "/events?topic=a+b",
        "/events?topic=" + "b" * 65,
        "/events?topic=ok&topic=bad!",
        "/events/ok?topic=a%2Fb",
    ):
        r = ask(server.port, path)
        assert r.status == 400, (path, r.status)
        assert r.header("Content-Type") == "text/plain; charset=utf-8", path
    # and the server still serves
    st = Stream(server.port)
    try:
        assert st.status == 200
    finally:
        st.close()


# ---- Accept -------------------------------------------------------------------------------


@pytest.mark.valgrind
def test_accept_json_406(server):
    r = ask(server.port, "/events", {"Accept": "application/json"})
    assert r.status == 406


def test_accept_text_html_406(server):
    r = ask(server.port, "/events", {"Accept": "text/html"})
    assert r.status == 406


def test_accept_event_stream_q0_406(server):
    r = ask(server.port, "/events", {"Accept": "text/event-stream;q=0"})
    assert r.status == 406


def test_accept_variants_ok(server):
    for accept in (
        "text/event-stream",
        "*/*",
        "text/*",
        "text/event-stream;q=0.5",
        "text/html, */*;q=0.1",
        "application/json, text/event-stream",
    ):
        st = Stream(server.port, "/events", {"Accept": accept})
        try:
            assert st.status == 200, accept
            check_stream_head(st.raw_head)
            read_prelude(st)
        finally:
            st.close()


# ---- subscribe token ----------------------------------------------------------------------


def test_subscribe_token_missing_401(start_server):
    s = start_server("--subscribe-token", "tok123")
    r = ask(s.port, "/events")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == "Bearer"


@pytest.mark.valgrind
def test_subscribe_token_wrong_401(start_server):
    s = start_server("--subscribe-token", "tok123")
    for path, headers in (
        ("/events", {"Authorization": "Bearer tok124"}),
        ("/events", {"Authorization": "Bearer tok12"}),
        ("/events", {"Authorization": "Bearer tok1234"}),
        ("/events?token=tok124", None),
        ("/events?token=", None),
        ("/events/x?token=tok12", None),
    ):
        r = ask(s.port, path, headers)
        assert r.status == 401, (path, headers, r.status)
        assert r.header("WWW-Authenticate") == "Bearer"


def test_subscribe_token_header_ok(start_server):
    s = start_server("--subscribe-token", "tok123", "--publish-token", "secret")
    st = Stream(s.port, "/events", {"Authorization": "Bearer tok123"})
    try:
        assert st.status == 200
        check_stream_head(st.raw_head)
        read_prelude(st)
        id_ = pub(s.port, "hi")
        expect_bytes(st, ev(id_, "hi"))
    finally:
        st.close()


def test_subscribe_token_query_ok(start_server):
    s = start_server("--subscribe-token", "tok123", "--publish-token", "secret")
    st = Stream(s.port, "/events?topic=q&token=tok123")
    try:
        assert st.status == 200
        read_prelude(st)
        id_ = pub(s.port, "hi", topic="q")
        expect_bytes(st, ev(id_, "hi"))
    finally:
        st.close()


# ---- heartbeat ----------------------------------------------------------------------------


@pytest.mark.valgrind
def test_heartbeat_one_second(start_server):
    s = start_server("--heartbeat", "1")
    st = Stream(s.port)
    try:
        read_prelude(st)
        assert st.read_exactly(2, timeout=5) == b":\n"
        assert st.read_exactly(2, timeout=5) == b":\n"
    finally:
        st.close()


def test_heartbeat_comes_at_its_interval(start_server):
    """--heartbeat 1: heartbeats one second apart, not two (or half a second). Five
    heartbeats are timed as they arrive; the mean of the four gaps must be within
    [0.8, 1.6] s, loose enough for a busy machine (a late read shortens the next gap as much
    as it lengthens this one) and still far from 2 s and 0.5 s."""
    s = start_server("--heartbeat", "1")
    st = Stream(s.port)
    try:
        read_prelude(st)
        times = []
        for _ in range(5):
            assert st.read_exactly(2, timeout=5) == b":\n"
            times.append(time.monotonic())
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert 0.8 <= sum(gaps) / len(gaps) <= 1.6, gaps
    finally:
        st.close()


def test_heartbeat_zero_disabled(start_server):
    s = start_server("--heartbeat", "0")
    st = Stream(s.port)
    try:
        read_prelude(st)
        assert st.nothing_pending(2.5)
    finally:
        st.close()


def test_heartbeat_default_not_within_two_seconds(server):
    st = Stream(server.port)
    try:
        read_prelude(st)
        assert st.nothing_pending(2.0)
    finally:
        st.close()


# ---- HTTP/1.0 -----------------------------------------------------------------------------


def test_http10_subscriber(server):
    st = open_raw_stream(server.port, build_request("GET", "/events/h10", version="HTTP/1.0"))
    try:
        check_stream_head(st.raw_head)
        for name in ("Content-Length", "Transfer-Encoding", "Connection"):
            assert st.header(name) is None
        cur = read_prelude(st)
        id_ = pub(server.port, "one\ntwo", topic="h10")
        assert int(id_) > int(cur)
        expect_bytes(st, ev(id_, "one", "two"))
        # close-delimited: retiring the topic ends the body with EOF
        r = request(server.port, "DELETE", "/publish?topic=h10", {"Authorization": "Bearer secret"})
        assert r.status == 200
        assert st.read_until_closed(5) == b""
    finally:
        st.close()


# ---- methods ------------------------------------------------------------------------------


def test_post_events_405(server):
    r = request(server.port, "POST", "/events", None, b"")
    assert r.status == 405
    assert r.header("Allow") == "GET, OPTIONS"


def test_delete_events_named_405(server):
    r = ask(server.port, "/events/x", method="DELETE")
    assert r.status == 405
    assert r.header("Allow") == "GET, OPTIONS"


def test_options_events_204(server):
    r = ask(server.port, "/events", method="OPTIONS")
    assert r.status == 204


# ---- retiring a topic ---------------------------------------------------------------------


def delete_topic(port, topic):
    r = request(port, "DELETE", "/publish?topic=" + topic, {"Authorization": "Bearer secret"})
    assert r.status == 200, (r.status, r.body)
    return r


def test_retire_topic(server):
    port = server.port
    only_x = Stream(port, "/events/x")
    x_and_y = Stream(port, "/events?topic=x&topic=y")
    try:
        read_prelude(only_x)
        read_prelude(x_and_y)
        last = pub(port, "last for x", topic="x")
        r = delete_topic(port, "x")
        assert r.body == b'{"topic": "x", "closed": 1}\n'
        assert r.header("Content-Type") == "application/json"
        # the x-only subscriber gets what was queued, then EOF
        assert only_x.read_until_closed(5) == ev(last, "last for x")
        # the multi-topic subscriber stays
        expect_bytes(x_and_y, ev(last, "last for x"))
        y = pub(port, "for y", topic="y")
        expect_bytes(x_and_y, ev(y, "for y"))
        # new subscriptions to x alone: 204
        r = ask(port, "/events/x")
        assert r.status == 204
        r = ask(port, "/events?topic=x")
        assert r.status == 204
        # not every topic retired: stream
        st = Stream(port, "/events?topic=x&topic=z")
        try:
            assert st.status == 200
            read_prelude(st)
        finally:
            st.close()
        # publishing to x revives it
        pub(port, "again", topic="x")
        st = Stream(port, "/events/x")
        try:
            assert st.status == 200
            check_stream_head(st.raw_head)
            read_prelude(st)
            again = pub(port, "after revive", topic="x")
            expect_bytes(st, ev(again, "after revive"))
        finally:
            st.close()
    finally:
        only_x.close()
        x_and_y.close()


def test_retire_topic_without_subscribers(server):
    r = delete_topic(server.port, "nobody")
    assert r.body == b'{"topic": "nobody", "closed": 0}\n'
    assert ask(server.port, "/events/nobody").status == 204


@pytest.mark.valgrind
def test_retire_closes_all_subscribers_of_topic(server):
    port = server.port
    subs = [Stream(port, "/events/job") for _ in range(3)]
    other = Stream(port, "/events/other")
    try:
        for st in subs + [other]:
            read_prelude(st)
        r = delete_topic(port, "job")
        assert r.body == b'{"topic": "job", "closed": 3}\n'
        for st in subs:
            assert st.read_until_closed(5) == b""
        o = pub(port, "still here", topic="other")
        expect_bytes(other, ev(o, "still here"))
    finally:
        for st in subs + [other]:
            st.close()


# ---- CORS ---------------------------------------------------------------------------------


@pytest.mark.valgrind
def test_cors_origin_with_credentials(start_server):
    s = start_server("--cors", "https://example.com")
    st = Stream(s.port, "/events", {"Origin": "https://evil.example"})
    try:
        check_stream_head(
            st.raw_head,
            [
                b"Access-Control-Allow-Origin: https://example.com",
                b"Access-Control-Allow-Credentials: true",
            ],
        )
        assert b"evil" not in st.raw_head
        read_prelude(st)
    finally:
        st.close()


def test_cors_star(start_server):
    s = start_server("--cors", "*")
    st = Stream(s.port, "/events", {"Origin": "https://evil.example"})
    try:
        check_stream_head(st.raw_head, [b"Access-Control-Allow-Origin: *"])
        assert b"evil" not in st.raw_head
        read_prelude(st)
    finally:
        st.close()


def test_cors_on_other_responses(start_server):
    s = start_server("--cors", "https://example.com")
    r = ask(s.port, "/healthz", {"Origin": "https://evil.example"})
    assert r.status == 200
    assert r.header_all("Access-Control-Allow-Origin") == ["https://example.com"]
    assert r.header("Access-Control-Allow-Credentials") == "true"
    assert b"evil" not in r.raw_head


def test_no_cors_never_echoes_origin(server):
    st = Stream(server.port, "/events", {"Origin": "https://evil.example"})
    try:
        check_stream_head(st.raw_head)
        assert b"Access-Control" not in st.raw_head
        assert b"evil" not in st.raw_head
    finally:
        st.close()
    r = ask(server.port, "/healthz", {"Origin": "https://evil.example"})
    assert b"Access-Control" not in r.raw_head
    assert b"evil" not in r.raw_head


@pytest.mark.valgrind
def test_retire_flushes_large_queue_before_eof(start_server):
    """Everything queued for a subscriber that reads slowly arrives before the EOF."""
    import socket

    s = start_server("--publish-token", "secret", "--client-buffer", "16m")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", s.port))
    st = Stream.__new__(Stream)
    st.sock = sock
    sock.sendall(build_request("GET", "/events/bulk"))
    head, st.buf = recv_until(sock, b"\r\n\r\n", 5)
    st.status, st.reason, st.headers = parse_head(head)
    st.raw_head = head
    try:
        check_stream_head(st.raw_head)
        read_prelude(st)
        want = b""
        for i in range(100):
            payload = ("%03d" % i) * 6000
            want += ev(pub(s.port, payload, topic="bulk"), payload)
        r = delete_topic(s.port, "bulk")
        assert r.body == b'{"topic": "bulk", "closed": 1}\n'
        got = st.read_until_closed(15)
        assert len(got) == len(want)
        assert got == want
    finally:
        st.close()


def test_no_heartbeat_while_events_flow(start_server):
    s = start_server("--publish-token", "secret", "--heartbeat", "1")
    st = Stream(s.port)
    try:
        read_prelude(st)
        want = b""
        for i in range(10):
            want += ev(pub(s.port, "tick %d" % i), "tick %d" % i)
            time.sleep(0.2)  # events 0.2 s apart for 2 s: the point (no heartbeat among them)
        expect_bytes(st, want)
        # then, with silence, the heartbeat comes
        assert st.read_exactly(2, timeout=5) == b":\n"
    finally:
        st.close()
