"""Real clients for the tests: headless Chromium (through tests/browser/driver.mjs), the Node
`eventsource` package and `eventsource-parser` (tests/browser/*.mjs), and a TCP relay a test
can sever to cut every connection between a client and the server.

The npm packages live in tests/browser/node_modules (`make test` runs `npm ci` there). When a
client is missing the tests skip, except under SSE_TESTS_STRICT=1 (CI), where they fail."""

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time

from conftest import unavailable

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = os.path.join(HERE, "browser")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def require_node_packages(*names):
    node = shutil.which("node")
    if not node:
        unavailable("node is not installed")
    missing = [n for n in names if not os.path.isdir(os.path.join(CLIENTS, "node_modules", n))]
    if missing:
        unavailable("npm packages missing in tests/browser: %s (run make deps)" % " ".join(missing))
    return node


class NodeLines:
    """A Node script from tests/browser printing one JSON object per line: the objects arrive
    in self.seen as wait() and drain() take them; closing its standard input ends it."""

    def __init__(self, script, *args, packages=("eventsource",)):
        node = require_node_packages(*packages)
        self.proc = subprocess.Popen(
            [node, os.path.join(CLIENTS, script), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.seen = []
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def wait(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%s saw only %r" % (type(self).__name__, self.seen))
            try:
                self.seen.append(self.lines.get(timeout=left))
            except queue.Empty:
                pass

    def drain(self):
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Browser:
    """One headless Chromium; each call is one request to driver.mjs."""

    def __init__(self):
        node = require_node_packages("playwright-core")
        if not os.access(CHROMIUM, os.X_OK):
            unavailable("%s is not installed (apt-get install chromium)" % CHROMIUM)
        self.proc = subprocess.Popen(
            [node, os.path.join(CLIENTS, "driver.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, CHROMIUM=CHROMIUM),
        )
        self.stderr = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.version = self._answer(timeout=60)

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace").rstrip())

    def _answer(self, timeout):
        result = {}

        def read():
            result["line"] = self.proc.stdout.readline()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        line = result.get("line")
        if not line:
            raise AssertionError(
                "browser driver gave no answer within %ss; stderr:\n%s"
                % (timeout, "\n".join(self.stderr[-30:]))
            )
        answer = json.loads(line)
        if not answer["ok"]:
            raise AssertionError("browser: " + answer["error"])
        return answer.get("value")

    def call(self, op, timeout=30, **args):
        self.proc.stdin.write((json.dumps(dict(op=op, **args)) + "\n").encode())
        self.proc.stdin.flush()
        return self._answer(timeout)

    def goto(self, url):
        return self.call("goto", url=url)

    def eval(self, expr):
        return self.call("eval", expr=expr)

    def wait(self, expr, timeout=10):
        """Waits until the expression is truthy in the page and returns its value; on timeout
        the assertion shows what the harness page recorded and the console."""
        try:
            return self.call("wait", timeout=timeout + 15, expr=expr, ms=int(timeout * 1000))
        except AssertionError as e:
            state = self.eval("JSON.stringify(window.rec || null)")
            raise AssertionError("%s\npage state: %s\nconsole: %s" % (e, state, self.console()))

    def screenshot(self, path):
        return self.call("screenshot", path=path)

    def viewport(self, width, height):
        return self.call("viewport", width=width, height=height)

    def console(self):
        return self.call("console")

    def add_cookies(self, cookies):
        """Adds cookies to the browser as Playwright's context.addCookies takes them (each with
        a url, or a domain and a path); returns every cookie the browser then holds."""
        return self.call("cookies", cookies=cookies)

    def clear_cookies(self):
        return self.call("clear_cookies")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class TcpRelay:
    """Listens on a loopback port and pipes each connection to the server's port. sever()
    closes every open connection at once, as a network cut would; new connections are relayed
    again. hold() makes new connections wait, accepted but not yet connected to the server
    (a client that cannot get through), until release().

    Every connection's bytes are kept both ways (the first KEEP bytes each), with the time
    each piece arrived: heads() gives the first request head of each relayed connection,
    exchanges() every request with the response the server gave it."""

    KEEP = 1 << 20

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open = []
        self.conns = []  # per connection: bytes each way, when each client piece arrived
        self.waiting = 0
        self.passing = threading.Event()
        self.passing.set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client):
        with self.lock:
            self.waiting += 1
        passing = self.passing.wait(timeout=60)
        with self.lock:
            self.waiting -= 1
        try:
            if not passing:
                raise OSError("held for too long")
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        conn = {"up": bytearray(), "down": bytearray(), "arrivals": []}
        with self.lock:
            if self.closed:
                client.close()
                upstream.close()
                return
            self.open.append((client, upstream))
            self.conns.append(conn)
        threading.Thread(target=self._pipe, args=(client, upstream, conn, "up"),
                         daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, conn, "down"),
                         daemon=True).start()

    def _pipe(self, src, dst, conn, way):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    kept = conn[way]
                    if way == "up":
                        conn["arrivals"].append((len(kept), time.monotonic()))
                    kept += data[: max(0, self.KEEP - len(kept))]
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def sever(self):
        with self.lock:
            pairs, self.open = self.open, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        return len(pairs)

    def hold(self):
        self.passing.clear()

    def held(self):
        """How many connections are waiting for release()."""
        with self.lock:
            return self.waiting

    def release(self):
        self.passing.set()

    def heads(self):
        with self.lock:
            return [bytes(c["up"][:8192]) for c in self.conns]

    def exchanges(self):
        """Every request the clients sent, in the order they arrived: dicts with the request
        head, the head of the server's response to it (None if none came) and `at`, the
        time.monotonic() its first byte reached the relay."""
        with self.lock:
            conns = [(bytes(c["up"]), bytes(c["down"]), list(c["arrivals"])) for c in self.conns]
        out = []
        for up, down, arrivals in conns:
            responses = [head for _, head in message_heads(down, responses=True)]
            for i, (offset, head) in enumerate(message_heads(up, responses=False)):
                at = max(t for start, t in arrivals if start <= offset)
                out.append({"request": head, "response": responses[i] if i < len(responses)
                            else None, "at": at})
        return sorted(out, key=lambda e: e["at"])

    def close(self):
        with self.lock:
            self.closed = True
        self.release()
        self.listener.close()
        self.sever()


def message_heads(data, responses):
    """(offset, head) of each HTTP/1.1 message in data, one after the other. A body is skipped
    by its Content-Length; a response without one (other than 1xx, 204 and 304) runs to the
    end of the connection. Enough for GETs and sse-server's answers (none to a HEAD)."""
    heads, at = [], 0
    while True:
        end = data.find(b"\r\n\r\n", at)
        if end < 0:
            return heads
        head = data[at : end + 4]
        heads.append((at, head))
        lines = head.split(b"\r\n")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if responses:
            status = int(lines[0].split()[1])
            if status in (204, 304) or status < 200:
                length = 0
            elif length is None:
                return heads
        at = end + 4 + (length or 0)


def header_value(head, name):
    """The value of header `name` in a message head, or None."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode()
    return None


def wait_until(predicate, timeout=10, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)
