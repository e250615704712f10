"""Node's EventSource clients against sse-server: the `eventsource` package (connect, receive,
reconnect with Last-Event-ID through a severed connection) and `eventsource-parser`, which
must parse every byte of the framing cases, the replay and the reset event to exactly the
events that were published."""

import json
import os
import subprocess
import time

import pytest

from clients import CLIENTS, NodeLines, TcpRelay, require_node_packages
from conftest import Stream, pub
from test_stream import FRAMING_CASES


def parse_with_eventsource_parser(raw, seed=1):
    node = require_node_packages("eventsource-parser")
    r = subprocess.run(
        [node, os.path.join(CLIENTS, "parse.mjs"), str(seed)],
        input=raw, capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_eventsource_parser_reads_every_framing_case(start_server):
    srv = start_server("--publish-token", "secret", "--heartbeat", "1")
    st = Stream(srv.port, "/events")
    try:
        want = []
        for name in sorted(FRAMING_CASES):
            payload, event, lines = FRAMING_CASES[name]
            id_ = pub(srv.port, payload, event=event)
            want.append({"event": event, "id": id_, "data": "\n".join(lines)})
        # Everything up to the first heartbeat after the last event: prelude, events, comment.
        raw = st.read_bytes_until(b"\n\n:\n", timeout=15)
    finally:
        st.close()
    assert raw.startswith(b"retry: 3000\n\nid: ")
    # The position event comes first: the id before any event, dispatched with empty data.
    position = raw.split(b"\n")[2][4:].decode()
    want.insert(0, {"event": "position", "id": position, "data": ""})
    for seed in (1, 2, 3):
        seen = parse_with_eventsource_parser(raw, seed)
        assert seen["errors"] == []
        assert seen["retries"] == [3000]
        assert seen["comments"] == [""]
        assert seen["events"] == want


def test_eventsource_parser_reads_replay_and_reset(start_server):
    srv = start_server("--publish-token", "secret")
    ids = [pub(srv.port, "event %d\nline two" % i, topic="r", event="e") for i in range(4)]
    st = Stream(srv.port, "/events/r", headers={"Last-Event-ID": ids[1]})
    try:
        raw = st.read_bytes_until(b"id: %s\n" % ids[3].encode())
        raw += st.read_bytes_until(b"\n\n")
    finally:
        st.close()
    seen = parse_with_eventsource_parser(raw)
    assert seen["events"] == [
        {"event": "e", "id": ids[i], "data": "event %d\nline two" % i} for i in (2, 3)
    ]
    st = Stream(srv.port, "/events/r", headers={"Last-Event-ID": "42"})
    try:
        raw = st.read_bytes_until(b"event: reset\n")
        raw += st.read_bytes_until(b"\n\n")
    finally:
        st.close()
    (reset,) = parse_with_eventsource_parser(raw)["events"]
    assert reset["event"] == "reset" and reset["id"] == ids[3]
    assert json.loads(reset["data"]) == {"requested": "42", "oldest": ids[0], "current": ids[3]}


class NodeEventSource(NodeLines):
    """tests/browser/es-client.mjs: the eventsource package printing what it dispatches."""

    def __init__(self, url, *types):
        super().__init__("es-client.mjs", url, *types)

    def events(self):
        return [(s["type"], s["data"], s["id"]) for s in self.seen if s["kind"] == "event"]


@pytest.fixture
def node_client():
    clients = []

    def make(url, *types):
        c = NodeEventSource(url, *types)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def test_eventsource_package_receives_and_resumes_after_a_cut(start_server, node_client):
    srv = start_server("--publish-token", "secret", "--retry", "500")
    relay = TcpRelay(srv.port)
    try:
        es = node_client("http://127.0.0.1:%d/events/n" % relay.port, "price")
        es.wait(lambda seen: any(s["kind"] == "open" for s in seen))
        want = []

        def publish_five(start):
            for i in range(start, start + 5):
                event = "price" if i % 2 else None
                data = "tick %d\nsecond line" % i
                want.append((event or "message", data, pub(srv.port, data, "n", event)))

        publish_five(0)
        es.wait(lambda seen: len(es.events()) >= 5)
        assert relay.sever() == 1
        publish_five(5)  # while the client waits out retry: 500
        es.wait(lambda seen: len(es.events()) >= 10)
        time.sleep(0.3)
        es.drain()  # nothing more may have arrived
        assert es.events() == want
        kinds = [s["kind"] for s in es.seen if s["kind"] != "event"]
        assert kinds == ["open", "error", "open"]
        heads = relay.heads()
        assert len(heads) == 2
        assert b"\r\nlast-event-id: %s\r\n" % want[4][2].encode() in heads[1].lower()
    finally:
        relay.close()


def test_eventsource_package_resumes_when_cut_before_its_first_event(start_server,
                                                                     node_client):
    """The package (through eventsource-parser) takes a last event id only from an event it
    dispatches, as Firefox and Safari do: the id-only block a stream once opened with was
    lost on it. Connect, no event yet, the connection is cut, an event is published: the
    client comes back with the position event's id as Last-Event-ID and gets the event, and
    its message listener never sees the position event."""
    srv = start_server("--publish-token", "secret", "--retry", "500")
    relay = TcpRelay(srv.port)
    try:
        es = node_client("http://127.0.0.1:%d/events/n" % relay.port)
        es.wait(lambda seen: any(s["kind"] == "open" for s in seen))
        deadline = time.monotonic() + 10
        while True:  # the retry: block and the position have passed the relay
            with relay.lock:
                down = bytes(relay.conns[0]["down"])
            if down.count(b"\n\n") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        position = down.split(b"\r\n\r\n", 1)[1].split(b"\n\n")[1].split(b"\n")[0][4:]
        time.sleep(1)  # for the client to read them
        assert relay.sever() == 1
        id_ = pub(srv.port, "first", "n")  # while the client waits out retry: 500
        es.wait(lambda seen: len(es.events()) >= 1)
        time.sleep(0.3)
        es.drain()
        assert es.events() == [("message", "first", id_)]
        heads = relay.heads()
        assert len(heads) == 2
        assert b"\r\nlast-event-id: %s\r\n" % position in heads[1].lower()
    finally:
        relay.close()
