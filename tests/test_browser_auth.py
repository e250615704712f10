"""A real browser's EventSource on private streams (issue 18, docs/auth.md): headless Debian
Chromium driven by playwright-core (tests/clients.py, tests/browser/driver.mjs), the same
harness page as tests/test_browser.py. A page cannot set headers on an EventSource, so the
token travels in the cookie the application set (`sse_token`): put in the browser here with
Playwright's context.addCookies, HttpOnly and SameSite=Strict as an application would set it.

Same origin, the cookie goes with the stream request and the events arrive; when the token
expires the stream ends and the browser comes back by itself with the renewed cookie and its
Last-Event-ID, missing nothing; without a cookie, with a forged or expired one, or for a topic
the token does not grant, the answer is 401 or 403 and the EventSource gives up for good
(readyState 2, CLOSED, one error event, no second request).
Across origins (the page on one port, the stream on another port of the same host: same site,
so the cookie may go, but another origin, so CORS decides), `withCredentials: true` under
`--cors PAGE_ORIGIN` gets the events; without withCredentials the cookie stays home (401), and
under `--cors '*'` the browser refuses the credentialed answer itself."""

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from clients import HERE, Browser, TcpRelay, wait_until
from conftest import free_port, metric_values, pub
from test_docs import ROOT, blocks

pytestmark = pytest.mark.auth

