"""nginx with its default proxy settings (proxy_buffering on, HTTP/1.0 to the upstream) in
front of sse-server passes events through at once, because sse-server's stream head carries
`X-Accel-Buffering: no`. A control shows the test can fail: the same nginx in front of an
upstream that streams text/event-stream without that header holds a small event back.

nginx is installed from Debian when missing and the tests run as root (a temporary
policy-rc.d keeps the package from starting a system nginx); otherwise the tests skip."""

import os
import select
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import (
    build_request, connect, free_port, metric_values, parse_head, publish, unavailable,
)

POLICY_RC = "/usr/sbin/policy-rc.d"


def find_nginx():
    for path in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if path and os.access(path, os.X_OK):
            return path
    return None


def install_nginx():
    """apt-get install -y nginx, with a policy-rc.d that forbids starting services (removed
    afterwards only if this function created it). Returns None or why it failed."""
    created = False
    if not os.path.exists(POLICY_RC):
        with open(POLICY_RC, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(POLICY_RC, 0o755)
        created = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    why = None
    try:
        for attempt in range(2):
            try:
                r = subprocess.run(
                    ["apt-get", "install", "-y", "--no-install-recommends", "nginx"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=600,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                return "apt-get install nginx failed: %s" % e
            if r.returncode == 0:
                return None
            why = "apt-get install nginx exited %d: %s" % (
                r.returncode,
                r.stderr.decode("utf-8", "replace").strip().splitlines()[-1:],
            )
            if attempt == 0:
                try:
                    subprocess.run(
                        ["apt-get", "update"], env=env, stdin=subprocess.DEVNULL,
                        capture_output=True, timeout=300,
                    )
                except (OSError, subprocess.TimeoutExpired) as e:
                    return "apt-get update failed: %s" % e
        return why
    finally:
        if created:
            os.unlink(POLICY_RC)


@pytest.fixture(scope="module")
def nginx_binary():
    path = find_nginx()
    if path:
        return path
    if os.geteuid() != 0:
        unavailable("nginx is not installed and the tests do not run as root to install it")
    why = install_nginx()
    path = find_nginx()
    if not path:
        unavailable("nginx is not installed and could not be installed: %s" % why)
    return path


def proxy_conf(d, port, upstream_port):
    """nginx's default proxy settings in front of 127.0.0.1:upstream_port, every path in d."""
    return (
        "pid %(d)s/nginx.pid;\n"
        "error_log %(d)s/error.log info;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "    access_log off;\n"
        "    client_body_temp_path %(d)s/client_body;\n"
        "    proxy_temp_path %(d)s/proxy;\n"
        "    fastcgi_temp_path %(d)s/fastcgi;\n"
        "    uwsgi_temp_path %(d)s/uwsgi;\n"
        "    scgi_temp_path %(d)s/scgi;\n"
        "    server {\n"
        "        listen 127.0.0.1:%(port)d;\n"
        "        location / { proxy_pass http://127.0.0.1:%(up)d; }\n"
        "    }\n"
        "}\n" % {"d": d, "port": port, "up": upstream_port}
    )


class Nginx:
    """nginx as a child process (no daemon, no master), config and every path in a tmp dir.
    make_conf(dir, port) gives the config's text for the listening port chosen here."""

    def __init__(self, binary, tmpdir, make_conf):
        self.dir = str(tmpdir)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        d = self.dir
        with open(conf, "w") as f:
            f.write(make_conf(d, self.port))
        self.out = open(os.path.join(d, "nginx.out"), "wb")
        self.proc = subprocess.Popen(
            [binary, "-p", d + "/", "-c", conf, "-e", os.path.join(d, "error.log"),
             "-g", "daemon off; master_process off;"],
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited %s: %s" % (self.proc.returncode, self.log()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("nginx is not listening: " + self.log())
                time.sleep(0.05)

    def log(self):
        text = ""
        for name in ("nginx.out", "error.log"):
            try:
                with open(os.path.join(self.dir, name), "rb") as f:
                    text += f.read().decode("utf-8", "replace")
            except OSError:
                pass
        return text

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.out.close()


@pytest.fixture
def start_nginx(nginx_binary, tmp_path):
    started = []

    def start(upstream_port=None, make_conf=None):
        d = tmp_path / ("nginx%d" % len(started))
        d.mkdir()
        if make_conf is None:
            make_conf = lambda d, port: proxy_conf(d, port, upstream_port)  # noqa: E731
        n = Nginx(nginx_binary, d, make_conf)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


class Client:
    """A subscriber talking HTTP/1.1 to nginx. Nothing is awaited on connecting (a buffering
    nginx holds back the response head too); the body is de-chunked when nginx chunks it."""

    def __init__(self, port, path):
        self.sock = connect(port)
        self.sock.sendall(build_request("GET", path, {"Accept": "text/event-stream"}))
        self.buf = b""
        self.status = self.headers = None
        self.raw = b""
        self.chunked = False
        self.closed = False

    def _take(self, data):
        if self.status is None:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, _, data = self.buf.partition(b"\r\n\r\n")
            self.status, _, self.headers = parse_head(head + b"\r\n\r\n")
            self.chunked = any(
                k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in self.headers
            )
        self.raw += data

    def read_head(self, timeout=5):
        deadline = time.monotonic() + timeout
        while self.status is None:
            left = deadline - time.monotonic()
            assert left > 0 and not self.closed, "no response head from nginx: %r" % self.buf
            self._recv(left)

    def _recv(self, wait):
        r, _, _ = select.select([self.sock], [], [], wait)
        if r:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
            self._take(chunk)

    def header(self, name):
        for k, v in self.headers or []:
            if k.lower() == name.lower():
                return v
        return None

    def body(self):
        if not self.chunked:
            return self.raw
        out, i = b"", 0
        while True:
            j = self.raw.find(b"\r\n", i)
            if j < 0:
                return out
            size = int(self.raw[i:j].split(b";")[0], 16)
            if size == 0:
                return out
            out += self.raw[j + 2 : j + 2 + size]
            if len(self.raw) < j + 2 + size + 2:
                return out
            i = j + 2 + size + 2

    def wait_for(self, marker, timeout):
        """True once marker is in the body; False at timeout or when the connection closed
        without it."""
        deadline = time.monotonic() + timeout
        while marker not in self.body():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return False
            self._recv(left)
        return True

    def still_open(self, wait=0.3):
        r, _, _ = select.select([self.sock], [], [], wait)
        if not r:
            return True
        chunk = self.sock.recv(65536, socket.MSG_PEEK)
        return bool(chunk)

    def close(self):
        self.sock.close()


class TinyUpstream:
    """Answers one GET with a close-delimited text/event-stream (optionally with extra
    headers), sends events when told, and records the request line."""

    def __init__(self, extra_headers=b""):
        self.extra = extra_headers
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.ls.settimeout(10)
        self.port = self.ls.getsockname()[1]
        self.conn = None
        self.request_line = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            s, _ = self.ls.accept()
        except OSError:
            return
        s.settimeout(5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            self.request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            s.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\n" + self.extra + b"\r\nretry: 3000\n\n"
            )
        except OSError:
            pass
        self.conn = s
        self.ready.set()

    def send(self, data):
        assert self.ready.wait(5), "nginx did not connect to the upstream"
        self.conn.sendall(data)

    def close(self):
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.conn.close()
        self.ls.close()
        self.thread.join(timeout=5)


def test_nginx_default_proxy_passes_sse_server_events_unbuffered(start_server, start_nginx):
    srv = start_server("--publish-token", "secret")
    nginx = start_nginx(srv.port)
    client = Client(nginx.port, "/events/news")
    try:
        client.read_head(5)
        assert client.status == 200, client.headers
        assert client.header("Content-Type") == "text/event-stream", client.headers
        # the stream's opening bytes come through at once too
        assert client.wait_for(b"retry: 3000\n\n", 5), (client.raw, nginx.log())
        deadline = time.monotonic() + 5
        while metric_values(srv.port)["sse_subscribers"] != 1:
            assert time.monotonic() < deadline, "nginx did not subscribe"
            time.sleep(0.05)
        r = publish(srv.port, "through nginx", topic="news", event="small")
        assert r.status == 200 and r.json()["subscribers"] == 1, r.body
        assert client.wait_for(b"event: small\ndata: through nginx\n\n", 5), (
            "event not passed through nginx within 5 s; got %r" % client.body()
        )
        assert not client.closed and client.still_open(), "nginx closed the stream"
        # and the connection keeps carrying events
        assert publish(srv.port, "second", topic="news").status == 200
        assert client.wait_for(b"data: second\n\n", 5), client.body()
        assert not client.closed and client.still_open()
    finally:
        client.close()


def test_control_nginx_buffers_a_stream_without_x_accel_buffering(start_nginx):
    up = TinyUpstream()
    nginx = start_nginx(up.port)
    client = Client(nginx.port, "/stream")
    try:
        up.send(b"data: control\n\n")
        # with nginx's default proxy_buffering the small event is held back (the response
        # head with it)...
        assert not client.wait_for(b"data: control\n\n", 1.5), (
            "nginx passed a small event through without X-Accel-Buffering: no; the nginx "
            "test above proves nothing on this nginx (got %r)" % client.body()
        )
        # ...until the upstream's body ends (it was buffered, not lost)
        up.close()
        assert client.wait_for(b"data: control\n\n", 5), client.body()
        assert client.status == 200
        # nginx spoke HTTP/1.0 to the upstream, as it does to sse-server in the test above
        assert up.request_line == "GET /stream HTTP/1.0", up.request_line
    finally:
        client.close()
        up.close()


def test_control_x_accel_buffering_header_alone_unbuffers(start_nginx):
    up = TinyUpstream(b"X-Accel-Buffering: no\r\n")
    nginx = start_nginx(up.port)
    client = Client(nginx.port, "/stream")
    try:
        up.send(b"data: control\n\n")
        assert client.wait_for(b"data: control\n\n", 5), client.body()
        assert client.status == 200
        assert not client.closed
    finally:
        client.close()
        up.close()
