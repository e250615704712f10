#!/usr/bin/python3
"""Connects per second with and without a token to verify (issue 18), side by side in one run.

    /usr/bin/python3 bench/auth_connect.py [--smoke] [--rounds 12] [--connects 2000]
                                           [--clients 2] [--markdown]

Three sse-servers run at once: one started as usual, a second exactly like it (the control: how
far apart two identical servers measure is the run's resolution), and one with
--jwt-secret-file. Each connect is a short subscription: connect, `GET /events?topic=t` with
`Authorization: Bearer TOKEN` (an HS256 token granting `t`, as an application mints one; the
server without a key ignores it, so all get the same bytes), read the response head up to the
blank line, close (with an RST, so the client's ports are not held in TIME_WAIT). Rounds go to
the servers in turn (A B C, then B C A, ...), so a machine that gets busier or quieter mid-run
weighs on each alike; the servers are kept on one core and the clients on the other(s), so the
kernel's TCP work is counted the same way every round.

Two figures per server, both over the same rounds:
- connects/s: what the client processes achieved. The clients are Python and share the
  machine with the servers, so this rate is as much the clients' as the server's;
- server CPU per connect (the server's on-CPU time from /proc/PID/schedstat, nanoseconds,
  user and kernel), and from it the connects/s one core of this machine could serve: the
  figure the issue's bar is about ("verifying must not cost more than 20% of the connect
  rate": with a token at least 0.8x the rate without).
Each server's figure is compared with the first's round by round (rounds of one index ran
back to back), and the median of those ratios is reported with their range. Then, when
valgrind is there (not with --smoke), the server's user-space instructions per connect under
callgrind, without a key and with one: a count the machine's load does not move, so what
verifying adds is seen however busy the machine is. The result is
printed as a table (with --markdown, as bench/RESULTS.md shows it). Nothing is
asserted about speed: a busy machine makes any figure of one run suspect; the ratio is what
holds. Python 3 standard library only; every server is killed by PID at the end.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

from run import free_port  # (bench/run.py: this directory is first on sys.path)

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SSE = os.path.join(ROOT, "sse-server")
KEY = base64.b64encode(os.urandom(32))
TOPIC = "t"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def mint(key, claims):
    signed = b64url(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64url(json.dumps(claims).encode())
    return (signed + b"." + b64url(hmac.new(key, signed, hashlib.sha256).digest())).decode()


def pin(cpus):
    """Keeps this process on cpus (when there are at least two): the servers on one core, the
    clients on the others, so where the kernel's TCP work is counted stays the same."""
    if cpus and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, cpus)


ALL_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPUS = ALL_CPUS[-1:] if len(ALL_CPUS) > 1 else []
CLIENT_CPUS = ALL_CPUS[:-1] if len(ALL_CPUS) > 1 else []


