"""Running out of file descriptors: the server sheds connections instead of spinning, and
recovers as soon as descriptors free up."""

import resource
import socket
import time

from clients import wait_until
from conftest import Stream, connect, metric_values, recv_all, request


def small_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))





def test_emfile_sheds_without_spinning(start_server):
    srv = start_server("--max-clients", "1000", "--heartbeat", "0", preexec_fn=small_fd_limit)
    subscribers, refused = [], 0
    for _ in range(80):
        try:
            st = Stream(srv.port, timeout=3)
            assert st.status == 200
            subscribers.append(st)
        except (AssertionError, OSError):
            refused += 1
    assert subscribers, "no subscriber at all was served"
    assert refused > 0, "the descriptor limit was never reached"
    srv.wait_for_line(r"out of file descriptors: turning connections away")
    # With descriptors exhausted and clients still knocking, the loop must not busy-wait.
    knockers = [socket.create_connection(("127.0.0.1", srv.port), timeout=3) for _ in range(20)]
    cpu0 = srv.cpu_seconds()
    time.sleep(1.5)
    assert srv.cpu_seconds() - cpu0 < 0.5, "the server spins while out of descriptors"
    for k in knockers:
        k.close()
    # Freeing descriptors makes the server whole again.
    fds = srv.fd_count()
    for st in subscribers[:10]:
        st.close()
    wait_until(lambda: srv.fd_count() <= fds - 10, what="the server to close ten streams")
    assert request(srv.port, "GET", "/healthz").body == b"ok\n"
    st = Stream(srv.port)
    assert st.status == 200
    st.close()
    assert metric_values(srv.port)["sse_connections_rejected_total"] >= refused
    for st in subscribers[10:]:
        st.close()


def test_over_limit_connection_that_never_speaks_is_closed(start_server):
    """A connection accepted over --max-clients only to be answered is still bound by the
    header timeout."""
    srv = start_server("--max-clients", "1", "--header-timeout", "1")
    first = Stream(srv.port)
    s = connect(srv.port)
    assert recv_all(s, timeout=5) == b""
    s.close()
    first.close()


def test_over_limit_eventsource_request_never_gets_5xx(start_server):
    """Over --max-clients, any GET that asks for text/event-stream by name (what a browser's
    EventSource sends) gets 200 + retry: + close, even on a path that is not the stream:
    a 503 would make EventSource give up for good. Other requests get 503."""
    import re

    from conftest import build_request, read_response

    srv = start_server("--max-clients", "1")
    first = Stream(srv.port)
    try:
        s = connect(srv.port)
        s.sendall(build_request("GET", "/somewhere", {"Accept": "text/event-stream"}))
        resp, rest = read_response(s, head_only=True)
        assert resp.status == 200
        assert resp.header("Content-Type") == "text/event-stream"
        body = rest + recv_all(s)
        m = re.fullmatch(rb"retry: (\d+)\n\n", body)
        assert m and 3000 <= int(m.group(1)) <= 6000, body
        s.close()
        r = request(srv.port, "GET", "/somewhere", {"Accept": "*/*"})
        assert r.status == 503
    finally:
        first.close()
