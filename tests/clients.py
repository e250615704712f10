"""Real clients for the tests: headless Chromium (through tests/browser/driver.mjs), the Node
`eventsource` package and `eventsource-parser` (tests/browser/*.mjs), and a TCP relay a test
can sever to cut every connection between a client and the server.

The npm packages live in tests/browser/node_modules (`make test` runs `npm ci` there). When a
client is missing the tests skip, except under SSE_TESTS_STRICT=1 (CI), where they fail."""

import json
import os
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
    again. `requests` keeps the first bytes each client sent (its request head)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open = []
        self.requests = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            slot = {"head": b""}
            with self.lock:
                if self.closed:
                    client.close()
                    upstream.close()
                    return
                self.open.append((client, upstream))
                self.requests.append(slot)
            threading.Thread(target=self._pipe, args=(client, upstream, slot), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src, dst, slot):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if slot is not None and len(slot["head"]) < 8192:
                    slot["head"] += data
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

    def heads(self):
        with self.lock:
            return [r["head"] for r in self.requests]

    def close(self):
        with self.lock:
            self.closed = True
        self.listener.close()
        self.sever()


def wait_until(predicate, timeout=10, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)
