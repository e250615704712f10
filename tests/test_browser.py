"""A real browser's EventSource against sse-server: headless Debian Chromium driven by
playwright-core (tests/clients.py, tests/browser/driver.mjs). The test page
tests/browser/pages/harness.html records every event the browser dispatches and compares them,
in the page, with what the test published. A screenshot of the demo page is kept in
tests/browser/out/ for a person to look at."""

import json
import os
import re
import signal
import threading
import time
from urllib.parse import urlencode

import pytest

from clients import HERE, Browser, TcpRelay, header_value, wait_until
from conftest import metric_values, pub, publish

PAGES = os.path.join(HERE, "browser", "pages")
OUT = os.path.join(HERE, "browser", "out")


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def harness_url(origin, stream, types=(), credentials=False):
    query = {"stream": stream}
    if types:
        query["types"] = ",".join(types)
    if credentials:
        query["credentials"] = "1"
    return "%s/harness.html?%s" % (origin, urlencode(query))


def compare(browser, want):
    assert browser.eval("compare(%s)" % json.dumps(want)) == "ok"


def wire_lines(browser):
    """The demo page's wire panel: [class, text] of each raw line shown."""
    return browser.eval(
        "Array.from(document.querySelectorAll('#wire .ln'))"
        ".map(l => [l.className.replace('ln ', ''), l.textContent])"
    )


def test_demo_page_shows_time_stocks_news_and_the_wire(browser, start_server):
    srv = start_server("--demo", "--heartbeat", "1")
    browser.goto(srv.url + "/")
    browser.wait(
        "document.querySelector('#clock').textContent.startsWith('20')"
        " && document.querySelectorAll('#stocks > *').length >= 3"
        " && /[0-9]+\\.[0-9]{2}/.test(document.querySelector('#stocks').innerText)",
        timeout=15,
    )
    assert browser.eval("document.querySelector('#state').textContent") == "OPEN"
    # Three topics come over one EventSource; the wire panel's fetch() is the other subscriber.
    assert metric_values(srv.port)["sse_subscribers"] == 2
    # A second tick of the clock arrives on the same connection.
    first = browser.eval("document.querySelector('#clock').textContent")
    browser.wait("document.querySelector('#clock').textContent !== %s" % json.dumps(first), 5)
    assert metric_values(srv.port)["sse_connections_total"] <= 4  # page, stream, wire, favicon
    assert browser.eval("document.querySelector('#retry').textContent").startswith("3000 ms")
    # The footer's curl lines name the host and port that served the page.
    footer = browser.eval("document.querySelector('footer').innerText")
    assert footer.count(srv.url.rstrip("/") + "/events") == 3 and "localhost" not in footer, footer
    # The connection panel's last id is the id of the last event dispatched, and a symbol
    # quoted twice has a sparkline: a polyline through as many points as quotes, up to 30.
    assert browser.eval("document.querySelector('#last-id').textContent"
                        " === demoState.ids[demoState.ids.length - 1]")
    browser.wait("Array.from(document.querySelectorAll('#stocks svg polyline'))"
                 ".some(p => (p.getAttribute('points') || '').split(' ').length >= 2)", 10)

    # The headline (every five seconds) is one event of two data: lines: two lines on the
    # wire, one string with a newline in the EventSource's event.
    browser.wait("document.querySelector('#headline-2').textContent.startsWith('last trade')", 8)
    browser.wait("Array.from(document.querySelectorAll('#wire .f-event'))"
                 ".some(l => l.textContent.startsWith('event: headline'))", 5)
    lines = wire_lines(browser)
    kinds = [k for k, _ in lines]
    texts = [t for _, t in lines]
    assert any(k == "f-retry" and t.startswith("retry: 3000\\n") for k, t in lines), lines
    assert any(k == "f-id" and re.match(r"^id: \d+\\n$", t) for k, t in lines), lines
    assert any(k == "f-event" and t == "event: quote\\n" for k, t in lines), lines
    assert any(k == "f-data" and t.startswith('data: {"symbol":') for k, t in lines), lines
    assert any(k == "f-blank" and t.startswith("\\n") for k, t in lines), lines
    # The mirror's first request, and the head with what its lines mean.
    assert any(k == "f-req" and t.startswith("GET /events?topic=time&topic=stocks") for k, t in lines)
    cache = [t for k, t in lines if k == "f-head" and t.startswith("cache-control: no-cache")]
    assert cache and "no reuse without asking the server again" in cache[0], lines
    at = texts.index("event: headline\\n")
    assert kinds[at + 1 : at + 4] == ["f-data", "f-data", "f-blank"], lines[at : at + 4]
    assert texts[at + 2].startswith("data: last trade "), lines[at : at + 4]
    dispatched = browser.eval(
        "Array.from(document.querySelectorAll('#dispatched li')).map(l => l.textContent)")
    assert any(d.startswith("headline") and "\u21b5\nlast trade" in d for d in dispatched)

    os.makedirs(OUT, exist_ok=True)
    path = browser.screenshot(os.path.join(OUT, "demo.png"))
    assert os.path.getsize(path) > 10000
    # On a phone's width nothing runs off the side.
    browser.viewport(390, 844)
    assert browser.eval("document.documentElement.scrollWidth") <= 390
    path = browser.screenshot(os.path.join(OUT, "demo-phone.png"))
    assert os.path.getsize(path) > 10000

    # Nothing is published on /events/quiet, so its bytes show the heartbeat comment.
    browser.eval("(s => { s.value = 'quiet'; s.dispatchEvent(new Event('change')); })"
                 "(document.querySelector('#wire-source'))")
    browser.wait("document.querySelector('#wire .f-comment')", 5)
    assert any(k == "f-comment" and t.startswith(":\\n") for k, t in wire_lines(browser))
    assert browser.eval("document.querySelector('#wire-status').textContent").startswith(
        "/events/quiet")


