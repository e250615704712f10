"""A small, controllable HTTP/1.x upstream for black-box proxy and relay tests.

Pure standard library: one listening socket on 127.0.0.1, one daemon thread accepting, one
daemon thread per connection in handler mode. Every socket operation has a timeout, so
nothing here can hang a test. The upstream never stamps anything on what it sends (no
Date, no Server, no framing the test did not ask for): the bytes on the wire are exactly
the bytes the test chose.

Starting and stopping
---------------------
    up = Upstream(handler=None, port=0)   # nothing listens yet
    up.start() -> up                      # binds 127.0.0.1:port (port 0: the kernel picks one;
                                          # it is kept, so later starts reuse the same port)
    up.port, up.url                       # 12345, "http://127.0.0.1:12345"
    up.stop()                             # closes the listener and every open connection
    up.restart()                          # stop() then start() on the same port
    with Upstream(...) as up: ...         # start() / stop()
    up.handler = fn                       # may be swapped at any time (new connections use it)

Two ways to drive connections
-----------------------------
1. Manual (handler=None): accepted connections are queued; the test takes them in accept
   order and drives them itself, step by step, from the test thread:
       c = up.accept(timeout=5)           # -> Conn (raises UpstreamError on timeout)
       up.no_connection(wait=0.3)         # True if no connection is waiting
   up.accepted counts the connections accepted since construction (both modes).
2. Handler mode (handler=fn): every accepted connection gets a daemon thread that reads one
   request (recorded, see below) and then calls fn(conn, request). When fn returns, the
   connection is closed unless fn called conn.detach(). If no complete request arrives
   (EOF, timeout) fn is not called. Canned handlers (factories):
       reply(status=200, reason="OK", headers=(), body=b"", framing="length", chunks=None)
           framing "length" (adds Content-Length), "chunked" (adds Transfer-Encoding:
           chunked; chunks= list of byte strings, each one sent as one chunk with its own
           send; default: the body as one chunk), "close" (body then close), "none" (no
           framing header and no body: for HEAD / 204 / 304).
       reply_raw(data, hold=False)   raw bytes (garbage, bad status line, huge head); then
                                     close, or with hold=True keep the connection open until
                                     the peer closes it (bounded by hold_timeout).
       close_without_answer()        read the request, close.
       never_answer(timeout=30)      read the request, wait for the peer's EOF.
       delayed(seconds, handler)     sleep, then run handler.
       by_path({"/path": handler, ...}, default=None)   dispatch on the request path (the
                                     part of the target before '?'); default 404 reply.
       event_stream(events=(), headers=..., hold=True) head + events, then wait for EOF.
   Connections of handler mode are also listed in up.conns (accept order);
   up.wait_conns(n, timeout) waits until n have been accepted.

Recorded requests
-----------------
conn.read_request(timeout=5, body=True) -> Request, also appended to conn.requests and
up.requests (in completion order; up.wait_requests(n, timeout) -> list waits for n). A
Request holds exactly what arrived:
    .raw_head (bytes, request line to the blank line inclusive), .line ("GET / HTTP/1.1"),
    .method, .target, .path (target before '?'), .version,
    .header_lines (raw lines in order, without CRLF), .headers ([(name, value)], value
    stripped of surrounding blanks), .header(name), .header_all(name),
    .body (bytes: Content-Length bytes or decoded chunked; b"" with body=False), .raw_body.

Conn (one accepted connection)
------------------------------
    conn.recv_some(timeout) -> bytes (b"" at EOF), conn.recv_exactly(n, timeout),
    conn.recv_until(marker, timeout)            # also see conn.received (all bytes so far)
    conn.send(data, timeout=5)                  # everything, or UpstreamError
    conn.send_some(data, stall=1.0) -> int      # sends until done or until no byte could be
                                                # sent for `stall` seconds; returns bytes sent
    conn.bytes_sent                             # running total, readable from other threads
    conn.send_head(status=200, reason="OK", headers=(), version="HTTP/1.1")   # reason=None:
                                                # a status line without the reason part
    conn.send_chunk(data), conn.end_chunks(trailers=())
    conn.respond(status, reason, headers, body, framing, chunks)   # as reply() above
    conn.shutdown_write()                       # half-close (FIN), keep reading
    conn.close()                                # FIN; conn.reset(): RST (SO_LINGER 0)
    conn.wait_eof(timeout=5) -> bool            # reads (and records) until the peer closes:
                                                # True on EOF or reset, False on timeout
    conn.peer_closed                            # threading.Event set once EOF/reset was seen
    conn.detach()                               # handler mode: do not close when fn returns
Read or write a Conn from one thread at a time.

Errors of handler threads are kept in up.errors (list of strings) instead of being raised.
"""