def on_cpu_ns(pid):
    """Nanoseconds the process's threads have run on a CPU so far (user and kernel)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
            total += int(f.read().split()[0])
    return total


def start(args, tmp, name, wrapper=(), timeout=10):
    port = free_port()
    err = open(os.path.join(tmp, name + ".err"), "wb")
    p = subprocess.Popen([*wrapper, SSE, "--listen", "127.0.0.1:%d" % port, "--quiet",
                          "--heartbeat", "0", "--max-clients", "4096", *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                         preexec_fn=lambda: pin(SERVER_CPUS))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SystemExit("%s exited: %s" % (name, open(err.name, errors="replace").read()))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit("%s did not listen" % name)


def client(port, request, n, out_fd):
    """A child process: n short subscriptions one after the other; writes how many got 200."""
    ok = 0
    linger = struct.pack("ii", 1, 0)
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        ok += head.startswith(b"HTTP/1.1 200 ")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()
    os.write(out_fd, b"%d\n" % ok)


def one_round(proc, port, request, connects, clients):
    """connects short subscriptions from clients processes at once: (wall s, server CPU ns,
    how many got 200)."""
    per = [connects // clients + (i < connects % clients) for i in range(clients)]
    r, w = os.pipe()
    cpu0, t0 = on_cpu_ns(proc.pid), time.monotonic()
    kids = []
    for n in per:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            pin(CLIENT_CPUS)
            try:
                client(port, request, n, w)
            finally:
                os._exit(0)
        kids.append(pid)
    os.close(w)
    for pid in kids:
        os.waitpid(pid, 0)
    wall, cpu = time.monotonic() - t0, on_cpu_ns(proc.pid) - cpu0
    with os.fdopen(r) as f:
        ok = sum(int(line) for line in f.read().split())
    return wall, cpu, ok


def instructions(configs, tmp, request, counts=(100, 400)):
    """User-space instructions per connect of each configuration, under callgrind: each server
    is run twice, for counts[0] and counts[1] connects one after the other, and the
    difference divided by the difference of the counts (so start-up and exit cancel out).
    Unlike CPU time this does not move with the machine's load; it leaves out the kernel's
    share of a connect (the same with a key or without)."""
    out = {}
    for name, args in configs:
        totals = []
        for n in counts:
            path = os.path.join(tmp, "callgrind.%d.%d" % (len(out), n))
            proc, port = start(args, tmp, "callgrind", timeout=60, wrapper=(
                "valgrind", "--tool=callgrind", "--callgrind-out-file=" + path))
            try:
                _, _, ok = one_round(proc, port, request, n, 1)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            if ok != n:
                raise SystemExit("%s under callgrind: %d of %d connects answered 200"
                                 % (name, ok, n))
            total = None
            with open(path) as f:
                for line in f:
                    if line.startswith("totals:") or (line.startswith("summary:")
                                                      and total is None):
                        total = int(line.split()[1])
            totals.append(total)
        out[name] = (totals[1] - totals[0]) / (counts[1] - counts[0])
    return out


def median(xs):
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a second or two, figures meaningless")
    ap.add_argument("--rounds", type=int, default=12, help="rounds per server (default 12)")
    ap.add_argument("--connects", type=int, default=2000, help="connects per round (2000)")
    ap.add_argument("--clients", type=int, default=2, help="client processes at once (2)")
    ap.add_argument("--markdown", action="store_true", help="the table as RESULTS.md shows it")
    ap.add_argument("--no-callgrind", action="store_true",
                    help="skip the instruction counts (valgrind; skipped with --smoke too)")
    a = ap.parse_args()
    if a.smoke:
        a.rounds, a.connects = 2, 200
    if not os.access(SSE, os.X_OK):
        raise SystemExit("build ./sse-server first (make)")

    tmp = tempfile.mkdtemp(prefix="sse-bench-auth-")
    keyfile = os.path.join(tmp, "jwt.key")
    with open(keyfile, "wb") as f:
        f.write(KEY + b"\n")
    token = mint(KEY, {"sub": "user-42", "exp": int(time.time()) + 3600,
                       "sse": {"subscribe": ["t", "user-42-*"]}})
    request = ("GET /events?topic=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Accept: text/event-stream\r\nAuthorization: Bearer %s\r\n\r\n"
               % (TOPIC, token)).encode()
    # The control is a second server exactly like the first: how far apart two identical
    # servers measure in this run is the run's resolution.
    configs = [("no key", []), ("no key, control", []),
               ("--jwt-secret-file", ["--jwt-secret-file", keyfile])]
    servers = {}
    try:
        for i, (name, args) in enumerate(configs):
            servers[name] = start(args, tmp, "server%d" % i)
        names = [name for name, _ in configs]
        for name in names:  # warm up: caches, the listen queue, the allocator
            one_round(servers[name][0], servers[name][1], request, max(a.connects // 5, 50),
                      a.clients)
        rounds = {name: [] for name in names}  # (wall, cpu ns, ok) per round
        load0 = open("/proc/loadavg").read().split()[:3]
        for i in range(a.rounds):
            for name in names[i % 3:] + names[:i % 3]:  # each takes each place in turn
                proc, port = servers[name]
                rounds[name].append(one_round(proc, port, request, a.connects, a.clients))
        load1 = open("/proc/loadavg").read().split()[:3]
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()
    counted = {}
    if not (a.smoke or a.no_callgrind) and shutil.which("valgrind"):
        counted = instructions([configs[0], configs[2]], tmp, request)

    rows, bad = {}, []
    for name in names:
        wall = sum(r[0] for r in rounds[name])
        cpu = sum(r[1] for r in rounds[name])
        ok = sum(r[2] for r in rounds[name])
        n = a.connects * a.rounds
        if ok != n:
            bad.append("%s: %d of %d connects answered 200 (see %s)" % (name, ok, n, tmp))
        rows[name] = (n, n / wall, cpu / n / 1000.0, n / (cpu / 1e9))

    def ratios(name, base="no key"):
        """Per round, name's figure over base's (rounds of one index ran back to back): the
        median of those, and their range."""
        cap = [b[1] / r[1] for r, b in zip(rounds[name], rounds[base])]
        rate = [r[0] and b[0] / r[0] for r, b in zip(rounds[name], rounds[base])]
        return median(cap), min(cap), max(cap), median(rate)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print("%s, %d rounds of %d connects per server, in turn, %d client processes; "
          "token %d bytes; load average %s at the start, %s at the end"
          % (when, a.rounds, a.connects, a.clients, len(token), ", ".join(load0),
             ", ".join(load1)))
    if a.markdown:
        print("\n| server | connects | connects/s (clients' rate) | server CPU per connect | "
              "connects/s one core serves | / no key (median of rounds; range) |\n"
              "|---|---|---|---|---|---|")
    for name in names:
        n, rate, us, cap = rows[name]
        rel = "" if name == "no key" else "%.2fx (%.2f to %.2f)" % ratios(name)[:3]
        if a.markdown:
            print("| sse-server, %s | %d | %.0f | %.1f us | %.0f | %s |"
                  % (name, n, rate, us, cap, "**%s**" % rel if "jwt" in name else rel))
        else:
            print("  %-18s %6d connects %7.0f connects/s %6.1f us server CPU per connect "
                  "(%.0f connects/s of one core) %s" % (name, n, rate, us, cap, rel))
    jwt, control = ratios("--jwt-secret-file"), ratios("no key, control")
    print("%s- with a token to verify / without: %.2fx the server's connect capacity (CPU per "
          "connect; median of the rounds), %.2fx the clients' connect rate; the issue's bar: "
          "at least 0.80x. The control, a second server without a key, measured %.2fx: the "
          "run's resolution." % ("\n" if a.markdown else "", jwt[0], jwt[3], control[0]))
    if counted:
        plain, jwt_i = counted["no key"], counted["--jwt-secret-file"]
        print("- under callgrind (user space only, unmoved by the machine's load): %.0f "
              "instructions per connect without a key, %.0f with one: verifying the token "
              "adds %.0f, %.0f%% of the server's own instructions per connect (the kernel's "
              "TCP work of a connect, the larger share of its CPU time above, comes on top)."
              % (plain, jwt_i, jwt_i - plain, 100.0 * (jwt_i - plain) / plain))
    for b in bad:
        print("error: " + b)
    if bad:
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