def moment_lines(browser, number):
    """The Bytes column once it holds still on its moment number (1 = the first kept)."""
    browser.wait("demoState.moments.length >= %d && document.querySelectorAll('#moments button')"
                 "[%d].getAttribute('aria-pressed') === 'true'" % (number, number - 1), 10)
    return wire_lines(browser)


def test_demo_page_drop_replays_and_restart_resets(browser, start_server):
    srv = start_server("--demo")  # the default retry, 3000 ms: README's picture comes from here
    relay = TcpRelay(srv.port)  # to see the browser's own reconnect on the wire
    try:
        browser.goto("http://127.0.0.1:%d/" % relay.port)
        browser.wait("document.querySelector('#state').textContent === 'OPEN'"
                     " && demoState.ids.length >= 5", 10)
        visitor = browser.eval("document.querySelector('#stream-url').textContent")
        assert re.fullmatch(r"/events\?topic=time&topic=stocks&topic=news"
                            r"&topic=visitor-[0-9a-f]{16}", visitor), visitor
        browser.eval("document.querySelector('#drop').click()")
        # The server ends the page's stream (POST /demo/drop): the EventSource is CONNECTING,
        # waits the retry and comes back by itself; the missed events come first, every one
        # the wire connection saw while the page was away.
        browser.wait("document.querySelector('#state').textContent === 'CONNECTING'", 5)
        browser.wait("demoState.replayed > 0", 15)
        assert browser.eval("document.querySelector('#state').textContent") == "OPEN"
        assert browser.eval("document.querySelector('#reconnects').textContent") == "1"
        state = browser.eval("demoState")
        assert state["duplicates"] == 0
        assert state["replayed"] == state["missed"] >= 2, state  # 1 s of a few events a second
        # Every demo event is on the page's three topics and ids go up by one, so the page saw
        # each id exactly once, in order, with no gap at the drop.
        ids = [int(i) for i in state["ids"]]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert metric_values(srv.port)["sse_replays_total"] == 2  # the page's and the mirror's
        assert browser.eval("document.querySelectorAll('#dispatched .badge-replay').length") > 0
        # On the wire: one POST answered 200, then the browser's own GET of the same URL with
        # the Last-Event-ID header (not the query), a second or so after the stream ended; and
        # the same from the Bytes column's fetch() mirror of the EventSource.
        drops = [x for x in relay.exchanges() if x["request"].startswith(b"POST /demo/drop?")]
        assert len(drops) == 1 and drops[0]["response"].startswith(b"HTTP/1.1 200 OK\r\n")
        streams = stream_requests(relay, visitor)
        assert len(streams) == 4, streams
        sent = [header_value(x["request"], "Last-Event-ID") for x in streams]
        assert sent[:2] == [None, None], sent
        resumed = sent[2]
        # ... carrying the id of the last event the page had when the stream ended.
        assert resumed is not None and int(resumed) in ids and sent[3] == resumed, sent
        for x in streams[2:]:
            assert x["at"] - drops[0]["at"] >= 1.5, x["at"] - drops[0]["at"]
        # The Bytes column holds still on that moment, as bytes: the end of the response, the
        # mirror's new GET with Last-Event-ID, the replayed events (marked), then live ones.
        lines = moment_lines(browser, 1)
        kinds = [k for k, _ in lines]
        texts = [t for _, t in lines]
        end = texts.index("\u2014 the server ended the response \u2014")
        assert "f-end" in kinds[end], lines
        get = texts.index("GET " + visitor + " as EventSource asks", end)
        assert kinds[get] == "f-req", lines
        assert texts[get + 2] == "Last-Event-ID: %s the last event id this mirror holds" % resumed
        assert "f-lastid" in kinds[get + 2], lines
        replay = [int(t[4:-2]) for k, t in lines if k == "f-id m-replay"]
        assert kinds.index("f-id m-replay") > get + 2, lines
        n = state["missed"]
        assert replay == list(range(int(resumed) + 1, int(resumed) + 1 + n)), (replay, resumed, n)
        assert kinds.count("f-blank m-replay") == n, lines
        assert texts[kinds.index("f-id m-replay") - 1].startswith("\\n"), lines  # after retry:
        assert ("\u2014 %d events after #%s replayed, sent with the response head; live events "
                "follow \u2014" % (n, resumed)) in texts, lines
        assert browser.eval("document.querySelector('#wire-pause').textContent").startswith(
            "Back to live bytes")
        log = browser.eval("document.querySelector('#log').innerText")
        assert "ended the response after event #%s" % resumed in log, log
        assert "reconnected by itself" in log and "Last-Event-ID: %s" % resumed in log, log
        assert "nothing was lost" in log, log
        assert "In the Bytes column" in log and "Last-Event-ID: %s" % resumed in log, log
        os.makedirs(OUT, exist_ok=True)  # what a learner sees after a drop: README's picture
        assert os.path.getsize(browser.screenshot(os.path.join(OUT, "demo-drop.png"))) > 10000

        browser.eval("document.querySelector('#restart').click()")
        browser.wait("demoState.resets === 1", 10)
        lines = moment_lines(browser, 2)
        assert metric_values(srv.port)["sse_resets_total"] == 2  # the page's and the mirror's
        kinds = [k for k, _ in lines]
        texts = [t for _, t in lines]
        end = [i for i, k in enumerate(kinds) if "f-end" in k]
        assert len(end) == 1 and texts[end[0]].startswith("\u2014 this page closed the response")
        # The mirror asks as the new EventSource does: the old id in the query, no header.
        stale = browser.eval("demoState.moments[1].after")
        get = texts.index("GET %s&lastEventId=%s as EventSource asks" % (visitor, stale), end[0])
        assert texts[get + 2].startswith("(no Last-Event-ID header"), lines
        assert not any(t.startswith("Last-Event-ID:") for t in texts[get:]), lines
        reset = kinds.index("f-event m-reset")
        assert reset > get and texts[reset].startswith("event: reset\\n"), lines
        assert kinds[reset - 1] == "f-id m-reset" and kinds[reset + 1] == "f-data m-reset", lines
        assert json.loads(texts[reset + 1][len("data: "):-2])["requested"] == stale, lines
        assert kinds[reset + 2] == "f-blank m-reset", lines
        assert len(stream_requests(relay, "%s&lastEventId=%s" % (visitor, stale))) == 2
        assert browser.eval("document.querySelector('#reconnects').textContent") == "2"
        assert browser.eval("!document.querySelector('#notice').hidden")
        assert "reset" in browser.eval("document.querySelector('#notice-text').textContent")
        assert browser.eval("Array.from(document.querySelectorAll('#dispatched .type'))"
                            ".some(t => t.textContent === 'reset')")
        log = browser.eval("document.querySelector('#log').innerText")
        assert "reloads its state" in log, log
        # Live events go on after the reset: the cleared charts fill again.
        browser.wait("document.querySelectorAll('#stocks > *').length >= 1", 5)
        assert browser.eval("demoState.duplicates") == 0
        # The first moment is kept: its button brings the drop back.
        browser.eval("document.querySelectorAll('#moments button')[0].click()")
        assert "Last-Event-ID: %s the last event id this mirror holds" % resumed in [
            t for _, t in wire_lines(browser)]
        browser.viewport(390, 844)  # the moments and their lines fit a phone's width too
        assert browser.eval("document.documentElement.scrollWidth") <= 390
    finally:
        relay.close()