import queue
import socket
import threading
import time

DEFAULT_TIMEOUT = 5.0
MAX_HEAD = 1 << 20


class UpstreamError(AssertionError):
    """A bounded wait ran out or the peer did something unexpected."""


class Request:
    def __init__(self, raw_head, body=b"", raw_body=b""):
        self.raw_head = raw_head
        text = raw_head.decode("latin-1")
        lines = text.split("\r\n")
        assert lines[-2:] == ["", ""], "head does not end in CRLF CRLF: %r" % raw_head[-20:]
        lines = lines[:-2]
        self.line = lines[0]
        parts = self.line.split(" ")
        self.method = parts[0]
        self.target = parts[1] if len(parts) > 1 else ""
        self.version = parts[2] if len(parts) > 2 else ""
        self.path = self.target.split("?", 1)[0]
        self.header_lines = lines[1:]
        self.headers = []
        for line in self.header_lines:
            name, _, value = line.partition(":")
            self.headers.append((name, value.strip(" \t")))
        self.body = body
        self.raw_body = raw_body

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "<Request %r %d headers, %d body bytes>" % (
            self.line,
            len(self.headers),
            len(self.body),
        )


class Conn:
    """One accepted connection."""

    def __init__(self, upstream, sock, addr, index):
        self.upstream = upstream
        self.sock = sock
        self.addr = addr
        self.index = index
        self.requests = []
        self.received = b""  # every byte received so far
        self.buf = b""  # received but not consumed by read_request/recv_* yet
        self.bytes_sent = 0
        self.peer_closed = threading.Event()
        self.reset_seen = False
        self.closed = False
        self.detached = False
        self._lock = threading.Lock()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ---- receiving -------------------------------------------------------------------

    def _recv(self, timeout):
        """One recv of at most 64 KiB; b"" at EOF/reset; raises socket.timeout."""
        if self.closed:
            raise UpstreamError("connection already closed by the upstream")
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset_seen = True
            data = b""
        except OSError as e:
            if isinstance(e, socket.timeout):
                raise
            self.reset_seen = True
            data = b""
        if not data:
            self.peer_closed.set()
        else:
            self.received += data
        return data

    def recv_some(self, timeout=DEFAULT_TIMEOUT):
        """Returns buffered bytes, or the next bytes to arrive; b"" at EOF."""
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        if self.peer_closed.is_set():
            return b""
        try:
            return self._recv(timeout)
        except socket.timeout:
            raise UpstreamError("upstream conn #%d: nothing arrived in %.1f s" % (self.index, timeout))

    def _fill(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamError("upstream conn #%d: timed out waiting for %s; have %r"
                                    % (self.index, what, self.buf[-300:]))
            if self.peer_closed.is_set():
                raise UpstreamError("upstream conn #%d: peer closed waiting for %s; have %r"
                                    % (self.index, what, self.buf[-300:]))
            try:
                data = self._recv(left)
            except socket.timeout:
                continue
            self.buf += data

    def recv_exactly(self, n, timeout=DEFAULT_TIMEOUT):
        self._fill(lambda: len(self.buf) >= n, timeout, "%d bytes" % n)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_until(self, marker, timeout=DEFAULT_TIMEOUT):
        """Bytes up to and including marker."""
        self._fill(lambda: marker in self.buf, timeout, repr(marker))
        i = self.buf.index(marker) + len(marker)
        data, self.buf = self.buf[:i], self.buf[i:]
        return data

    def read_request(self, timeout=DEFAULT_TIMEOUT, body=True):
        """Reads one request head (and with body=True its Content-Length or chunked body),
        records it and returns it."""
        deadline = time.monotonic() + timeout
        self._fill(lambda: b"\r\n\r\n" in self.buf or len(self.buf) > MAX_HEAD, timeout,
                   "a request head")
        if b"\r\n\r\n" not in self.buf:
            raise UpstreamError("request head over %d bytes" % MAX_HEAD)
        head = self.recv_until(b"\r\n\r\n", 0.001)
        req = Request(head)
        raw_body = payload = b""
        if body:
            left = lambda: max(deadline - time.monotonic(), 0.001)  # noqa: E731
            te = (req.header("Transfer-Encoding") or "").lower()
            if te.endswith("chunked"):
                while True:
                    size_line = self.recv_until(b"\r\n", left())
                    raw_body += size_line
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while True:
                            t = self.recv_until(b"\r\n", left())
                            raw_body += t
                            if t == b"\r\n":
                                break
                        break
                    chunk = self.recv_exactly(size + 2, left())
                    raw_body += chunk
                    payload += chunk[:-2]
            elif req.header("Content-Length") is not None:
                n = int(req.header("Content-Length"))
                raw_body = payload = self.recv_exactly(n, left()) if n else b""
        req.body, req.raw_body = payload, raw_body
        self.requests.append(req)
        self.upstream._record(req)
        return req

    def wait_eof(self, timeout=DEFAULT_TIMEOUT):
        """Reads (recording whatever arrives) until the peer closes. True if it did (EOF or
        reset), False if timeout passed first."""
        deadline = time.monotonic() + timeout
        while not self.peer_closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return self.peer_closed.is_set()
            try:
                data = self._recv(min(left, 0.5))
            except socket.timeout:
                continue
            except UpstreamError:
                return self.peer_closed.is_set()
            self.buf += data
        return True

    # ---- sending ---------------------------------------------------------------------

    def send(self, data, timeout=DEFAULT_TIMEOUT):
        if isinstance(data, str):
            data = data.encode("utf-8")
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamError("upstream conn #%d: send blocked for %.1f s (%d bytes left)"
                                    % (self.index, timeout, len(view)))
            self.sock.settimeout(left)
            try:
                n = self.sock.send(view)
            except socket.timeout:
                continue
            except OSError as e:
                self.peer_closed.set()
                raise UpstreamError("upstream conn #%d: send failed: %s" % (self.index, e))
            self.bytes_sent += n
            view = view[n:]

    def send_some(self, data, stall=1.0, timeout=60.0):
        """Sends data until it is all sent, or no byte could be sent for `stall` seconds, or
        the peer went away, or `timeout` passed. Returns the bytes sent by this call."""
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        sent = 0
        while view and time.monotonic() < deadline:
            self.sock.settimeout(stall)
            try:
                n = self.sock.send(view[:262144])
            except socket.timeout:
                break
            except OSError:
                self.peer_closed.set()
                break
            self.bytes_sent += n
            sent += n
            view = view[n:]
        return sent

    def send_head(self, status=200, reason="OK", headers=(), version="HTTP/1.1"):
        head = "%s %s %s\r\n" % (version, status, reason) if reason is not None else \
            "%s %s\r\n" % (version, status)
        head += "".join("%s: %s\r\n" % (k, v) for k, v in headers)
        self.send(head.encode("latin-1") + b"\r\n")

    def send_chunk(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        assert data, "an empty chunk would end the body: use end_chunks()"
        self.send(b"%x\r\n" % len(data) + data + b"\r\n")

    def end_chunks(self, trailers=()):
        self.send(b"0\r\n" + "".join("%s: %s\r\n" % t for t in trailers).encode() + b"\r\n")

    def respond(self, status=200, reason="OK", headers=(), body=b"", framing="length",
                chunks=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = list(headers)
        if framing == "length":
            self.send_head(status, reason, headers + [("Content-Length", str(len(body)))])
            if body:
                self.send(body)
        elif framing == "chunked":
            self.send_head(status, reason, headers + [("Transfer-Encoding", "chunked")])
            for chunk in chunks if chunks is not None else ([body] if body else []):
                self.send_chunk(chunk)
            self.end_chunks()
        elif framing == "close":
            self.send_head(status, reason, headers)
            if body:
                self.send(body)
            self.close()
        elif framing == "none":
            self.send_head(status, reason, headers)
        else:
            raise ValueError(framing)

    # ---- closing ---------------------------------------------------------------------

    def shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def reset(self):
        if self.closed:
            return
        import struct

        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed = True
        self.sock.close()

    def detach(self):
        self.detached = True


class Upstream:
    def __init__(self, handler=None, port=0):
        self.handler = handler
        self.port = port
        self.requests = []
        self.conns = []
        self.errors = []
        self._cond = threading.Condition()
        self._queue = queue.Queue()
        self._listener = None
        self._stopping = threading.Event()
        self._threads = []
        self._accepted = 0

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def accepted(self):
        return self._accepted

    # ---- lifecycle -------------------------------------------------------------------

    def start(self):
        assert self._listener is None, "already started"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if self.port == 0 or time.monotonic() > deadline:
                    s.close()
                    raise
                time.sleep(0.05)
        s.listen(128)
        s.settimeout(0.1)
        self.port = s.getsockname()[1]
        self._listener = s
        self._stopping = threading.Event()
        t = threading.Thread(target=self._accept_loop, args=(s, self._stopping), daemon=True)
        t.start()
        self._threads = [t]
        return self

    def stop(self):
        if self._listener is None:
            return
        self._stopping.set()
        for t in self._threads[:1]:
            t.join(timeout=2)
        self._listener.close()
        self._listener = None
        with self._cond:
            conns = list(self.conns)
        while True:
            try:
                conns.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for c in conns:
            c.close()
        deadline = time.monotonic() + 5
        for t in self._threads[1:]:
            t.join(timeout=max(deadline - time.monotonic(), 0.01))
        self._threads = []

    def restart(self):
        self.stop()
        return self.start()

    def __enter__(self):
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- connections -----------------------------------------------------------------

    def _accept_loop(self, listener, stopping):
        while not stopping.is_set():
            try:
                sock, addr = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                self._accepted += 1
                conn = Conn(self, sock, addr, self._accepted)
                self.conns.append(conn)
                self._cond.notify_all()
            handler = self.handler
            if handler is None:
                self._queue.put(conn)
            else:
                t = threading.Thread(target=self._serve, args=(conn, handler), daemon=True)
                self._threads.append(t)
                t.start()

    def _serve(self, conn, handler):
        try:
            try:
                req = conn.read_request()
            except (UpstreamError, OSError, ValueError):
                return
            handler(conn, req)
        except Exception as e:  # kept for the test to look at, never raised in a thread
            with self._cond:
                self.errors.append("conn #%d: %r" % (conn.index, e))
        finally:
            if not conn.detached:
                conn.close()

    def accept(self, timeout=DEFAULT_TIMEOUT):
        """Manual mode: the next accepted connection."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise UpstreamError("no connection reached the upstream in %.1f s" % timeout)

    def no_connection(self, wait=0.3):
        """True if no connection is waiting in manual mode (after waiting `wait` s)."""
        try:
            c = self._queue.get(timeout=wait)
        except queue.Empty:
            return True
        self._queue.put(c)
        return False

    def wait_conns(self, n, timeout=DEFAULT_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.conns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UpstreamError("%d connections, wanted %d" % (len(self.conns), n))
                self._cond.wait(left)
            return list(self.conns)

    def _record(self, req):
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()

    def wait_requests(self, n, timeout=DEFAULT_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UpstreamError("%d requests recorded, wanted %d: %r"
                                        % (len(self.requests), n, self.requests))
                self._cond.wait(left)
            return list(self.requests)


# ---- canned handlers ----------------------------------------------------------------------


def reply(status=200, reason="OK", headers=(), body=b"", framing="length", chunks=None):
    def handler(conn, req):
        conn.respond(status, reason, headers, body, framing, chunks)

    return handler


def reply_raw(data, hold=False, hold_timeout=30):
    def handler(conn, req):
        conn.send(data)
        if hold:
            conn.wait_eof(hold_timeout)

    return handler


def close_without_answer():
    def handler(conn, req):
        pass

    return handler


def never_answer(timeout=30):
    def handler(conn, req):
        conn.wait_eof(timeout)

    return handler


def delayed(seconds, then):
    def handler(conn, req):
        time.sleep(seconds)
        then(conn, req)

    return handler


def by_path(routes, default=None):
    fallback = default or reply(404, "Not Found", [("Content-Type", "text/plain")], b"nope\n")

    def handler(conn, req):
        routes.get(req.path, fallback)(conn, req)

    return handler


def event_stream(events=(), headers=(("Content-Type", "text/event-stream"),), hold=True,
                 hold_timeout=30):
    def handler(conn, req):
        conn.send_head(200, "OK", list(headers))
        for ev in events:
            conn.send(ev)
        if hold:
            conn.wait_eof(hold_timeout)

    return handler
