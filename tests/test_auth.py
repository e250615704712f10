"""Authorization (issue 18, SSE_ENABLE_AUTH): HS256 JSON Web Tokens for subscribers and
publishers (Mercure-style grants), --public topics, and --auth-url, the application asked
before a stream starts. The exact flags, statuses, bodies and metric names are those of the
issue's behaviour contract: every refusal is checked byte for byte with the one
sse_auth_refused_total{reason} series it must move, by exactly one.

Tokens come from two places: jose (tests/browser/jwt.mjs, the JWT library Node applications
mint with) for the real thing, and this file (hmac, hashlib, base64) for the edge cases no
library would mint: alg none, other algorithms, bad signatures, padding, bad JSON, oversized.
A stream ends at its token's exp (+ 5 s of leeway) and resumes, renewed, without a loss: over
a raw socket, with the npm eventsource package (tests/browser/es-auth-client.mjs, its token
renewed through a fetch override); in Chromium with a cookie, also across origins, in
tests/test_browser_auth.py.

The application behind --auth-url is a small http.server in a thread, keyed by its session
cookie (AuthApp). Every wait is bounded; nothing here asserts speed: where a time is checked
(a stream ends at exp + 5 s; the application is given 5 s) only a generous bound is."""

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clients import CLIENTS, NodeLines, require_node_packages, wait_until
from conftest import (
    BINARY,
    Stream,
    ask,
    build_request,
    exchange_closing,
    free_port,
    healthy,
    metric_values,
    parse_block,
    pub,
    publish,
    read_prelude,
    request,
)

pytestmark = pytest.mark.auth

KEY = "k3y-for-the-tests-0123456789abcdef"
REASONS = [
    "missing", "malformed", "too_long", "alg", "signature", "expired", "not_yet_valid",
    "audience", "topic", "denied", "unavailable",
]
REASON_TEXT = {
    "malformed": "malformed", "too_long": "too long", "alg": "algorithm is not HS256",
    "signature": "bad signature", "expired": "expired", "not_yet_valid": "not yet valid",
    "audience": "wrong audience",
}
INVALID = 'Bearer error="invalid_token"'
TEXT = "text/plain; charset=utf-8"
PUB_RE = re.compile(rb'\{"id": "(\d+)", "topic": "([A-Za-z0-9._-]+)", "subscribers": (\d+)\}\n')
EVENT_STREAM = {"Accept": "text/event-stream"}


# ---- tokens --------------------------------------------------------------------------------