def test_demo_page_drop_without_demo_mode_says_so(browser, start_server):
    srv = start_server()  # the built-in page, but no --demo: no /demo/drop route
    browser.goto(srv.url + "/")
    browser.wait("document.querySelector('#state').textContent === 'OPEN'", 10)
    browser.eval("document.querySelector('#drop').click()")
    browser.wait("document.querySelector('#log').innerText.includes('it needs --demo')", 5)
    assert "(405)" in browser.eval("document.querySelector('#log').innerText")
    assert browser.eval("document.querySelector('#state').textContent") == "OPEN"
    assert not browser.eval("document.querySelector('#drop').disabled")


def test_event_types_and_multiline_data_arrive_exactly(browser, start_server):
    srv = start_server("--publish-token", "secret", "--root", PAGES)
    browser.goto(harness_url(srv.url, "/events/mix", types=("price", "news")))
    browser.wait("rec.opens === 1")
    published = [
        ("plain", None),
        ("p=1", "price"),
        ("line one\nline two\r\nline three\rline four", "news"),
        ("", None),
        ("nobody listens to this type", "unheard"),
        ("h\u00e9llo \u20ac \u4e2d\u6587 \U0001F600", "price"),
        ("x\n", None),
        ("  two leading spaces", "news"),
        ("data: fake\nid: 7\nevent: forged\n: comment", None),
        ("\n".join("row %d" % i for i in range(2000)), "news"),
    ]
    want = []
    for data, event in published:
        id_ = pub(srv.port, data, topic="mix", event=event)
        if event != "unheard":
            normalised = data.replace("\r\n", "\n").replace("\r", "\n")
            want.append({"type": event or "message", "data": normalised, "id": id_})
    browser.wait("rec.events.length >= %d" % len(want))
    time.sleep(0.2)  # nothing more may arrive
    compare(browser, want)
    assert browser.eval("rec.errors") == 0