PAGES = os.path.join(HERE, "browser", "pages")
KEY = "browser-test-key-0123456789abcdef"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(claims, key=KEY):
    """An HS256 JWT (RFC 7519) carrying claims, as an application mints one."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signing_input = "%s.%s" % (header, payload)
    sig = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return "%s.%s" % (signing_input, b64url(sig))


def grant(*topics, ttl=600):
    return mint({"sub": "user-42", "exp": int(time.time()) + ttl,
                 "sse": {"subscribe": list(topics)}})


def harness_url(origin, stream, credentials=False):
    from urllib.parse import urlencode
    query = {"stream": stream}
    if credentials:
        query["credentials"] = "1"
    return "%s/harness.html?%s" % (origin, urlencode(query))


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture
def jar(browser):
    """The browser with no cookie before and after the test."""
    browser.clear_cookies()
    yield browser
    browser.clear_cookies()


def set_token(browser, url, token, name="sse_token"):
    """The cookie as the application would set it for the stream's host: HttpOnly (no script
    reads it), SameSite=Strict (never sent from another site)."""
    held = browser.add_cookies([{"name": name, "value": token, "url": url, "httpOnly": True,
                                 "sameSite": "Strict"}])
    assert [c["name"] for c in held] == [name], held


def refused(values):
    return {k[len('sse_auth_refused_total{reason="'):-2]: v for k, v in values.items()
            if k.startswith("sse_auth_refused_total{") and v}


def stream_exchanges(relay, path):
    return [x for x in relay.exchanges() if x["request"].startswith(b"GET %s " % path.encode())]


def test_same_origin_cookie_opens_a_private_stream(jar, start_server):
    srv = start_server("--root", PAGES, "--publish-token", "secret", "--jwt-secret", KEY)
    set_token(jar, srv.url, grant("private-1", "news"))
    jar.goto(harness_url(srv.url, "/events?topic=private-1"))
    jar.wait("rec.opens === 1")
    id_ = pub(srv.port, "for user 42 only", topic="private-1")
    jar.wait("rec.events.length === 1")
    time.sleep(0.2)  # nothing more may arrive
    assert jar.eval("compare(%s)" % json.dumps([{"data": "for user 42 only", "id": id_}])) == "ok"
    assert jar.eval("es.readyState") == 1 and jar.eval("rec.errors") == 0
    assert refused(metric_values(srv.port)) == {}


def test_stream_ends_at_exp_and_resumes_with_the_renewed_cookie(jar, start_server):
    """The token's exp ends the stream (5 s after it, with a retry:); the application renewed
    the cookie meanwhile, so the browser's own reconnect carries the new token and its
    Last-Event-ID, and gets what was published while it was away: nothing lost."""
    srv = start_server("--root", PAGES, "--publish-token", "secret", "--jwt-secret", KEY,
                       "--retry", "2000")
    relay = TcpRelay(srv.port)
    try:
        origin = "http://127.0.0.1:%d" % relay.port
        set_token(jar, origin, grant("private-1", ttl=1))
        jar.goto(harness_url(origin, "/events?topic=private-1"))
        jar.wait("rec.opens === 1")
        ids = [pub(srv.port, "before expiry", topic="private-1")]
        jar.wait("rec.events.length === 1")
        renewed = grant("private-1", ttl=600)
        set_token(jar, origin, renewed)  # the application's fresh Set-Cookie
        jar.wait("rec.errors === 1", timeout=15)  # exp + 5 s: the stream ends
        # Published while the browser waits out retry: (2 s): it can only get these replayed.
        ids += [pub(srv.port, "missed %d" % i, topic="private-1") for i in range(2)]
        jar.wait("rec.opens === 2 && rec.events.length === 3", timeout=10)
        time.sleep(0.2)
        assert jar.eval("compare(%s)" % json.dumps(
            [{"data": d, "id": i} for d, i in zip(["before expiry", "missed 0", "missed 1"],
                                                  ids)])) == "ok"
        assert jar.eval("rec.errorLog") == [{"lastId": ids[0], "readyState": 0}]
        streams = stream_exchanges(relay, "/events?topic=private-1")
        assert len(streams) == 2, streams
        again = streams[1]["request"].decode()
        assert "\r\nLast-Event-ID: %s\r\n" % ids[0] in again, again
        assert "sse_token=%s" % renewed in again, again
        assert streams[1]["response"].startswith(b"HTTP/1.1 200 "), streams[1]
        values = metric_values(srv.port)
        assert values['sse_connections_closed_total{reason="expired"}'] == 1
        assert values["sse_replays_total"] == 1 and refused(values) == {}
    finally:
        relay.close()


# (what the browser holds, the topic the page asks for, the answer, the refusal's reason)
REFUSALS = [
    pytest.param(None, "private-1", 401, "missing", id="no-cookie"),
    pytest.param(grant("private-1")[:-4] + "AAAA", "private-1", 401, "signature", id="forged"),
    pytest.param(mint({"exp": int(time.time()) - 60, "sse": {"subscribe": ["private-1"]}}),
                 "private-1", 401, "expired", id="expired"),
    pytest.param(grant("private-1"), "private-2", 403, "topic", id="not-granted"),
]


@pytest.mark.parametrize("token,topic,status,reason", REFUSALS)
def test_refused_eventsource_closes_for_good(jar, start_server, token, topic, status, reason):
    srv = start_server("--root", PAGES, "--jwt-secret", KEY, "--retry", "200")
    relay = TcpRelay(srv.port)  # to see each request the browser makes, and its answer
    try:
        origin = "http://127.0.0.1:%d" % relay.port
        if token is not None:
            set_token(jar, origin, token)
        path = "/events?topic=" + topic
        jar.goto(harness_url(origin, path))
        jar.wait("es.readyState === 2")
        # One error event, at CLOSED: the browser does not reconnect after a 401 or a 403,
        # which is what a refused client should do (at retry: 200 it would be back in 1.5 s).
        time.sleep(1.5)
        assert jar.eval("rec.opens") == 0
        assert jar.eval("rec.errorLog") == [{"lastId": "", "readyState": 2}]
        streams = stream_exchanges(relay, path)
        assert len(streams) == 1, streams
        assert streams[0]["response"].startswith(b"HTTP/1.1 %d " % status), streams
        sent_cookie = b"\r\ncookie: sse_token=" in streams[0]["request"].lower()
        assert sent_cookie == (token is not None), streams[0]["request"]
        assert refused(metric_values(srv.port)) == {reason: 1}
    finally:
        relay.close()


def test_cross_origin_with_credentials_under_cors(jar, start_server):
    # The page on 127.0.0.1:A, the stream on 127.0.0.1:B: two origins of one site, so a
    # SameSite=Strict cookie for 127.0.0.1 goes with a credentialed request from A to B.
    page = start_server("--root", PAGES)
    srv = start_server("--jwt-secret", KEY, "--cors", page.url, "--publish-token", "secret")
    set_token(jar, srv.url, grant("x"))
    jar.goto(harness_url(page.url, srv.url + "/events?topic=x", credentials=True))
    jar.wait("rec.opens === 1")
    id_ = pub(srv.port, "across origins, with the cookie", topic="x")
    jar.wait("rec.events.length === 1")
    assert jar.eval("compare(%s)" % json.dumps(
        [{"data": "across origins, with the cookie", "id": id_}])) == "ok"
    assert jar.eval("rec.errors") == 0
    assert metric_values(srv.port)["sse_subscribers"] == 1
    assert refused(metric_values(srv.port)) == {}


@pytest.mark.parametrize("cors,credentials,reason", [
    # Without withCredentials a cross-origin EventSource sends no cookie: 401, closed.
    pytest.param("page", False, "missing", id="no-withCredentials"),
    # With it, `--cors '*'` cannot carry credentials (no Access-Control-Allow-Credentials with
    # a wildcard): the server lets the stream start, the browser refuses the answer.
    pytest.param("*", True, None, id="wildcard-cors"),
])
def test_cross_origin_without_what_credentials_need(jar, start_server, cors, credentials,
                                                    reason):
    page = start_server("--root", PAGES)
    srv = start_server("--jwt-secret", KEY, "--cors", page.url if cors == "page" else cors)
    set_token(jar, srv.url, grant("x"))
    jar.goto(harness_url(page.url, srv.url + "/events?topic=x", credentials=credentials))
    jar.wait("es.readyState === 2")
    assert jar.eval("rec.opens") == 0
    assert jar.eval("rec.errorLog") == [{"lastId": "", "readyState": 2}]
    values = metric_values(srv.port)
    assert refused(values) == ({reason: 1} if reason else {})
    if reason is None:  # the server did accept it: the browser alone refused the answer
        wait_until(lambda: metric_values(srv.port)["sse_subscribers"] == 0,
                   what="the refused stream to close")


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_readme_application_page(jar, start_server, tmp_path):
    """README's private-streams example as a reader runs it: its login.py (the block README has
    the reader save, the same one docs/auth.md runs) mints user 42's token into a cookie and
    serves a page on another port; the page's EventSource, with credentials under --cors
    naming that origin, hears what is published to user-42-news."""
    (app,) = [b.lines for b in blocks(os.path.join(ROOT, "README.md")) if b.note == "file: login.py"]
    (tmp_path / "login.py").write_text("\n".join(app) + "\n")
    (tmp_path / "jwt.key").write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    app_port = free_port()
    origin = "http://127.0.0.1:%d" % app_port
    srv = start_server("--jwt-secret-file", str(tmp_path / "jwt.key"), "--cors", origin,
                       "--publish-token", "secret")
    proc = subprocess.Popen([sys.executable, "login.py", str(app_port), srv.url], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(app_port), what="login.py listening")
        jar.goto(origin + "/")
        jar.wait("es.readyState === 1")
        pub(srv.port, "for user 42 only", topic="user-42-news")
        jar.wait("document.getElementById('log').textContent === 'for user 42 only\\n'")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert refused(metric_values(srv.port)) == {}