def b64u(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def seg(part):
    """A token segment: bytes as they are, anything else as compact JSON, base64url."""
    if not isinstance(part, bytes):
        part = json.dumps(part, separators=(",", ":")).encode()
    return b64u(part)


def hs256_sig(signing_input, key=KEY, digest=hashlib.sha256):
    return b64u(hmac.new(key.encode(), signing_input.encode(), digest).digest())


def hand_token(claims, key=KEY, header=None, digest=hashlib.sha256, h=None, p=None, sig=None):
    """A token built by hand: header/claims JSON (or raw segments h, p), signed with
    HMAC-`digest` over "h.p" unless sig is given."""
    h = h if h is not None else seg(header if header is not None else {"alg": "HS256", "typ": "JWT"})
    p = p if p is not None else seg(claims)
    return "%s.%s.%s" % (h, p, sig if sig is not None else hs256_sig(h + "." + p, key, digest))


def grants(subs=(), pubs=(), claim="sse", **more):
    """Claims granting topics to subscribe to (subs) and publish to (pubs), under claim."""
    return dict({claim: {"subscribe": list(subs), "publish": list(pubs)}}, **more)


def jose(*descs):
    """Tokens minted by jose (tests/browser/jwt.mjs), one per description: {secret, claims,
    alg, exp, nbf, iat, aud, header}; exp and nbf in seconds from now. The secret defaults
    to KEY."""
    node = require_node_packages("jose")
    descs = [dict({"secret": KEY}, **d) for d in descs]
    r = subprocess.run([node, os.path.join(CLIENTS, "jwt.mjs")], input=json.dumps(descs).encode(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    tokens = r.stdout.decode().split()
    assert len(tokens) == len(descs), r.stdout
    return tokens


def claims_of(token):
    p = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


def bearer(token):
    return {"Authorization": "Bearer " + token}


# ---- servers, requests, metrics ------------------------------------------------------------


def auth_server(start_server, *more, key=KEY, publish_token=True):
    args = ["--jwt-secret", key]
    if publish_token:
        args += ["--publish-token", "secret"]
    return start_server(*args, *more)


def refused_counts(port):
    m = metric_values(port)
    return {r: m['sse_auth_refused_total{reason="%s"}' % r] for r in REASONS}


def expect_refusal(port, path, headers, status, body, reason, www=None, method="GET",
                   data=b""):
    """The request gets exactly status/body (text/plain, WWW-Authenticate exactly www or
    absent) and sse_auth_refused_total moves by one on reason alone."""
    before = refused_counts(port)
    if method == "GET":
        r = ask(port, path, headers)
    else:
        r = request(port, method, path, headers, data)
    assert (r.status, r.body) == (status, body.encode()), (r.raw_head, r.body)
    assert r.header("Content-Type") == TEXT, r.raw_head
    assert r.header("Content-Length") == str(len(r.body)), r.raw_head
    assert r.header("WWW-Authenticate") == www, r.raw_head
    after = refused_counts(port)
    want = dict(before)
    want[reason] += 1
    assert after == want, (reason, before, after)
    return r


def expect_invalid(port, token, reason, path="/events?topic=news", via="header"):
    """A present but invalid token: 401, invalid_token, 'token refused: TEXT'."""
    headers, path = carry(token, via, path)
    return expect_refusal(port, path, headers, 401, "token refused: %s\n" % REASON_TEXT[reason],
                          reason, www=INVALID)


def expect_missing(port, path, topic, headers=None):
    return expect_refusal(port, path, headers, 401,
                          "subscribing to topic %s needs a token\n" % topic, "missing",
                          www="Bearer")


def expect_topic_refused(port, path, headers, topic):
    return expect_refusal(port, path, headers, 403,
                          "not allowed to subscribe to topic %s\n" % topic, "topic")


def carry(token, via, path, cookie="sse_token"):
    """(headers, path) carrying the token the way a client can."""
    if via == "header":
        return bearer(token), path
    if via == "cookie":
        return {"Cookie": "theme=dark; %s=%s; lang=en" % (cookie, token)}, path
    assert via == "query"
    return None, path + ("&" if "?" in path else "?") + "access_token=" + token


def subscribe(port, path, headers=None, retry=3000):
    """A stream that must be allowed: 200, its prelude read."""
    st = Stream(port, path, headers)
    try:
        assert st.status == 200, (st.raw_head, st.buf)
        assert st.header("Content-Type") == "text/event-stream", st.raw_head
        read_prelude(st, retry=retry)
    except BaseException:
        st.close()
        raise
    return st


def hears(port, st, topic, data=None):
    """A publish on topic reaches the stream st (the next event it gets)."""
    data = data or "to %s" % topic
    id_ = pub(port, data, topic=topic)
    got = st.read_event()
    assert (got["id"], got["data"]) == (id_, data), got
    return id_


def hears_only(port, st, allowed, others):
    """st gets what is published on every topic of allowed, nothing of others."""
    for t in others:
        pub(port, "not for this stream", topic=t)
    for t in allowed:
        hears(port, st, t)


def stream_ok(port, path, headers=None, topics=("news",)):
    st = subscribe(port, path, headers)
    try:
        hears_only(port, st, topics, ())
    finally:
        st.close()


# ---- without the new flags: nothing changes ------------------------------------------------


def test_without_auth_flags_tokens_are_ignored_and_nothing_is_needed(start_server):
    srv = start_server("--publish-token", "secret")
    jwt = hand_token(grants(["priv"]))
    for headers, path in (
        (None, "/events?topic=priv"),
        (bearer("not.a.token"), "/events?topic=priv"),
        (bearer(jwt), "/events?topic=priv"),
        ({"Cookie": "sse_token=garbage"}, "/events?topic=priv"),
        (None, "/events?topic=priv&access_token=garbage"),
        (None, "/events"),
    ):
        st = subscribe(srv.port, path, headers)
        try:
            hears(srv.port, st, "default" if path == "/events" else "priv")
        finally:
            st.close()
    # publishing as today: the publish token, and a JWT is just a wrong token
    assert PUB_RE.fullmatch(publish(srv.port, "x", topic="priv").body)
    r = publish(srv.port, "x", topic="priv", token=hand_token(grants((), ["*"])))
    assert (r.status, r.body) == (401, b"publishing needs Authorization: Bearer <token>\n")
    assert r.header("WWW-Authenticate") == "Bearer"
    # the part is built in: its series are listed, at 0
    assert refused_counts(srv.port) == {r: 0 for r in REASONS}


# ---- /metrics -------------------------------------------------------------------------------


def test_metrics_list_every_reason_at_zero(start_server):
    srv = auth_server(start_server)
    m = metric_values(srv.port)
    series = sorted(k for k in m if k.startswith("sse_auth_refused_total"))
    assert series == sorted('sse_auth_refused_total{reason="%s"}' % r for r in REASONS)
    assert all(m[k] == 0 for k in series), m
    assert m["sse_auth_requests_total"] == 0
    assert m["sse_auth_cache_hits_total"] == 0
    assert m['sse_connections_closed_total{reason="expired"}'] == 0
    text = request(srv.port, "GET", "/metrics").body.decode()
    for name in ("sse_auth_refused_total", "sse_auth_requests_total",
                 "sse_auth_cache_hits_total"):
        assert "# TYPE %s counter\n" % name in text, name


# ---- subscribing: where the token is read ---------------------------------------------------


def test_no_token_401_names_the_first_topic_needing_one(start_server):
    srv = auth_server(start_server, "--public", "news")
    expect_missing(srv.port, "/events?topic=priv", "priv")
    expect_missing(srv.port, "/events/priv", "priv")
    expect_missing(srv.port, "/events", "default")  # no topic asked: the default topic
    # the first topic that is not public, in the order asked
    expect_missing(srv.port, "/events?topic=news&topic=zz&topic=aa", "zz")


def test_valid_jose_token_in_authorization_header(start_server):
    srv = auth_server(start_server)
    (tok,) = jose({"claims": grants(["news"]), "exp": 600})
    stream_ok(srv.port, "/events?topic=news", bearer(tok))
    stream_ok(srv.port, "/events/news", {"Authorization": "bearer " + tok})  # scheme: any case
    assert refused_counts(srv.port) == {r: 0 for r in REASONS}


def test_valid_token_in_sse_token_cookie(start_server):
    srv = auth_server(start_server)
    (tok,) = jose({"claims": grants(["news"]), "exp": 600})
    headers, path = carry(tok, "cookie", "/events?topic=news")
    stream_ok(srv.port, path, headers)
    stream_ok(srv.port, "/events?topic=news", {"Cookie": "sse_token=" + tok})


def test_jwt_cookie_names_the_cookie(start_server):
    srv = auth_server(start_server, "--jwt-cookie", "app_jwt")
    (tok,) = jose({"claims": grants(["news"]), "exp": 600})
    headers, path = carry(tok, "cookie", "/events?topic=news", cookie="app_jwt")
    stream_ok(srv.port, path, headers)
    # sse_token is no longer read: neither a good one nor a bad one beside the right cookie
    expect_missing(srv.port, "/events?topic=news", "news", {"Cookie": "sse_token=" + tok})
    stream_ok(srv.port, "/events?topic=news", {"Cookie": "sse_token=junk; app_jwt=" + tok})


def test_valid_token_in_access_token_query_parameter(start_server):
    srv = auth_server(start_server)
    (tok,) = jose({"claims": grants(["news", "more"]), "exp": 600})
    stream_ok(srv.port, "/events?topic=news&access_token=" + tok)
    stream_ok(srv.port, "/events?access_token=%s&topic=more&topic=news" % tok, None,
              ("more", "news"))
    stream_ok(srv.port, "/events/news?access_token=" + tok)


def test_first_place_found_wins(start_server):
    """Authorization: Bearer, then the cookie, then ?access_token=: the first present is the
    token, valid or not."""
    srv = auth_server(start_server)
    (good,) = jose({"claims": grants(["news"]), "exp": 600})
    bad = hand_token(grants(["news"]), key="another key")
    path = "/events?topic=news"
    stream_ok(srv.port, path, {"Authorization": "Bearer " + good, "Cookie": "sse_token=" + bad})
    expect_refusal(srv.port, path, {"Authorization": "Bearer " + bad,
                                    "Cookie": "sse_token=" + good},
                   401, "token refused: bad signature\n", "signature", www=INVALID)
    stream_ok(srv.port, path + "&access_token=" + bad, {"Cookie": "sse_token=" + good})
    expect_refusal(srv.port, path + "&access_token=" + good, {"Cookie": "sse_token=" + bad},
                   401, "token refused: bad signature\n", "signature", www=INVALID)
    # an Authorization that is not Bearer holds no token: the cookie is read
    stream_ok(srv.port, path, {"Authorization": "Basic dXNlcjpwYXNz",
                               "Cookie": "sse_token=" + good})


# ---- subscribing: grants --------------------------------------------------------------------


def test_token_lacking_a_topic_403_names_the_first_refused(start_server):
    srv = auth_server(start_server)
    (tok,) = jose({"claims": grants(["news"]), "exp": 600})
    expect_topic_refused(srv.port, "/events?topic=other", bearer(tok), "other")
    # request order, not sorted: zz before aa
    expect_topic_refused(srv.port, "/events?topic=news&topic=zz&topic=aa", bearer(tok), "zz")
    expect_topic_refused(srv.port, "/events", bearer(tok), "default")
    # a token whose sse claim grants nothing at all
    (none_,) = jose({"claims": {"sse": {}}, "exp": 600})
    expect_topic_refused(srv.port, "/events?topic=news", bearer(none_), "news")
    (nosse,) = jose({"claims": {"sub": "42"}, "exp": 600})
    expect_topic_refused(srv.port, "/events?topic=news", bearer(nosse), "news")
    # publish grants do not let a token subscribe
    (pubonly,) = jose({"claims": grants((), ["news"]), "exp": 600})
    expect_topic_refused(srv.port, "/events?topic=news", bearer(pubonly), "news")


def test_grant_star_exact_and_prefix(start_server):
    srv = auth_server(start_server)
    star, exact, prefix, user = jose(
        {"claims": grants(["*"]), "exp": 600},
        {"claims": grants(["news"]), "exp": 600},
        {"claims": grants(["orders.*"]), "exp": 600},
        {"claims": grants(["user-42-*", "news"]), "exp": 600},
    )
    port = srv.port
    st = subscribe(port, "/events?topic=a&topic=news&topic=orders.1&topic=Z_9", bearer(star))
    try:
        hears_only(port, st, ("a", "news", "orders.1", "Z_9"), ("b",))
    finally:
        st.close()
    stream_ok(port, "/events?topic=news", bearer(exact))
    for t in ("news2", "new", "News", "xnews"):
        expect_topic_refused(port, "/events?topic=" + t, bearer(exact), t)
    st = subscribe(port, "/events?topic=orders.1&topic=orders.x.y", bearer(prefix))
    try:
        hears_only(port, st, ("orders.1", "orders.x.y"), ("orders", "orders1"))
    finally:
        st.close()
    for t in ("orders", "orders1", "xorders.1", "Orders.1"):
        expect_topic_refused(port, "/events?topic=" + t, bearer(prefix), t)
    st = subscribe(port, "/events?topic=user-42-news&topic=user-42-&topic=news", bearer(user))
    try:
        hears_only(port, st, ("user-42-news", "user-42-", "news"), ("user-43-news",))
    finally:
        st.close()
    expect_topic_refused(port, "/events?topic=news&topic=user-43-news", bearer(user),
                         "user-43-news")
    expect_topic_refused(port, "/events?topic=user-4", bearer(user), "user-4")


def test_mercure_claim_accepted_sse_claim_first(start_server):
    srv = auth_server(start_server)
    merc, merc_star, both = jose(
        {"claims": grants(["news"], claim="mercure"), "exp": 600},
        {"claims": {"mercure": {"subscribe": ["*"], "payload": {"user": 42}}}, "exp": 600},
        {"claims": dict(grants(["other"]), **grants(["news"], claim="mercure")), "exp": 600},
    )
    stream_ok(srv.port, "/events?topic=news", bearer(merc))
    expect_topic_refused(srv.port, "/events?topic=other", bearer(merc), "other")
    stream_ok(srv.port, "/events?topic=anything", bearer(merc_star), ("anything",))
    # with an sse claim, the mercure one is not read
    stream_ok(srv.port, "/events?topic=other", bearer(both), ("other",))
    expect_topic_refused(srv.port, "/events?topic=news", bearer(both), "news")


def test_public_topics_need_no_token(start_server):
    srv = auth_server(start_server, "--public", "news", "--public", "pub.*")
    port = srv.port
    st = subscribe(port, "/events?topic=news&topic=pub.a&topic=pub.b.c")
    try:
        hears_only(port, st, ("news", "pub.a", "pub.b.c"), ("priv", "pub", "newsx"))
    finally:
        st.close()
    stream_ok(port, "/events/news")
    # public and private mixed: the private one needs a token
    expect_missing(port, "/events?topic=news&topic=priv", "priv")
    expect_missing(port, "/events?topic=pub.a&topic=pub", "pub")
    (tok,) = jose({"claims": grants(["priv"]), "exp": 600})
    st = subscribe(port, "/events?topic=news&topic=priv", bearer(tok))
    try:
        hears_only(port, st, ("news", "priv"), ("other",))
    finally:
        st.close()
    expect_topic_refused(port, "/events?topic=news&topic=priv&topic=other", bearer(tok), "other")
    # a present but invalid token is refused even for public topics alone
    expect_invalid(port, hand_token(grants(["news"]), key="nope"), "signature")
    expect_invalid(port, "garbage", "malformed", path="/events?topic=pub.a")


def scrape_or_none(port, name):
    """The value of metric name, or None while /metrics is turned away (over --max-clients)."""
    r = request(port, "GET", "/metrics")
    if r.status != 200:
        return None
    for line in r.body.decode().split("\n"):
        if line.startswith(name + " "):
            return int(line.split(" ")[1])
    raise AssertionError("no %s in /metrics" % name)


def test_preflight_needs_no_token(start_server, auth_app):
    """OPTIONS (a CORS preflight never carries credentials) is answered as before, neither
    refused nor sent to the application."""
    srv = auth_server(start_server, "--cors", "http://app.example", "--auth-url", auth_app.url())
    for path in ("/events/priv", "/events?topic=priv", "/publish?topic=priv"):
        r = request(srv.port, "OPTIONS", path, {
            "Origin": "http://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert r.status == 204, (path, r.raw_head, r.body)
        assert r.header("Access-Control-Allow-Origin") == "http://app.example", r.raw_head
    assert refused_counts(srv.port) == {r: 0 for r in REASONS}
    assert auth_app.count() == 0


def test_cors_star_with_tokens_warns_that_cookies_cannot_cross(start_server):
    """Under --cors '*' a browser refuses every credentialed answer, so a page on another
    origin never gets a stream its cookie would open: said once at start."""
    warning = r"cors \*: no browser sends its cookie to another origin under \*"
    srv = auth_server(start_server, "--cors", "*")
    srv.wait_for_line(warning)
    named = auth_server(start_server, "--cors", "http://app.example")
    plain = start_server("--cors", "*")
    for s in (named, plain):
        healthy(s.port)  # started and serving: a warning would be in by now
        assert not re.search(warning, s.stderr_text()), s.stderr_text()


def test_over_max_clients_turned_away_before_any_token_check(start_server):
    srv = auth_server(start_server, "--max-clients", "1")
    (tok,) = jose({"claims": grants(["news"]), "exp": 600})
    st = subscribe(srv.port, "/events?topic=news", bearer(tok))
    try:  # (/metrics itself is over the limit meanwhile)
        for headers in (None, bearer("garbage"), bearer(tok)):
            resp, tail = exchange_closing(
                srv.port, build_request("GET", "/events?topic=news", headers))
            assert resp.status == 200, (resp.raw_head, resp.body)
            assert resp.header("Content-Type") == "text/event-stream"
            assert re.fullmatch(rb"retry: \d+\n\n", resp.body + tail), resp.body + tail
    finally:
        st.close()
    wait_until(lambda: scrape_or_none(srv.port, "sse_subscribers") == 0, what="st to leave")
    assert refused_counts(srv.port) == {r: 0 for r in REASONS}


# ---- --jwt-secret-file ------------------------------------------------------------------------


@pytest.fixture
def tmpdir_path():
    with tempfile.TemporaryDirectory(prefix="sse-auth-") as d:
        yield d


def write_file(d, name, data):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_key_from_the_environment_and_the_option_wins(start_server):
    """--help: the key defaults to $SSE_JWT_SECRET (kept out of ps); --jwt-secret wins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
    env["SSE_JWT_SECRET"] = KEY
    srv = start_server("--publish-token", "secret", env=env)
    stream_ok(srv.port, "/events?topic=news", bearer(hand_token(grants(["news"]))))
    expect_missing(srv.port, "/events?topic=news", "news")
    other = start_server("--jwt-secret", "another key", "--publish-token", "secret", env=env)
    expect_invalid(other.port, hand_token(grants(["news"])), "signature")


@pytest.mark.parametrize("content, key", [
    (b"file-key-42\n", "file-key-42"),
    (b"file-key-42\r\n", "file-key-42"),
    (b"file-key-42", "file-key-42"),
    (b"file-key-42\n\n", "file-key-42\n"),  # one newline is stripped, no more
], ids=["lf", "crlf", "none", "two-lf"])
def test_jwt_secret_file_strips_one_trailing_newline(start_server, tmpdir_path, content, key):
    srv = start_server("--jwt-secret-file", write_file(tmpdir_path, "key", content),
                       "--publish-token", "secret")
    wrong = [key + "\n", key + "\r\n", "file-key-4"] + ([] if key == "file-key-42" else
                                                         ["file-key-42"])
    as_is, *refused = jose(*({"secret": k, "claims": grants(["news"]), "exp": 600}
                             for k in [key] + wrong))
    stream_ok(srv.port, "/events?topic=news", bearer(as_is))
    for tok in refused:
        expect_invalid(srv.port, tok, "signature")


def run_to_exit(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
    return subprocess.run([BINARY, "--listen", "127.0.0.1:0", *args], capture_output=True,
                          timeout=20, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"], ids=["empty", "lf", "crlf"])
def test_jwt_secret_file_empty_key_exits_2(tmpdir_path, content):
    r = run_to_exit("--jwt-secret-file", write_file(tmpdir_path, "key", content))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert b"--jwt-secret-file" in r.stderr, r.stderr


def test_jwt_secret_file_missing_exits_1(tmpdir_path):
    """--help: 1 when "a file or directory cannot be opened"."""
    r = run_to_exit("--jwt-secret-file", os.path.join(tmpdir_path, "absent"))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert b"--jwt-secret-file" in r.stderr or b"absent" in r.stderr, r.stderr


# ---- jose's own tokens ------------------------------------------------------------------------


def test_jose_hs256_is_hmac_sha256_over_header_and_payload():
    """The harness itself: what jose mints is what this file builds by hand."""
    (tok,) = jose({"claims": grants(["news"]), "exp": 600, "iat": True})
    h, p, s = tok.split(".")
    assert s == hs256_sig(h + "." + p)
    assert json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))["alg"] == "HS256"
    assert hand_token(None, h=h, p=p) == tok


def test_jose_hs256_tokens_verify(start_server):
    srv = auth_server(start_server, "--jwt-audience", "sse.example")
    toks = jose(
        {"claims": grants(["news"]), "aud": "sse.example"},
        {"claims": grants(["news"], sub="user-42", iss="app"), "aud": "sse.example",
         "exp": 600, "nbf": -10, "iat": True},
        {"claims": grants(["news"]), "aud": ["other", "sse.example"], "exp": 3600,
         "header": {"kid": "key-1"}},
        {"claims": grants(["news"], claim="mercure"), "aud": "sse.example", "exp": 60},
    )
    for tok in toks:
        for via in ("header", "cookie", "query"):
            headers, path = carry(tok, via, "/events?topic=news")
            stream_ok(srv.port, path, headers)
    assert refused_counts(srv.port) == {r: 0 for r in REASONS}


def test_jose_hs384_and_hs512_refused_alg(start_server):
    srv = auth_server(start_server)
    for tok in jose({"claims": grants(["*"]), "alg": "HS384", "exp": 600},
                    {"claims": grants(["*"]), "alg": "HS512", "exp": 600}):
        expect_invalid(srv.port, tok, "alg")
        expect_invalid(srv.port, tok, "alg", via="cookie")


# ---- hand-built edge cases ----------------------------------------------------------------------


def padded_payload():
    """A payload segment with its base64 '=' padding, and claims granting news."""
    for n in range(8):
        claims = grants(["news"], pad="x" * n)
        raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
        if raw.endswith("="):
            return raw
    raise AssertionError("no padded payload")


def edge_cases():
    now = int(time.time())
    g = grants(["news"])
    h = seg({"alg": "HS256", "typ": "JWT"})
    p = seg(g)
    good_sig = hs256_sig(h + "." + p)
    flipped = ("B" if good_sig[0] == "A" else "A") + good_sig[1:]
    star_p = p[:6] + "*" + p[7:]
    std_p = base64.b64encode(json.dumps(dict(g, x="??>>??>>")).encode()).decode().rstrip("=")
    assert "+" in std_p or "/" in std_p
    return {
        # alg
        "alg-none-unsigned": (hand_token(g, header={"alg": "none", "typ": "JWT"}, sig=""), "alg"),
        "alg-none-signed": (hand_token(g, header={"alg": "none"}), "alg"),
        "alg-hs512": (hand_token(g, header={"alg": "HS512", "typ": "JWT"},
                                 digest=hashlib.sha512), "alg"),
        "alg-hs384": (hand_token(g, header={"alg": "HS384"}, digest=hashlib.sha384), "alg"),
        "alg-rs256": (hand_token(g, header={"alg": "RS256", "typ": "JWT"},
                                 sig=b64u(os.urandom(256))), "alg"),
        "alg-missing": (hand_token(g, header={"typ": "JWT"}), "alg"),
        "alg-lowercase": (hand_token(g, header={"alg": "hs256"}), "alg"),
        # signature
        "sig-other-key": (hand_token(g, key=KEY + "x"), "signature"),
        "sig-key-prefix": (hand_token(g, key=KEY[:-1]), "signature"),
        "sig-flipped": ("%s.%s.%s" % (h, p, flipped), "signature"),
        "sig-truncated": ("%s.%s.%s" % (h, p, good_sig[:40]), "signature"),
        "sig-of-other-claims": ("%s.%s.%s" % (h, seg(grants(["*"])), good_sig), "signature"),
        # time
        "expired": (hand_token(dict(g, exp=now - 30)), "expired"),
        "expired-long-ago": (hand_token(dict(g, exp=1)), "expired"),
        "nbf-future": (hand_token(dict(g, nbf=now + 60, exp=now + 600)), "not_yet_valid"),
        # malformed
        "two-parts": ("%s.%s" % (h, p), "malformed"),
        "four-parts": ("%s.%s.%s.%s" % (h, p, good_sig, good_sig), "malformed"),
        "one-part": (p, "malformed"),
        "empty-parts": ("..", "malformed"),
        "padding-in-payload": (hand_token(None, p=padded_payload()), "malformed"),
        "padding-in-header": (hand_token(None, h=h + "=" if len(h) % 4 else h + "==", p=p),
                              "malformed"),
        "bad-char-in-payload": (hand_token(None, p=star_p), "malformed"),
        "std-base64-payload": (hand_token(None, p=std_p), "malformed"),
        "payload-json-truncated": (hand_token(None, p=seg(b'{"sse": {"subscribe": ["news"]}')),
                                   "malformed"),
        "payload-json-trailing": (hand_token(None, p=seg(b'{"sse": {}} x')), "malformed"),
        "payload-array": (hand_token([g]), "malformed"),
        "payload-string": (hand_token("news"), "malformed"),
        "payload-not-json": (hand_token(None, p=seg(b"sse=news")), "malformed"),
        "header-not-json": (hand_token(g, h=seg(b"HS256")), "malformed"),
        "grant-not-string": (hand_token(grants([1])), "malformed"),
        "grant-null": (hand_token(grants(["news", None])), "malformed"),
    }


EDGE_CASES = sorted(edge_cases())


@pytest.mark.parametrize("case", EDGE_CASES)
def test_hand_built_token_refused(start_server, case):
    token, reason = edge_cases()[case]
    srv = auth_server(start_server)
    for via in ("header", "cookie", "query"):
        expect_invalid(srv.port, token, reason, via=via)


def test_token_over_8_kib_refused(start_server):
    """SPEC18.md: a token over 8192 bytes is refused with reason too_long. It cannot reach the
    token check: a request head is at most 8 KiB (SSE_HEAD_MAX), so such a token is refused
    with the head, 431, before any token is read, and no auth reason is counted. (The
    too_long check guards the library's other callers; see the report on issue 18.)"""
    srv = auth_server(start_server)
    token = hand_token(grants(["news"], pad="x" * 6200))
    assert len(token) > 8192, len(token)
    for via in ("header", "cookie", "query"):
        headers, path = carry(token, via, "/events?topic=news")
        before = refused_counts(srv.port)
        resp, tail = exchange_closing(srv.port, build_request("GET", path, headers))
        assert (resp.status, resp.body) == (431, b"request head over 8 KiB\n"), resp.raw_head
        assert tail == b""
        assert refused_counts(srv.port) == before


def test_token_just_under_the_limit_accepted(start_server):
    """A long but valid token (7000 bytes: within the 8 KiB head) is not "too long"."""
    srv = auth_server(start_server)
    pad = 5000
    while True:
        tok = hand_token(grants(["news"], pad="x" * pad))
        if len(tok) >= 7000:
            break
        pad += 1
    assert 7000 <= len(tok) < 7004
    stream_ok(srv.port, "/events?topic=news", bearer(tok))


def test_time_claims_have_five_seconds_of_leeway(start_server):
    srv = auth_server(start_server)
    now = int(time.time())
    g = grants(["news"])
    stream_ok(srv.port, "/events?topic=news", bearer(hand_token(dict(g, nbf=now + 2))))
    stream_ok(srv.port, "/events?topic=news", bearer(hand_token(dict(g, exp=now + 600,
                                                                       nbf=now - 600))))
    # exp passed by 2 s: still within the leeway (the stream then ends at exp + 5)
    st = subscribe(srv.port, "/events?topic=news", bearer(hand_token(dict(g, exp=now - 2))))
    st.close()
    expect_invalid(srv.port, hand_token(dict(g, exp=now - 20)), "expired")
    expect_invalid(srv.port, hand_token(dict(g, nbf=now + 20)), "not_yet_valid")


@pytest.mark.parametrize("aud, reason", [
    (None, "audience"),
    ("other", "audience"),
    (["x", "y"], "audience"),
    ([], "audience"),
    ("SSE.example", "audience"),
    ("sse.example", None),
    (["x", "sse.example"], None),
], ids=["missing", "other", "array-without", "array-empty", "case", "exact", "array-with"])
def test_audience(start_server, aud, reason):
    srv = auth_server(start_server, "--jwt-audience", "sse.example")
    claims = grants(["news"], exp=int(time.time()) + 600)
    if aud is not None:
        claims["aud"] = aud
    tok = hand_token(claims)
    if reason:
        expect_invalid(srv.port, tok, reason)
    else:
        stream_ok(srv.port, "/events?topic=news", bearer(tok))


def test_audience_not_checked_without_jwt_audience(start_server):
    srv = auth_server(start_server)
    for aud in ("whatever", ["a", "b"]):
        stream_ok(srv.port, "/events?topic=news", bearer(hand_token(grants(["news"], aud=aud))))


# ---- the token is never echoed or logged ------------------------------------------------------


def test_token_never_echoed_in_bodies_metrics_or_log(start_server):
    srv = start_server("--jwt-secret", KEY, "--publish-token", "secret", "--verbose",
                       "--public", "open")
    now = int(time.time())
    valid = hand_token(grants(["news"], ["news"], exp=now + 600))
    tokens = {
        "valid": valid,
        "bad-sig": hand_token(grants(["news"]), key="other"),
        "expired": hand_token(grants(["news"], exp=now - 60)),
        "lacking": hand_token(grants(["elsewhere"], exp=now + 600)),
        "alg": hand_token(grants(["news"]), header={"alg": "HS512"}, digest=hashlib.sha512),
        "malformed": hand_token(None, p=seg(b"{not json")),
    }
    seen = []
    for name, tok in tokens.items():
        for via in ("header", "cookie", "query"):
            for path in ("/events?topic=news", "/events?topic=open", "/events?topic=bad!",
                         "/nothing/here", "/metrics", "/healthz"):
                headers, full = carry(tok, via, path)
                r = ask(srv.port, full, headers)
                seen.append((name, via, path, r.raw_head + r.body))
        for method in ("POST", "DELETE"):
            r = request(srv.port, method, "/publish?topic=news", bearer(tok), b"x")
            seen.append((name, method, "/publish", r.raw_head + r.body))
    metrics = request(srv.port, "GET", "/metrics").body
    srv.stop()
    log = srv.stderr_text()
    assert "connection #" in log  # --verbose did log the requests
    for name, tok in tokens.items():
        pieces = [tok] + [part for part in tok.split(".") if len(part) >= 16]
        for piece in pieces:
            for who, via, path, got in seen:
                assert piece.encode() not in got, (name, who, via, path, got)
            assert piece.encode() not in metrics, name
            assert piece not in log, (name, log)


# ---- a stream ends when its token expires ------------------------------------------------------


class Publisher(threading.Thread):
    """Publishes "n0", "n1", ... on topic every `every` seconds until finish()."""

    def __init__(self, port, topic, every=0.15):
        super().__init__(daemon=True)
        self.port, self.topic, self.every = port, topic, every
        self.sent = []  # (id, data)
        self.errors = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        i = 0
        while not self.stopping.is_set():
            try:
                data = "n%d" % i
                id_ = pub(self.port, data, topic=self.topic)
            except BaseException as e:  # noqa: B036 (reported by finish)
                self.errors.append(e)
                return
            with self.lock:
                self.sent.append((id_, data))
            i += 1
            self.stopping.wait(self.every)

    def count(self):
        with self.lock:
            return len(self.sent)

    def finish(self):
        self.stopping.set()
        self.join(30)
        assert not self.is_alive()
        assert not self.errors, self.errors
        return list(self.sent)


def events_in(raw):
    """(id, data) of each event block in raw stream bytes, and the blocks themselves."""
    blocks = [b + b"\n\n" for b in raw.split(b"\n\n") if b]
    evs = []
    for b in blocks:
        e = parse_block(b)
        if e["data"] is not None and e["event"] != "position":
            evs.append((e["id"], e["data"]))
    return evs, blocks


def closed_expired(port):
    return metric_values(port)['sse_connections_closed_total{reason="expired"}']


def test_stream_ends_at_exp_then_resumes_with_renewed_token_losing_nothing(start_server):
    srv = auth_server(start_server)
    port = srv.port
    short, renewed = jose({"claims": grants(["t"]), "exp": 2},
                          {"claims": grants(["t"]), "exp": 600})
    exp = claims_of(short)["exp"]
    st = subscribe(port, "/events?topic=t", bearer(short))
    publisher = Publisher(port, "t")
    publisher.start()
    try:
        try:
            raw = st.read_until_closed(timeout=max(1, exp + 5 - time.time()) + 15)
        finally:
            st.close()
        closed_at = time.time()
        # not at exp (the leeway holds for the stream too), and not much after exp + 5
        assert exp + 3 < closed_at < exp + 5 + 15, (exp, closed_at)
        got, blocks = events_in(raw)
        assert blocks[-1] == b"retry: 3000\n\n", blocks[-3:]
        assert len(got) >= 3, raw
        assert wait_until(lambda: closed_expired(port) == 1, what="the expired close counted")
        # published events keep coming meanwhile
        wait_until(lambda: publisher.count() >= len(got) + 3, what="events during the gap")
        st = Stream(port, "/events?topic=t", dict(bearer(renewed),
                                                  **{"Last-Event-ID": got[-1][0]}))
        try:
            assert st.status == 200, (st.raw_head, st.buf)
            assert st.read_exactly(len(b"retry: 3000\n\n")) == b"retry: 3000\n\n"
            time.sleep(0.5)  # a few more live events after the replay
            sent = publisher.finish()
            while not got or got[-1][0] != sent[-1][0]:
                e = st.read_event(timeout=10)
                got.append((e["id"], e["data"]))
        finally:
            st.close()
    finally:
        publisher.stopping.set()
    assert got == sent  # none lost, none twice, in order
    assert closed_expired(port) == 1
    # the old token is done (well past exp + 5 s: test_token_refused_once_exp_plus_leeway_has_
    # passed checks the edge)
    time.sleep(max(0, exp + 6.5 - time.time()))
    expect_invalid(port, short, "expired", path="/events?topic=t")


def test_token_refused_once_exp_plus_leeway_has_passed(start_server):
    """exp = (this second) - 5: now is past exp + 5 by a fraction of a second, so the token
    is refused, rather than allowed a stream that its own expiry ends at once."""
    srv = auth_server(start_server)
    for _ in range(3):
        t = time.time()
        if t - int(t) < 0.8:  # (and the request is made within this second)
            break
        time.sleep(0.25)
    expect_invalid(srv.port, hand_token(grants(["news"], exp=int(t) - 5)), "expired")


@pytest.mark.parametrize("retry", ["1234", "0"])
def test_expiry_sends_retry_then_closes(start_server, retry):
    """exp 2 s ago is within the leeway: allowed, and the stream ends about 3 s later with
    `retry: R` (R = --retry; nothing when it is 0)."""
    srv = auth_server(start_server, "--retry", retry)
    tok = hand_token(grants(["t"], exp=int(time.time()) - 2))
    st = subscribe(srv.port, "/events?topic=t", bearer(tok), retry=int(retry))
    try:
        id_ = hears(srv.port, st, "t")
        tail = st.read_until_closed(timeout=20)
    finally:
        st.close()
    assert tail == (b"retry: %s\n\n" % retry.encode() if retry != "0" else b""), (id_, tail)
    wait_until(lambda: closed_expired(srv.port) == 1, what="the expired close counted")
    assert metric_values(srv.port)['sse_connections_closed_total{reason="shutdown"}'] == 0


def test_stream_without_exp_does_not_end(start_server):
    srv = auth_server(start_server)
    st = subscribe(srv.port, "/events?topic=t", bearer(hand_token(grants(["t"]))))
    try:
        assert st.nothing_pending(6.5)  # past what a 0 + 5 s exp would allow
        hears(srv.port, st, "t")
    finally:
        st.close()
    assert closed_expired(srv.port) == 0


class NodeAuthEventSource(NodeLines):
    """tests/browser/es-auth-client.mjs: the eventsource package sending the token last written
    to its standard input."""

    def __init__(self, url, token):
        super().__init__("es-auth-client.mjs", url)
        self.renew(token)

    def renew(self, token):
        self.proc.stdin.write(token.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, predicate, timeout=15):
        super().wait(predicate, timeout)

    def events(self):
        return [(s["id"], s["data"]) for s in self.seen if s["kind"] == "event"]


def test_eventsource_package_reconnects_with_renewed_token_missing_nothing(start_server):
    srv = auth_server(start_server, "--retry", "500")
    port = srv.port
    short, renewed = jose({"claims": grants(["t"]), "exp": 0},
                          {"claims": grants(["t"]), "exp": 600})
    exp = claims_of(short)["exp"]
    es = NodeAuthEventSource("http://127.0.0.1:%d/events/t" % port, short)
    publisher = Publisher(port, "t", every=0.2)
    try:
        es.wait(lambda seen: any(s["kind"] == "open" for s in seen))
        publisher.start()
        es.wait(lambda seen: len(es.events()) >= 2)
        es.renew(renewed)  # the application refreshes the token before the old one ends
        # the server ends the stream at exp + 5; the client comes back by itself
        es.wait(lambda seen: [s["kind"] for s in seen].count("open") >= 2,
                timeout=max(1, exp + 5 - time.time()) + 20)
        time.sleep(0.5)
        sent = publisher.finish()
        es.wait(lambda seen: sent[-1][0] in [i for i, _ in es.events()], timeout=15)
        time.sleep(0.3)
        es.drain()
        assert es.events() == sent  # none lost, none twice
        fetches = [s for s in es.seen if s["kind"] == "fetch"]
        assert [f["token"] for f in fetches] == [0, 1], es.seen
        assert fetches[0]["lastEventId"] is None
        # the second connection resumed from the last event the first one delivered
        kinds = [s["kind"] for s in es.seen]
        second = kinds.index("fetch", kinds.index("fetch") + 1)
        before = [(s["id"]) for s in es.seen[:second] if s["kind"] == "event"]
        assert fetches[1]["lastEventId"] == before[-1]
        assert not any(s["kind"] == "error" and s["readyState"] == 2 for s in es.seen), es.seen
    finally:
        publisher.stopping.set()
        es.close()
    assert closed_expired(port) == 1
    assert refused_counts(port) == {r: 0 for r in REASONS}


# ---- publishing -----------------------------------------------------------------------------


def test_publish_grant_posts_and_deletes_without_publish_token(start_server):
    srv = auth_server(start_server, publish_token=False)
    port = srv.port
    pubtok, subtok = jose({"claims": grants((), ["news", "orders.*"]), "exp": 600},
                          {"claims": grants(["news", "orders.1"]), "exp": 600})
    st = subscribe(port, "/events?topic=news", bearer(subtok))
    try:
        r = request(port, "POST", "/publish?topic=news", bearer(pubtok), b"hello")
        assert r.status == 200, (r.raw_head, r.body)
        assert r.header("Content-Type") == "application/json"
        m = PUB_RE.fullmatch(r.body)
        assert m and m.group(2) == b"news" and m.group(3) == b"1", r.body
        got = st.read_event()
        assert (got["id"], got["data"]) == (m.group(1).decode(), "hello")
        r = request(port, "POST", "/publish?topic=orders.1&event=new", bearer(pubtok), b"o")
        assert r.status == 200 and PUB_RE.fullmatch(r.body), (r.raw_head, r.body)
        r = request(port, "DELETE", "/publish?topic=news", bearer(pubtok))
        assert (r.status, r.body) == (200, b'{"topic": "news", "closed": 1}\n'), r.body
        assert st.read_until_closed(5) == b""
    finally:
        st.close()
    assert refused_counts(port) == {r: 0 for r in REASONS}


def test_publish_without_matching_grant_403(start_server):
    srv = auth_server(start_server, publish_token=False)
    port = srv.port
    pubtok, subtok, merc = jose({"claims": grants((), ["news", "orders.*"]), "exp": 600},
                                {"claims": grants(["*"]), "exp": 600},
                                {"claims": grants((), ["news"], claim="mercure"), "exp": 600})
    for tok, topic, method in ((pubtok, "other", "POST"), (pubtok, "orders", "POST"),
                               (pubtok, "other", "DELETE"), (subtok, "news", "POST"),
                               (subtok, "news", "DELETE"), (merc, "other", "POST")):
        expect_refusal(port, "/publish?topic=" + topic, bearer(tok), 403,
                       "not allowed to publish to topic %s\n" % topic, "topic",
                       method=method, data=b"x")
    expect_refusal(port, "/publish", bearer(pubtok), 403,
                   "not allowed to publish to topic default\n", "topic", method="POST",
                   data=b"x")
    # the mercure claim's publish list is honoured too
    r = request(port, "POST", "/publish?topic=news", bearer(merc), b"m")
    assert r.status == 200 and PUB_RE.fullmatch(r.body), (r.raw_head, r.body)


def test_publish_refusals_401(start_server):
    srv = auth_server(start_server, publish_token=False)
    port = srv.port
    now = int(time.time())
    for tok, reason in ((hand_token(grants((), ["*"]), key="other"), "signature"),
                        (hand_token(grants((), ["*"], exp=now - 60)), "expired"),
                        (hand_token(grants((), ["*"]), header={"alg": "none"}, sig=""), "alg"),
                        ("secret", "malformed")):
        expect_refusal(port, "/publish?topic=news", bearer(tok), 401,
                       "token refused: %s\n" % REASON_TEXT[reason], reason, www=INVALID,
                       method="POST", data=b"x")
    # no token, or one elsewhere than Authorization: as today
    (good,) = jose({"claims": grants((), ["*"]), "exp": 600})
    for headers in (None, {"Cookie": "sse_token=" + good}):
        r = request(port, "POST", "/publish?topic=news", headers, b"x")
        assert (r.status, r.body) == (401, b"publishing needs Authorization: Bearer <token>\n")
        assert r.header("WWW-Authenticate") == "Bearer"
    r = request(port, "POST", "/publish?topic=news&access_token=" + good, None, b"x")
    assert r.status == 401, (r.raw_head, r.body)


def test_publish_token_still_works_beside_jwt_secret(start_server):
    srv = auth_server(start_server)  # --publish-token secret
    port = srv.port
    (pubtok,) = jose({"claims": grants((), ["news"]), "exp": 600})
    assert PUB_RE.fullmatch(publish(port, "a", topic="anything").body)
    assert PUB_RE.fullmatch(publish(port, "b", topic="news", token=pubtok).body)
    expect_refusal(port, "/publish?topic=other", bearer(pubtok), 403,
                   "not allowed to publish to topic other\n", "topic", method="POST",
                   data=b"x")
    expect_refusal(port, "/publish?topic=news", bearer("secreX"), 401,
                   "token refused: malformed\n", "malformed", www=INVALID, method="POST",
                   data=b"x")
    expect_refusal(port, "/publish?topic=news",
                   bearer(hand_token(grants((), ["news"]), key="secret")), 401,
                   "token refused: bad signature\n", "signature", www=INVALID,
                   method="POST", data=b"x")
    r = request(port, "DELETE", "/publish?topic=anything", bearer("secret"))
    assert (r.status, r.body) == (200, b'{"topic": "anything", "closed": 0}\n')


# ---- --auth-url: the application decides ---------------------------------------------------


class AuthApp:
    """An application answering sse-server's authorization requests by its session cookie:
    ok* 200; narrow 200 + X-SSE-Topics (self.narrow); unauth or none 401; forbid 403;
    broken 500; gone 404; slow 200 after 8 s (or when closed); hangup closes without a word;
    garbage answers something that is not HTTP; badheader a 200 with a header line that is
    not one."""

    def __init__(self):
        self.requests = []
        self.narrow = ""
        self.release = threading.Event()
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with app.lock:
                    app.requests.append({
                        "method": self.command, "path": self.path,
                        "version": self.request_version,
                        "headers": list(self.headers.items()),
                    })
                session = None
                for part in (self.headers.get("Cookie") or "").split(";"):
                    k, _, v = part.strip().partition("=")
                    if k == "session":
                        session = v
                extra = []
                if session and session.startswith("ok"):
                    status = 200
                elif session == "narrow":
                    status, extra = 200, [("X-SSE-Topics", app.narrow)]
                elif session == "forbid":
                    status = 403
                elif session == "broken":
                    status = 500
                elif session == "gone":
                    status = 404
                elif session == "slow":
                    app.release.wait(8)
                    status = 200
                elif session == "hangup":
                    self.close_connection = True
                    return
                elif session == "garbage":
                    self.wfile.write(b"this is not HTTP\r\n\r\n")
                    self.close_connection = True
                    return
                elif session == "badheader":  # a 200 whose head is not HTTP past its status
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-SSE-Topics: a\r\nno colon\r\n\r\n")
                    self.close_connection = True
                    return
                else:
                    status = 401
                self.send_response(status)
                for k, v in extra:
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

        class Httpd(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.httpd = Httpd(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/auth/check?app=sse&v=1"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def count(self):
        with self.lock:
            return len(self.requests)

    def last(self):
        with self.lock:
            return self.requests[-1]

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def auth_app():
    app = AuthApp()
    yield app
    app.close()


def headers_of(req):
    """name (lower case) -> [values] of a request the application got."""
    out = {}
    for k, v in req["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_auth_url_request_carries_the_client_headers(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url(), "--publish-token", "secret")
    port = srv.port
    st = subscribe(port, "/events?topic=a&topic=b", {
        "Cookie": "session=ok-1; theme=dark",
        "Authorization": "Bearer app-opaque-1",
        "X-Forwarded-For": "203.0.113.9",
    })
    try:
        hears_only(port, st, ("a", "b"), ("c",))
    finally:
        st.close()
    assert auth_app.count() == 1
    req = auth_app.last()
    assert (req["method"], req["path"], req["version"]) == ("GET", "/auth/check?app=sse&v=1",
                                                           "HTTP/1.1")
    h = headers_of(req)
    assert len(h["host"]) == 1
    assert h["connection"] == ["close"]
    assert h["cookie"] == ["session=ok-1; theme=dark"]
    assert h["authorization"] == ["Bearer app-opaque-1"]
    assert h["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert h["x-sse-topics"] == ["a, b"]
    # without cookie, authorization or forwarding: the bare address, and a 401 passed on
    expect_refusal(port, "/events/solo", None, 401,
                   "the application refused this subscription\n", "denied", www="Bearer")
    h = headers_of(auth_app.last())
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-sse-topics"] == ["solo"]
    assert "cookie" not in h and "authorization" not in h
    assert metric_values(port)["sse_auth_requests_total"] == 2


def test_auth_url_path_without_query(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url("/allow"), "--publish-token", "secret")
    stream_ok(srv.port, "/events?topic=news", {"Cookie": "session=ok"})
    assert auth_app.last()["path"] == "/allow"


def test_auth_url_asked_only_for_streams(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url(), "--publish-token", "secret")
    healthy(srv.port)
    assert PUB_RE.fullmatch(publish(srv.port, "x", topic="a").body)
    r = request(srv.port, "DELETE", "/publish?topic=a", bearer("secret"))
    assert r.status == 200, r.body
    assert request(srv.port, "GET", "/metrics").status == 200
    assert ask(srv.port, "/nothing/here").status == 404
    assert auth_app.count() == 0


def test_auth_url_narrows_the_topics(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url(), "--publish-token", "secret")
    port = srv.port
    auth_app.narrow = "c, a, x"
    st = subscribe(port, "/events?topic=a&topic=b&topic=c", {"Cookie": "session=narrow"})
    try:
        # x is never added; b is dropped
        for t in ("b", "x", "a", "c"):
            pub(port, "on " + t, topic=t)
        got = [st.read_event()["data"] for _ in range(2)]
        assert got == ["on a", "on c"]
        assert st.nothing_pending(0.3)
    finally:
        st.close()
    # nothing left: 403 naming the first topic asked
    auth_app.narrow = "x, y"
    expect_refusal(port, "/events?topic=b&topic=a", {"Cookie": "session=narrow"}, 403,
                   "not allowed to subscribe to topic b\n", "topic")
    auth_app.narrow = ""
    expect_refusal(port, "/events?topic=b&topic=a", {"Cookie": "session=narrow"}, 403,
                   "not allowed to subscribe to topic b\n", "topic")


@pytest.mark.parametrize("session, status, www", [
    ("unauth", 401, "Bearer"), ("forbid", 403, None)])
def test_auth_url_denial_passed_through(start_server, auth_app, session, status, www):
    srv = start_server("--auth-url", auth_app.url())
    for headers in ({"Cookie": "session=" + session},
                    {"Cookie": "session=" + session, "Accept": "text/event-stream"}):
        expect_refusal(srv.port, "/events?topic=a", headers, status,
                       "the application refused this subscription\n", "denied", www=www)
    assert auth_app.count() == 2


UNAVAILABLE_BODY = b"the application cannot say now; try again\n"


def expect_unavailable(port, headers, path="/events?topic=a", timeout=15):
    """Both answers to an application that cannot say: 200 + retry: + close to an
    EventSource, 503 + Retry-After: 1 to another request. Each counts as unavailable."""
    before = refused_counts(port)
    resp, tail = exchange_closing(
        port, build_request("GET", path, dict(headers, **EVENT_STREAM)), timeout=timeout)
    assert resp.status == 200, (resp.raw_head, resp.body)
    assert resp.header("Content-Type") == "text/event-stream", resp.raw_head
    m = re.fullmatch(rb"retry: (\d+)\n\n", resp.body + tail)
    assert m, resp.body + tail
    assert 3000 <= int(m.group(1)) <= 6000
    resp = ask(port, path, headers, timeout=timeout)
    assert (resp.status, resp.body) == (503, UNAVAILABLE_BODY), (resp.raw_head, resp.body)
    assert resp.header("Retry-After") == "1"
    assert resp.header("Content-Type") == TEXT
    want = dict(before)
    want["unavailable"] += 2
    assert refused_counts(port) == want


@pytest.mark.parametrize("session", ["broken", "gone", "hangup", "garbage", "badheader"])
def test_auth_url_failure_is_unavailable(start_server, auth_app, session):
    srv = start_server("--auth-url", auth_app.url())
    expect_unavailable(srv.port, {"Cookie": "session=" + session})
    assert auth_app.count() == 2
    healthy(srv.port)


def test_auth_url_connection_refused_is_unavailable(start_server):
    srv = start_server("--auth-url", "http://127.0.0.1:%d/auth" % free_port())
    expect_unavailable(srv.port, {"Cookie": "session=ok"})
    assert metric_values(srv.port)["sse_auth_requests_total"] == 2
    healthy(srv.port)


def test_auth_url_slow_application_does_not_block_the_server(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url(), "--publish-token", "secret")
    port = srv.port
    result = {}

    def slow_subscriber():
        t0 = time.monotonic()
        try:
            result["answer"] = exchange_closing(port, build_request(
                "GET", "/events?topic=a", {"Cookie": "session=slow", **EVENT_STREAM}),
                timeout=20)
        except BaseException as e:
            result["error"] = e
        result["took"] = time.monotonic() - t0

    t = threading.Thread(target=slow_subscriber, daemon=True)
    t.start()
    wait_until(lambda: auth_app.count() == 1, what="the application to be asked")
    # while the application thinks, the server serves everyone else
    healthy(port)
    assert metric_values(port)["sse_auth_requests_total"] == 1
    stream_ok(port, "/events?topic=a", {"Cookie": "session=ok"}, ("a",))
    assert "answer" not in result and "error" not in result
    t.join(25)
    assert not t.is_alive()
    assert "error" not in result, result
    resp, tail = result["answer"]
    assert resp.status == 200 and re.fullmatch(rb"retry: \d+\n\n", resp.body + tail), resp.body
    assert result["took"] > 3, result  # given its 5 s; no upper bound but the 20 s above
    assert refused_counts(port)["unavailable"] == 1
    healthy(port)


def test_auth_url_not_asked_for_public_topics(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url(), "--public", "news", "--publish-token",
                       "secret")
    stream_ok(srv.port, "/events?topic=news")
    stream_ok(srv.port, "/events?topic=news", {"Cookie": "session=forbid"})
    assert auth_app.count() == 0
    expect_refusal(srv.port, "/events?topic=news&topic=priv", {"Cookie": "session=forbid"},
                   403, "the application refused this subscription\n", "denied")
    assert auth_app.count() == 1


def test_auth_url_after_token_checks(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url(), "--jwt-secret", KEY, "--publish-token",
                       "secret")
    port = srv.port
    (tok,) = jose({"claims": grants(["a"]), "exp": 600})
    cookie = "session=ok-7"
    stream_ok(port, "/events?topic=a", dict(bearer(tok), Cookie=cookie), ("a",))
    assert auth_app.count() == 1
    assert headers_of(auth_app.last())["authorization"] == ["Bearer " + tok]
    # a token refused never reaches the application
    expect_refusal(port, "/events?topic=a", dict(bearer(hand_token(grants(["a"]), key="x")),
                                                 Cookie=cookie),
                   401, "token refused: bad signature\n", "signature", www=INVALID)
    expect_topic_refused(port, "/events?topic=b", dict(bearer(tok), Cookie=cookie), "b")
    assert auth_app.count() == 1
    # a valid token the application denies
    expect_refusal(port, "/events?topic=a", dict(bearer(tok), Cookie="session=forbid"), 403,
                   "the application refused this subscription\n", "denied")
    assert auth_app.count() == 2


def test_auth_cache(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url(), "--auth-cache", "5", "--publish-token",
                       "secret")
    port = srv.port
    ok1 = {"Cookie": "session=ok1"}
    t1 = time.monotonic()
    stream_ok(port, "/events?topic=a", ok1, ("a",))
    assert auth_app.count() == 1
    stream_ok(port, "/events?topic=a", ok1, ("a",))
    t2 = time.monotonic()
    cached = t2 - t1 < 4.5  # else the entry may have gone: say nothing of it
    if cached:
        assert auth_app.count() == 1
    n = auth_app.count()
    stream_ok(port, "/events?topic=a", {"Cookie": "session=ok2"}, ("a",))  # another cookie
    assert auth_app.count() == n + 1
    stream_ok(port, "/events?topic=a&topic=b", ok1, ("a", "b"))  # other topics
    assert auth_app.count() == n + 2
    stream_ok(port, "/events?topic=a", dict(ok1, Authorization="Bearer x"), ("a",))
    assert auth_app.count() == n + 3
    # a denial is remembered too; a failure never is
    deny = {"Cookie": "session=forbid"}
    for _ in range(2):
        expect_refusal(port, "/events?topic=a", deny, 403,
                       "the application refused this subscription\n", "denied")
    assert auth_app.count() == n + 4
    for _ in range(2):
        r = ask(port, "/events?topic=a", {"Cookie": "session=broken"})
        assert (r.status, r.body) == (503, UNAVAILABLE_BODY)
    assert auth_app.count() == n + 6
    m = metric_values(port)
    assert m["sse_auth_requests_total"] == n + 6
    assert m["sse_auth_cache_hits_total"] == (2 if cached else 1)
    # once the cache time has passed the application is asked again
    time.sleep(max(0, t2 + 6.5 - time.monotonic()))
    stream_ok(port, "/events?topic=a", ok1, ("a",))
    assert auth_app.count() == n + 7


def test_auth_without_cache_asks_every_time(start_server, auth_app):
    srv = start_server("--auth-url", auth_app.url(), "--publish-token", "secret")
    for i in range(3):
        stream_ok(srv.port, "/events?topic=a", {"Cookie": "session=ok"}, ("a",))
        assert auth_app.count() == i + 1
    m = metric_values(srv.port)
    assert (m["sse_auth_requests_total"], m["sse_auth_cache_hits_total"]) == (3, 0)