def test_position_event_reaches_its_listener_and_never_onmessage(browser, start_server):
    """A stream opened without a last event id starts with the position event: dispatched
    (so every engine records its id, not only Chromium), of type "position", so neither
    onmessage nor message listeners see it."""
    srv = start_server("--publish-token", "secret", "--root", PAGES)
    cur = pub(srv.port, "before", topic="elsewhere")
    browser.goto(harness_url(srv.url, "/events/pos", types=("position",)))
    browser.wait("rec.events.length >= 1")
    compare(browser, [{"type": "position", "data": "", "id": cur}])
    id_ = pub(srv.port, "after", topic="pos")
    browser.wait("rec.events.length >= 2")
    time.sleep(0.2)  # nothing more may arrive
    compare(browser, [{"type": "position", "data": "", "id": cur},
                      {"type": "message", "data": "after", "id": id_}])
    assert browser.eval("rec.onmessage") == 1
    browser.goto(harness_url(srv.url, "/events/pos"))  # nobody listens to "position"
    browser.wait("rec.opens === 1")
    id2 = pub(srv.port, "again", topic="pos")
    browser.wait("rec.events.length >= 1")
    time.sleep(0.2)
    compare(browser, [{"type": "message", "data": "again", "id": id2}])
    assert browser.eval("rec.onmessage") == 1


