#!/usr/bin/env python3
"""A small mutation check (`make mutants`): plants each of a handful of plausible one-line
bugs in a copy of sse.c, builds that copy into build/mutants/NAME/sse-server, runs only the
tests named for it against that binary (SSE_SERVER_BIN) and reports whether they caught it.
Exit status 0 when every mutant is caught, 1 when one is missed (or cannot be planted or
built), 2 when the named tests fail against the real binary (the control run), since then
a "caught" would mean nothing.

Each mutant finds an exact fragment of sse.c that must occur exactly once: when sse.c
changes under it the script says so and fails, and the fragment is updated here (the bug
it stands for stays the same). Run one mutant with `tests/mutants.py NAME...`; `--list`
prints the table; `--no-control` skips the control run.

It needs the objects `make sse-server` leaves in build/ (main.o, demo_page.o)."""

import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "build", "mutants")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
CC = os.environ.get("CC", "cc")
TIMEOUT = 300  # seconds for one mutant's tests (each test is bounded far below)

# name: (what the bug is, fragment of sse.c, its replacement, tests expected to catch it)
MUTANTS = {
    "stale-position": (
        "a publish leaves the cached opening id block in place: later subscribers are told "
        "an old id",
        "    blob_unref(srv->id_line);\n    srv->id_line = NULL;\n    topic_retire_flag(t, false);",
        "    topic_retire_flag(t, false);",
        ["tests/test_stream.py::test_initial_id_refreshed_by_each_publish"],
    ),
    "heartbeat-twice-the-interval": (
        "heartbeats come every 2 x --heartbeat",
        "srv->timers[TIMER_STREAM].duration = srv->heartbeat_ms ? srv->heartbeat_ms :",
        "srv->timers[TIMER_STREAM].duration = srv->heartbeat_ms ? srv->heartbeat_ms * 2 :",
        ["tests/test_stream.py::test_heartbeat_comes_at_its_interval"],
    ),
    "heartbeat-half-the-interval": (
        "heartbeats come every --heartbeat / 2",
        "srv->timers[TIMER_STREAM].duration = srv->heartbeat_ms ? srv->heartbeat_ms :",
        "srv->timers[TIMER_STREAM].duration = srv->heartbeat_ms ? srv->heartbeat_ms / 2 :",
        ["tests/test_stream.py::test_heartbeat_comes_at_its_interval"],
    ),
    "replay-off-by-one": (
        "a replay starts at the last event the client had, not the one after it",
        "        if (backlog_at(bl, mid)->id <= id)",
        "        if (backlog_at(bl, mid)->id < id)",
        ["tests/test_replay.py::test_replay_by_header"],
    ),
    "last-id-equal-current-reset": (
        "a client that missed nothing (last id = current) is sent the reset event",
        "    if (last == current)\n        return true;",
        "    if (last == current)\n        return false;",
        ["tests/test_replay.py::test_last_id_equal_current_sends_nothing"],
    ),
    "replays-not-counted": (
        "an exact replay from the backlog is not counted in sse_replays_total",
        "        srv->m.replays_total++;\n        return stream_replay_rest(srv, c, after);",
        "        return stream_replay_rest(srv, c, after);",
        ["tests/test_replay.py::test_replays_and_resets_counted"],
    ),
    "client-buffer-check-inverted": (
        "the slow-subscriber drop check is inverted: a subscriber whose queue fits is "
        "dropped, one past --client-buffer is not",
        "    if (c->qbytes && c->qbytes + ev->len > srv->client_buffer) {",
        "    if (c->qbytes && c->qbytes + ev->len <= srv->client_buffer) {",
        ["tests/test_limits.py::test_slow_subscriber_dropped_others_keep_up"],
    ),
    "crlf-in-topic-name": (
        "CR and LF are accepted in a topic name (header and log injection)",
        "                  c == '.' || c == '_' || c == '-';",
        "                  c == '.' || c == '_' || c == '-' || c == '\\r' || c == '\\n';",
        ["tests/test_injection.py::test_a_control_alone_makes_a_topic_invalid"],
    ),
    "dot-dot-inside-root": (
        "a '..' segment of a static path is passed on when it stays inside the root",
        "        if (n == 2 && path[s] == '.' && path[s + 1] == '.')\n            return -1;\n",
        "",
        ["tests/test_static.py::test_dot_dot_inside_the_root_refused"],
    ),
    "flow-control-never-holds": (
        "flow control never closes the gate, however many subscribers lag",
        "    if (!p->held && (uint64_t)p->lagging * PACE_SHARE > n) {",
        "    if (false && !p->held && (uint64_t)p->lagging * PACE_SHARE > n) {",
        ["tests/test_flow_control.py::test_http_publisher_is_paced"],
    ),
}

