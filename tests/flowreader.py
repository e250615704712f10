"""A load-generating subscriber process for the flow-control tests (tests/test_flow_control.py).

    flowreader.py PORT PATH COUNT [RATE] [TIMEOUT] [RCVBUF] [RECONNECTS]

Opens COUNT streams on 127.0.0.1:PORT PATH, prints "ready" once every response head has
arrived, then reads them all until each has seen an event whose data is "END", has been
closed by the server, or TIMEOUT seconds (default 120) have passed. The data of every other
event starts with a decimal number (then a space and anything): each stream checks that its numbers are 1, 2, 3, ... with
no gap and no repeat (events before the first one it sees, such as a position event with
empty data, are ignored). RATE (bytes per second per stream, default 0 = as fast as it can)
makes a slow reader (under 64 KiB/s, with a 4 KiB receive buffer). RCVBUF (bytes, default 32768) is each
stream's socket receive buffer: small, so that what the server sends waits in its own queue
(where flow control sees it) rather than in the kernel's. RECONNECTS (default 0) is how many
times a stream the server closed before END comes back, as an EventSource does, with a
Last-Event-ID of the last id it saw: the server drops a subscriber that falls behind the
others (a reader process starved of CPU on a busy machine), and what it promises is that
the subscriber resumes from the backlog without a gap, which the numbering then checks.
At the end it prints one JSON line: a list with, per stream,
{"count": numbers seen, "last": last number, "in_order": bool, "end": saw END,
"closed": closed by the server before END (and not reconnected), "reconnects": times it
came back}.

It runs as its own process so that many of them can read in parallel (one Python process
is slower than the server; several make the load the server has to pace itself to).
"""

import json
import re
import selectors
import socket
import sys
import time

DATA = re.compile(rb"^data: ?(.*)$", re.M)
ID = re.compile(rb"^id: ?(.*)$", re.M)


class Reader:
    def __init__(self, port, path, rcvbuf):
        self.port, self.path, self.rcvbuf = port, path, rcvbuf
        self.last_id = None
        self.reconnects = 0
        self.count = 0
        self.last = 0
        self.in_order = True
        self.end = False
        self.closed = False
        self.connect()

    def connect(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", self.port))
        resume = b"" if self.last_id is None else b"Last-Event-ID: " + self.last_id + b"\r\n"
        self.sock.sendall(b"GET " + self.path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                          b"Accept: text/event-stream\r\n" + resume + b"\r\n")
        self.buf = b""
        self.head = False

    def take(self, data):
        self.buf += data
        if not self.head:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self.head = True
            self.buf = self.buf[i + 4:]
        cut = self.buf.rfind(b"\n\n")
        if cut < 0:
            return
        blocks, self.buf = self.buf[: cut + 2], self.buf[cut + 2:]
        for m in ID.finditer(blocks):
            self.last_id = m.group(1)  # (events here carry an id each, or none at all)
        for m in DATA.finditer(blocks):
            value = m.group(1).split(b" ", 1)[0]
            if value == b"END":
                self.end = True
            elif value.isdigit():
                n = int(value)
                if n != self.last + 1:
                    self.in_order = False
                self.last = n
                self.count += 1

    def done(self):
        return self.end or self.closed

    def result(self):
        return {"count": self.count, "last": self.last, "in_order": self.in_order,
                "end": self.end, "closed": self.closed, "reconnects": self.reconnects}


def main():
    port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rate = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    rcvbuf = int(sys.argv[6]) if len(sys.argv) > 6 else 32768
    reconnects = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    readers = [Reader(port, path, 4096 if 0 < rate < 65536 else rcvbuf) for _ in range(count)]
    sel = selectors.DefaultSelector()
    for r in readers:
        r.sock.setblocking(False)
        sel.register(r.sock, selectors.EVENT_READ, r)
    announced = False
    deadline = time.monotonic() + timeout
    chunk = max(1, rate // 10) if rate else 1 << 18
    while time.monotonic() < deadline and not all(r.done() for r in readers):
        if not announced and all(r.head for r in readers):
            print("ready", flush=True)
            announced = True
        for key, _ in sel.select(timeout=0.1):
            r = key.data
            budget = chunk  # a slow reader takes at most rate / 10 bytes a tick
            while budget > 0 and not r.done():
                try:
                    data = r.sock.recv(min(budget, 1 << 18))
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    r.closed = not r.end
                    if r.closed and r.reconnects < reconnects and r.last_id is not None:
                        sel.unregister(r.sock)
                        r.sock.close()
                        r.reconnects += 1
                        r.closed = False
                        r.connect()
                        r.sock.setblocking(False)
                        sel.register(r.sock, selectors.EVENT_READ, r)
                    break
                r.take(data)
                budget -= len(data) if rate else 0
                if not rate:
                    break
            if r.done():
                sel.unregister(r.sock)
        if rate:
            time.sleep(0.1)
    if not announced:
        print("ready", flush=True)
    print(json.dumps([r.result() for r in readers]), flush=True)
    for r in readers:
        r.sock.close()


if __name__ == "__main__":
    main()