def stream_requests(relay, path):
    """The requests for the stream at path that went through the relay, in order."""
    return [x for x in relay.exchanges() if x["request"].startswith(b"GET %s " % path.encode())]


def test_reconnects_after_cuts_with_last_event_id_and_loses_nothing(browser, start_server):
    retry = 0.3
    srv = start_server("--publish-token", "secret", "--root", PAGES, "--retry", "300")
    relay = TcpRelay(srv.port)
    try:
        browser.goto(harness_url("http://127.0.0.1:%d" % relay.port, "/events/feed"))
        browser.wait("rec.opens === 1")
        ids, total = [], 60

        def publisher():
            for i in range(total):
                ids.append(pub(srv.port, "event %d" % i, topic="feed"))
                time.sleep(0.025)

        t = threading.Thread(target=publisher)
        t.start()
        cuts = []
        for n, cut_at in enumerate((15, 35)):
            wait_until(lambda: len(ids) >= cut_at, what="publishes")
            # Connected again, with an event on this connection: the page's last id is a
            # message's, not the id-only line a fresh stream starts with.
            browser.wait("rec.opens === %d && rec.events.length > rec.eventsAtOpen[%d]"
                         % (n + 1, n))
            cuts.append(time.monotonic())
            assert relay.sever() >= 1
        t.join(timeout=30)
        assert len(ids) == total
        browser.wait("rec.events.length >= %d" % total, timeout=20)
        time.sleep(0.3)
        compare(browser, [{"data": "event %d" % i, "id": ids[i]} for i in range(total)])
        assert browser.eval("rec.opens") == 3
        errors = browser.eval("rec.errorLog")
        assert [e["readyState"] for e in errors] == [0, 0], errors  # CONNECTING: it retries
        streams = stream_requests(relay, "/events/feed")
        assert len(streams) == 3, streams
        assert header_value(streams[0]["request"], "Last-Event-ID") is None
        for cut, error, resumed in zip(cuts, errors, streams[1:]):
            # Each reconnect resumes from the last event the page had when the cut came,
            # after waiting out the stream's retry: (at least roughly: half of it).
            assert header_value(resumed["request"], "Last-Event-ID") == error["lastId"]
            assert error["lastId"] in ids
            assert resumed["at"] - cut >= retry / 2, (resumed["at"] - cut, retry)
            assert resumed["response"].startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        relay.close()


def test_restart_on_same_port_sends_reset(browser, start_server):
    first = start_server("--publish-token", "secret", "--root", PAGES, "--retry", "300")
    port = first.port
    browser.goto(harness_url(first.url, "/events/news", types=("reset",)))
    browser.wait("rec.opens === 1")
    before = [pub(port, "before %d" % i, topic="news") for i in range(3)]
    browser.wait("rec.events.length === 3")
    first.stop()
    browser.wait("rec.errors >= 1")
    second = start_server(
        "--listen", "127.0.0.1:%d" % port, "--publish-token", "secret", "--root", PAGES,
        "--retry", "300",
    )
    assert second.port == port
    browser.wait("rec.events.some(e => e.type === 'reset')", timeout=15)
    reset = browser.eval("rec.events.find(e => e.type === 'reset')")
    assert json.loads(reset["data"])["requested"] == before[-1]
    after = pub(port, "after", topic="news")
    browser.wait("rec.events.length === 5")
    compare(
        browser,
        [{"data": "before %d" % i, "id": before[i]} for i in range(3)]
        + [{"type": "reset", "id": reset["id"]}, {"type": "message", "data": "after", "id": after}],
    )
    assert int(reset["id"]) < int(after)


