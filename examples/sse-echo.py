#!/usr/bin/env python3
"""A tiny SSE origin for trying sse-server's proxy mode, shaped like the upstream in API7's
"Understanding SSE" article: on GET /.sse it sends an `event: server` with its host name, an
`event: request` whose data is the request it received (so you can see the X-Forwarded-*
headers the proxy added), then an `event: time` with the UTC time every second, each with an
id. Standard library only.

    python3 examples/sse-echo.py 9000 &
    ./sse-server --proxy /.sse=http://127.0.0.1:9000/.sse &
    curl -N http://127.0.0.1:8080/.sse -H 'Accept: text/event-stream'
"""

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.split("?")[0] != "/.sse":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()  # no Content-Length: the body ends when the connection does
        request = [self.requestline, ""] + [f"{k}: {v}" for k, v in self.headers.items()] + [""]
        out = [f"event: server\ndata: {socket.gethostname()}\n\n",
               "id: 1\nevent: request\n" + "".join(f"data: {line}\n" if line else "data:\n" for line in request) + "\n"]
        try:
            self.wfile.write("".join(out).encode())
            self.wfile.flush()
            n = 2
            while True:
                time.sleep(1)
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self.wfile.write(f"id: {n}\nevent: time\ndata: {now}\n\n".encode())
                self.wfile.flush()
                n += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"sse-echo on http://127.0.0.1:{port}/.sse", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