WARNINGS = ["-std=c11", "-Wall", "-Wextra"]


def plant(name, source):
    """The mutant's source; ValueError when the fragment is not there exactly once."""
    _, find, replace, _ = MUTANTS[name]
    n = source.count(find)
    if n != 1:
        raise ValueError("%s: its fragment occurs %d times in sse.c (must be once): update "
                         "tests/mutants.py to today's code\n  fragment: %r" % (name, n, find))
    return source.replace(find, replace)


def build(name, source):
    """Builds the mutant; returns (binary path, None) or (None, compiler output)."""
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    src = os.path.join(d, "sse.c")
    with open(src, "w") as f:
        f.write(source)
    binary = os.path.join(d, "sse-server")
    objs = [os.path.join(ROOT, "build", "main.o"), os.path.join(ROOT, "build", "demo_page.o")]
    cmd = [CC, *WARNINGS, "-O1", "-g", "-I", ROOT, src, *objs, "-o", binary]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        return None, r.stdout
    return binary, None


def run_tests(binary, tests):
    """Runs the tests against binary; returns (pytest exit status, seconds, output tail)."""
    env = dict(os.environ, SSE_SERVER_BIN=binary)
    env.pop("SSE_SERVER_WRAPPER", None)
    start = time.monotonic()
    try:
        r = subprocess.run([PYTHON, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=TIMEOUT)
        rc, out = r.returncode, r.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        rc, out = "timeout", out.decode("utf-8", "replace") if isinstance(out, bytes) else out
    tail = "\n".join(out.strip().splitlines()[-15:])
    return rc, time.monotonic() - start, tail


def main(argv):
    names = [a for a in argv if not a.startswith("-")]
    if "--list" in argv:
        for name, (what, _, _, tests) in MUTANTS.items():
            print("%-30s %s\n%30s   caught by: %s" % (name, what, "", " ".join(tests)))
        return 0
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        print("mutants: unknown: %s (see --list)" % " ".join(unknown), file=sys.stderr)
        return 2
    names = names or list(MUTANTS)
    for obj in ("main.o", "demo_page.o"):
        if not os.path.exists(os.path.join(ROOT, "build", obj)):
            print("mutants: build/%s is missing: run make sse-server first" % obj, file=sys.stderr)
            return 2
    with open(os.path.join(ROOT, "sse.c")) as f:
        original = f.read()
    planted = {}
    problems = []
    for name in names:
        try:
            planted[name] = plant(name, original)
        except ValueError as e:
            problems.append(str(e))
    for p in problems:
        print("mutants: " + p, file=sys.stderr)
    if problems:
        return 1

    if "--no-control" not in argv:
        tests = sorted({t for n in names for t in MUTANTS[n][3]})
        real = os.path.join(ROOT, "sse-server")
        rc, secs, tail = run_tests(real, tests)
        print("control: %d test ids against ./sse-server: %s (%.0f s)"
              % (len(tests), "pass" if rc == 0 else "FAIL", secs), flush=True)
        if rc != 0:
            print(tail)
            print("mutants: the named tests must pass against the real binary first",
                  file=sys.stderr)
            return 2

    shutil.rmtree(OUT, ignore_errors=True)
    results = []
    for name in names:
        what, _, _, tests = MUTANTS[name]
        binary, err = build(name, planted[name])
        if binary is None:
            results.append((name, "NOT BUILT"))
            print("%-30s NOT BUILT\n%s" % (name, err), flush=True)
            continue
        rc, secs, tail = run_tests(binary, tests)
        if rc == 1 or rc == "timeout":
            verdict = "caught" if rc == 1 else "caught (tests timed out)"
        elif rc == 0:
            verdict = "MISSED"
        else:  # 2 interrupted, 3 internal error, 4 usage (a test id not found), 5 none ran
            verdict = "ERROR (pytest exit %s)" % rc
        results.append((name, verdict))
        print("%-30s %-8s %4.0f s  %s" % (name, verdict, secs, what), flush=True)
        if not verdict.startswith("caught"):
            print("  tests: %s\n%s" % (" ".join(tests), tail), flush=True)
        else:  # how: the failed test and its first error line
            how = [line for line in tail.splitlines() if line.startswith(("FAILED", "E "))]
            print("  " + "\n  ".join(line[:150] for line in how[:2]), flush=True)
    bad = [n for n, v in results if not v.startswith("caught")]
    print("mutants: %d of %d caught%s" % (len(results) - len(bad), len(results),
          "; not: " + ", ".join(bad) if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
