"""--stdin: publishing lines (or text/event-stream blocks) read from standard input."""

import re
import subprocess

from conftest import Stream, publish, read_prelude, request


def feed(server, data):
    server.proc.stdin.write(data)
    server.proc.stdin.flush()


def read_event_bytes(st, timeout=5):
    """Reads one event block; returns (id, bytes after the id line)."""
    blk = st.read_block(timeout)
    m = re.fullmatch(rb"id: (\d+)\n(.*)", blk, re.S)
    assert m, blk
    return m.group(1).decode(), m.group(2)


def test_lines_each_line_one_event(start_server):
    s = start_server("--stdin", stdin=subprocess.PIPE)
    st = Stream(s.port)
    try:
        cur = read_prelude(st)
        feed(s, b"hello\n")
        id1, rest = read_event_bytes(st)
        assert rest == b"data: hello\n\n"
        feed(s, b"two\nthree\n")
        id2, rest2 = read_event_bytes(st)
        id3, rest3 = read_event_bytes(st)
        assert rest2 == b"data: two\n\n"
        assert rest3 == b"data: three\n\n"
        assert int(cur) < int(id1) < int(id2) < int(id3)
        assert st.nothing_pending(0.3)
    finally:
        st.close()


def test_lines_go_to_default_topic_only(start_server):
    s = start_server("--stdin", stdin=subprocess.PIPE)
    other = Stream(s.port, "/events/other")
    st = Stream(s.port, "/events?topic=default&topic=other")
    try:
        read_prelude(other)
        read_prelude(st)
        feed(s, b"to default\n")
        _, rest = read_event_bytes(st)
        assert rest == b"data: to default\n\n"
        assert other.nothing_pending(0.3)
    finally:
        st.close()
        other.close()


def test_lines_crlf_empty_utf8_partial(start_server):
    s = start_server("--stdin", stdin=subprocess.PIPE)
    st = Stream(s.port)
    try:
        read_prelude(st)
        feed(s, b"crlf line\r\n")
        assert read_event_bytes(st)[1] == b"data: crlf line\n\n"
        feed(s, b"\n")
        assert read_event_bytes(st)[1] == b"data:\n\n"
        feed(s, "\u00e9t\u00e9 \U0001F600\n".encode())
        assert read_event_bytes(st)[1] == "data: \u00e9t\u00e9 \U0001F600\n\n".encode()
        feed(s, b"  spaced\n")
        assert read_event_bytes(st)[1] == b"data:   spaced\n\n"
        # a line arriving in pieces is one event
        feed(s, b"par")
        assert st.nothing_pending(0.3)
        feed(s, b"tial\n")
        assert read_event_bytes(st)[1] == b"data: partial\n\n"
    finally:
        st.close()


def test_lines_invalid_utf8_skipped(start_server):
    s = start_server("--stdin", stdin=subprocess.PIPE)
    st = Stream(s.port)
    try:
        read_prelude(st)
        n_lines = len(s.lines)
        feed(s, b"bad \xff\xfe line\n")
        feed(s, b"good line\n")
        id_, rest = read_event_bytes(st)
        assert rest == b"data: good line\n\n"
        assert st.nothing_pending(0.3)
        # the skipped line is reported on stderr
        s.wait_for_line(r".", timeout=5, start=n_lines)
    finally:
        st.close()


def test_lines_eof_keeps_serving(start_server):
    s = start_server("--stdin", "--publish-token", "secret", stdin=subprocess.PIPE)
    st = Stream(s.port)
    try:
        read_prelude(st)
        feed(s, b"last line\n")
        assert read_event_bytes(st)[1] == b"data: last line\n\n"
        s.proc.stdin.close()
        s.wait_for_line(r"input: end of input on fd 0")
        assert s.proc.poll() is None
        r = request(s.port, "GET", "/healthz")
        assert r.status == 200
        assert r.body == b"ok\n"
        r = publish(s.port, "after eof")
        assert r.status == 200
        id_ = r.json()["id"]
        assert st.read_block() == b"id: %s\ndata: after eof\n\n" % id_.encode()
        assert s.proc.poll() is None
    finally:
        st.close()


def test_lines_eof_with_empty_input(start_server):
    s = start_server("--stdin")  # stdin is /dev/null: immediate EOF
    s.wait_for_line(r"input: end of input on fd 0")
    assert s.proc.poll() is None
    r = request(s.port, "GET", "/healthz")
    assert r.status == 200
    assert r.body == b"ok\n"


def test_sse_format_blocks(start_server):
    s = start_server("--stdin", "--stdin-format", "sse", stdin=subprocess.PIPE)
    st = Stream(s.port, "/events?topic=default&topic=news")
    try:
        cur = read_prelude(st)
        feed(
            s,
            b"topic: news\n"
            b"event: headline\n"
            b"data: line one\n"
            b"data: line two\n"
            b"\n",
        )
        id1, rest = read_event_bytes(st)
        assert rest == b"event: headline\ndata: line one\ndata: line two\n\n"
        assert int(id1) > int(cur)
        # comments ignored; a block without data ignored; id: ignored (server assigns ids)
        feed(
            s,
            b": just a comment\n"
            b"\n"
            b"event: nodata\n"
            b"\n"
            b"topic: news\n"
            b"\n"
            b"id: 5\n"
            b": inline comment\n"
            b"data: plain\n"
            b"\n",
        )
        id2, rest = read_event_bytes(st)
        assert rest == b"data: plain\n\n"
        assert id2 != "5"
        assert int(id2) > int(id1)
        assert st.nothing_pending(0.3)
    finally:
        st.close()


def test_sse_format_drops_one_leading_bom(start_server):
    """WHATWG 9.2.6 decodes the stream as UTF-8, which drops one leading byte order mark: a
    file saved with a BOM keeps its first block (the BOM arriving split, too). Only the
    first one: a second BOM is part of the field name, so that line is an unknown field."""
    s = start_server("--stdin", "--stdin-format", "sse", stdin=subprocess.PIPE)
    st = Stream(s.port, "/events")
    try:
        read_prelude(st)
        feed(s, b"\xef\xbb")
        feed(s, b"\xbfdata: first\n\n")
        assert read_event_bytes(st)[1] == b"data: first\n\n"
        feed(s, b"\xef\xbb\xbfdata: not a field\n\ndata: second\n\n")
        assert read_event_bytes(st)[1] == b"data: second\n\n"
        assert st.nothing_pending(0.3)
    finally:
        st.close()


def test_sse_format_topic_routing_and_field_syntax(start_server):
    s = start_server("--stdin", "--stdin-format", "sse", stdin=subprocess.PIPE)
    only_news = Stream(s.port, "/events/news")
    only_default = Stream(s.port, "/events")
    try:
        read_prelude(only_news)
        read_prelude(only_default)
        feed(s, b"topic: news\ndata:no space\n\n")
        _, rest = read_event_bytes(only_news)
        assert rest == b"data: no space\n\n"
        # a block without topic goes to default; data lines including an empty one
        feed(s, b"data: a\ndata\ndata:  b\r\n\r\n")
        _, rest = read_event_bytes(only_default)
        assert rest == b"data: a\ndata:\ndata:  b\n\n"
        assert only_news.nothing_pending(0.3)
        assert only_default.nothing_pending(0.1)
    finally:
        only_news.close()
        only_default.close()