def test_retired_topic_makes_the_browser_stop(browser, start_server):
    srv = start_server("--publish-token", "secret", "--root", PAGES, "--retry", "200")
    relay = TcpRelay(srv.port)
    try:
        browser.goto(harness_url("http://127.0.0.1:%d" % relay.port, "/events/gone"))
        browser.wait("rec.opens === 1")
        assert browser.eval("es.readyState") == 1
        r = publish(srv.port, b"", topic="gone", method="DELETE")
        assert r.status == 200, r
        browser.wait("es.readyState === 2", timeout=10)
        # At retry: 200 a browser still trying would come back several times in 1.5 s.
        time.sleep(1.5)
        streams = stream_requests(relay, "/events/gone")
        # The stream, then the browser's one reconnect, answered 204, and nothing after it.
        status = [(x["response"] or b"").split(b"\r\n")[0] for x in streams]
        assert status == [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content"], streams
        assert browser.eval("rec.opens") == 1
        # The close makes it reconnect (CONNECTING), the 204 makes it stop (CLOSED).
        errors = browser.eval("rec.errorLog")
        assert [e["readyState"] for e in errors] == [0, 2], errors
    finally:
        relay.close()


@pytest.mark.parametrize("cors", [True, False])
def test_cors_from_another_origin(browser, start_server, cors):
    page_server = start_server("--root", PAGES)
    origin = page_server.url
    args = ("--publish-token", "secret") + (("--cors", origin) if cors else ())
    srv = start_server(*args)
    browser.goto(harness_url(origin, srv.url + "/events/x", credentials=True))
    if not cors:
        # Without Access-Control-Allow-Origin the browser fails the connection for good.
        browser.wait("es.readyState === 2")
        assert browser.eval("rec.opens") == 0
        return
    browser.wait("rec.opens === 1")
    id_ = pub(srv.port, "across origins", topic="x")
    browser.wait("rec.events.length === 1")
    compare(browser, [{"data": "across origins", "id": id_}])


@pytest.mark.journal
def test_restart_with_journal_gives_every_event_exactly_once(browser, start_server, tmp_path):
    journal = str(tmp_path / "journal")
    args = ("--publish-token", "secret", "--root", PAGES, "--retry", "300", "--journal", journal)
    first = start_server(*args)
    port = first.port
    relay = TcpRelay(port)
    try:
        browser.goto(harness_url("http://127.0.0.1:%d" % relay.port, "/events/news",
                                 types=("reset",)))
        browser.wait("rec.opens === 1")
        ids = [pub(port, "before %d" % i, topic="news") for i in range(3)]
        browser.wait("rec.events.length === 3")
        # The browser cannot get through while the server crashes (kill -9: the journal keeps
        # every acknowledged event through a process crash) and another takes its place.
        relay.hold()
        first.signal(signal.SIGKILL)
        first.wait()
        browser.wait("rec.errors === 1")
        wait_until(lambda: relay.held() >= 1, what="the browser's reconnect")
        second = start_server("--listen", "127.0.0.1:%d" % port, *args)
        assert second.port == port
        # Published while the browser is away: it can only get these from the journal's replay.
        ids += [pub(port, "after %d" % i, topic="news") for i in range(3)]
        assert browser.eval("rec.events.length") == 3
        relay.release()
        browser.wait("rec.opens === 2 && rec.events.length >= 6", timeout=15)
        time.sleep(0.3)
        data = ["before %d" % i for i in range(3)] + ["after %d" % i for i in range(3)]
        # Every event once, in order, and no reset (the page listens for it).
        compare(browser, [{"type": "message", "data": d, "id": i} for d, i in zip(data, ids)])
        streams = stream_requests(relay, "/events/news")
        assert len(streams) == 2, streams
        assert browser.eval("rec.errorLog") == [{"lastId": ids[2], "readyState": 0}]
        assert header_value(streams[1]["request"], "Last-Event-ID") == ids[2]
        metrics = metric_values(port)
        assert metrics["sse_replays_total"] == 1 and metrics["sse_resets_total"] == 0, metrics
    finally:
        relay.close()
