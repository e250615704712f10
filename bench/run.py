#!/usr/bin/python3
"""Benchmark driver: sse-server against its peers, side by side, in one run (issue 4).

    make bench          # full run (~25 minutes, S8 about 12 of them), writes bench/RESULTS.md
    make bench-smoke    # seconds-long run with tiny N; writes a temporary file, prints its path

    /usr/bin/python3 bench/run.py [--smoke] [--out PATH] [--only S1,S3] [--servers sse-server,nchan]

Servers: sse-server, nginx + nchan (libnginx-mod-nchan), Node's plain `http` handler
(bench/peers/node-http.js), better-sse (bench/peers/better-sse.js), and nginx with
`proxy_buffering off` as the reverse proxy to compare `sse-server --proxy` with. Load comes
from build/sseload (bench/sseload.c), run as separate processes on the same machine.

Scenarios:
  S1 idle subscribers: RSS and kernel memory per subscriber
  S2 fan-out latency: 10,000 subscribers, 10 events/s of 100 bytes
  S3 fan-out throughput: 1,000 subscribers, the publisher as fast as the server accepts
  S4 proxy: direct vs through sse-server --proxy vs through nginx proxy_buffering off
  S5 cost per event: instructions per delivered event under callgrind, local and --redis
  S6 Redis: publish-to-receive latency and CPU per delivered event, local vs --redis
  S7 cluster: one node vs two nodes of one Redis hub behind nginx (deploy/nginx-cluster.conf)
  S8 sustained throughput: the highest publish rate held for 20 s at 1,000 and 10,000
     subscribers with p99 latency <= 100 ms, no subscriber dropped, no event lost
  S9 firehose: `sseload gen | sse-server --stdin` at 1,000 subscribers, three runs: nothing
     dropped, no gap (flow control paces the writer)

Python 3 standard library only. Every server is a child process, killed by PID at the end
whatever happens. As root it installs what is missing (nginx, libnginx-mod-nchan, valgrind
from Debian; better-sse from npm with `npm ci`); otherwise it skips what it cannot run and
says so.
"""

import argparse
import datetime
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SSE = os.path.join(ROOT, "sse-server")
SSELOAD = os.path.join(ROOT, "build", "sseload")
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
TOKEN = "bench"
EVENT_BYTES = 100

FULL = {
    "s1_n": 19000, "s1_procs": 2, "s1_sources": 4, "s1_hold": 4.0,
    "s2_n": 10000, "s2_rate": 10, "s2_secs": 20,
    "s3_n": 1000, "s3_secs": 15,
    "s4_n": 1000, "s4_rate": 10, "s4_secs": 15, "s4_tp_n": 100, "s4_tp_secs": 10,
    "s5_n": 100, "s5_events": 1000, "s5_rate": 100,
    "s6_ns": [100, 1000], "s6_rate": 100, "s6_secs": 10,
    "s7_n": 1000, "s7_rate": 100, "s7_secs": 10,
    "s8_ns": [1000, 10000], "s8_secs": 20, "s8_probe_secs": 3, "s8_per_proc": 5000, "s8_probes": 9,
    "s8_start": {1000: 25, 10000: 4}, "s8_budget": 150,
    "s9_n": 1000, "s9_secs": 10, "s9_runs": 3,
    "ready_timeout": 180,
}
SMOKE = {
    "s1_n": 400, "s1_procs": 2, "s1_sources": 2, "s1_hold": 1.5,
    "s2_n": 100, "s2_rate": 10, "s2_secs": 1.5,
    "s3_n": 50, "s3_secs": 1.5,
    "s4_n": 50, "s4_rate": 10, "s4_secs": 1.5, "s4_tp_n": 20, "s4_tp_secs": 1.5,
    "s5_n": 10, "s5_events": 50, "s5_rate": 50,
    "s6_ns": [10, 20], "s6_rate": 20, "s6_secs": 1,
    "s7_n": 20, "s7_rate": 20, "s7_secs": 1,
    "s8_ns": [50], "s8_secs": 1, "s8_probe_secs": 0.5, "s8_per_proc": 25, "s8_probes": 1,
    "s8_start": {50: 200}, "s8_budget": 3,
    "s9_n": 20, "s9_secs": 1, "s9_runs": 1,
    "ready_timeout": 20,
}
# The publisher when it goes as fast as the server accepts (S3, S4): this many keep-alive
# connections with this many requests in flight on each. The same for every server.
FAST_PUB = {"connections": 2, "pipeline": 16}
# The publisher at a fixed rate (S2, S4, S5): requests may be in flight while the server is
# still busy fanning out the previous event, so the schedule holds (open loop) whatever the
# server's answer time; each event carries the time sseload wrote it.
RATE_PUB = {"connections": 1, "pipeline": 8}

# S8's bar: p99 publish-to-receive latency of a step at most this, nothing dropped or lost.
S8_P99_MS = 100.0
HELD_METRIC = 'sse_inputs_held_seconds_total{cause="subscribers"}'
HOLDS_METRIC = 'sse_publish_holds_total{cause="subscribers"}'

# How long all subscribers of one sseload run may take to get their response head.
READY_TIMEOUT = [180.0]
# The descriptor limit every process of the run has (set by raise_limits).
NOFILE = [0]
# /proc/loadavg when the run started: anything else busy on the machine skews every figure.
LOAD_AT_START = []
# When the last S1 measurement's subscribers went away (see s1_idle).
S1_LAST_END = [0.0]

ALL_SERVERS = ["sse-server", "nchan", "node-http", "better-sse"]
SCENARIOS = ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9"]


class BenchError(Exception):
    pass


def log(msg):
    print(msg, flush=True)


# ---- the machine ---------------------------------------------------------------------------


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def run_out(cmd, cwd=None):
    """Output (stdout + stderr) of a short command, or '' when it cannot run."""
    try:
        p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=60)
        return p.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def rss_bytes(pid):
    for line in read("/proc/%d/status" % pid).splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError("no RSS for pid %d (did the server exit?)" % pid)


def sockstat():
    """TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, mem (pages)."""
    for line in read("/proc/net/sockstat").splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            return {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
    return {}


def slab_bytes():
    for line in read("/proc/meminfo").splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1]) * 1024
    return 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds of a live process so far (0 if it is gone)."""
    f = read("/proc/%d/stat" % pid).rsplit(")", 1)[-1].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK if len(f) > 12 else 0.0


def busy_others(seconds=1.0):
    """Processes other than this run's that used over 10% of a core in `seconds`: anything
    else busy on the machine skews every figure, so the report names them."""
    def snap():
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != os.getpid():
                stat = read("/proc/%s/stat" % d)
                if stat:
                    out[int(d)] = (stat[stat.find("(") + 1:stat.rfind(")")], cpu_seconds(int(d)))
        return out
    a = snap()
    time.sleep(seconds)
    b = snap()
    busy = []
    for pid, (name, t) in b.items():
        if pid in a and (t - a[pid][1]) / seconds > 0.10:
            busy.append("%s (pid %d, %.0f%%)" % (name, pid, 100 * (t - a[pid][1]) / seconds))
    return busy


def machine_info():
    cpu = ""
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    return {
        "load": read("/proc/loadavg").split()[:3],
        "nproc": os.cpu_count(),
        "memory": "%.1f GiB" % (mem / 2**30),
        "kernel": os.uname().release,
        "cpu": cpu or os.uname().machine,
    }


def versions(have):
    commit = run_out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "unknown"
    if run_out(["git", "-C", ROOT, "status", "--porcelain", "--", "sse.c", "sse.h", "main.c"]):
        commit += " (with uncommitted changes to sse.c/sse.h/main.c)"
    v = {
        "sse-server": "commit " + commit,
        "gcc": (run_out(["cc", "--version"]).splitlines() or ["?"])[0],
    }
    if have.get("nginx"):
        v["nginx"] = run_out([have["nginx"], "-v"]).replace("nginx version: ", "")
    if have.get("nchan"):
        v["nchan"] = "libnginx-mod-nchan " + run_out(
            ["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"])
    if have.get("node"):
        v["node"] = run_out([have["node"], "--version"])
    if have.get("better-sse"):
        try:
            with open(os.path.join(BENCH, "node_modules", "better-sse", "package.json")) as f:
                v["better-sse"] = json.load(f)["version"]
        except (OSError, ValueError, KeyError):
            v["better-sse"] = "?"
    if have.get("valgrind"):
        v["valgrind"] = run_out([have["valgrind"], "--version"])
    return v


# ---- setting up -----------------------------------------------------------------------------


def raise_limits(notes):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    notes.append("RLIMIT_NOFILE is %d (hard limit %d) for every process of the run: one process "
                 "can hold at most that many descriptors, so the load generator is spread over "
                 "several processes and the idle-subscriber count per server stays below it."
                 % (soft, hard))
    path = "/proc/sys/net/ipv4/ip_local_port_range"
    try:
        with open(path, "w") as f:
            f.write("1024 65535\n")
    except OSError:
        pass
    notes.append("Ephemeral port range: %s." % read(path).strip().replace("\t", "-"))
    NOFILE[0] = soft
    return soft


def apt_install(pkgs, notes):
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        notes.append("Not root (or no apt-get): could not install %s." % " ".join(pkgs))
        return
    log("installing with apt-get: %s" % " ".join(pkgs))
    guard = "/usr/sbin/policy-rc.d"
    created = False
    if not os.path.exists(guard):  # keep the package from starting a system nginx on port 80
        with open(guard, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(guard, 0o755)
        created = True
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        p = subprocess.run(["apt-get", "install", "-y", "-qq"] + pkgs, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            notes.append("apt-get install %s failed: %s"
                         % (" ".join(pkgs), p.stderr.strip()[-300:]))
    finally:
        if created:
            os.unlink(guard)


def find_nginx():
    if shutil.which("nginx"):
        return shutil.which("nginx")
    return "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None


def ensure_peers(notes):
    """Installs what is missing where it can; returns what is there."""
    missing = []
    if not find_nginx():
        missing.append("nginx")
    if not os.path.exists(NCHAN_MODULE):
        missing.append("libnginx-mod-nchan")
    if not shutil.which("valgrind"):
        missing.append("valgrind")
    if missing:
        apt_install(missing, notes)
    have = {"nginx": find_nginx(), "valgrind": shutil.which("valgrind"),
            "redis": shutil.which("redis-server")}
    have["nchan"] = bool(have["nginx"] and os.path.exists(NCHAN_MODULE))
    node, npm = shutil.which("node"), shutil.which("npm")
    have["node"] = node
    if node:
        major = int((run_out([node, "--version"]).lstrip("v").split(".") or ["0"])[0] or 0)
        modules = os.path.join(BENCH, "node_modules", "better-sse")
        if not os.path.isdir(modules) and npm and major >= 20:
            log("installing better-sse: npm ci in bench/")
            p = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BENCH,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if p.returncode != 0:
                notes.append("npm ci in bench/ failed: %s" % p.stderr.strip()[-300:])
        have["better-sse"] = os.path.isdir(modules)
        if not have["better-sse"]:
            notes.append("better-sse is not installed (needs Node >= 20 and npm): skipped.")
    else:
        have["better-sse"] = False
        notes.append("Node.js is not installed: node-http and better-sse skipped.")
    if not have["nginx"]:
        notes.append("nginx is not installed: nchan and the nginx proxy skipped.")
    elif not have["nchan"]:
        notes.append("The nchan module is not installed: nchan skipped.")
    if not have["valgrind"]:
        notes.append("valgrind is not installed: S5 skipped.")
    if not have["redis"]:
        notes.append("redis-server is not installed: S6 and S7 skipped.")
    return have


def build():
    p = subprocess.run(["make", "-C", ROOT, "--no-print-directory", "sse-server", "build/sseload"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout)
        raise SystemExit("bench: the build failed")


# ---- processes ------------------------------------------------------------------------------


class Runner:
    """Starts children, remembers every command and PID, and kills them all at the end."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []
        self.commands = []  # (scenario, command line)
        self.scenario = ""
        self.seq = 0

    def spawn(self, cmd, name, stdout=None, cwd=None, stdin=subprocess.DEVNULL):
        self.seq += 1
        err = open(os.path.join(self.tmp, "%02d-%s.err" % (self.seq, name)), "w+")
        out = stdout if stdout is not None else err
        self.commands.append((self.scenario, " ".join(shlex.quote(c) for c in cmd)))
        p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=stdin, cwd=cwd)
        p.errfile = err
        p.name = name
        self.procs.append(p)
        return p

    def tail(self, p, n=600):
        try:
            p.errfile.flush()
            p.errfile.seek(0)
            return p.errfile.read()[-n:].strip()
        except (OSError, ValueError):
            return ""

    def stop(self, p, sig=signal.SIGTERM, wait=5.0):
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        if p in self.procs:
            self.procs.remove(p)
        try:
            p.errfile.close()
        except (OSError, AttributeError):
            pass

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p, wait=3.0)


def try_reap(p):
    """Reaps p if it has exited, keeping its CPU time (p.cpu); True once it is gone."""
    if p.returncode is not None:
        return True
    try:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    except ChildProcessError:
        p.poll()
        return True
    if pid != p.pid:
        return False
    p.returncode = os.waitstatus_to_exitcode(status)
    p.cpu = ru.ru_utime + ru.ru_stime
    return True


def reap(R, p, timeout, what):
    deadline = time.time() + timeout
    while not try_reap(p):
        if time.time() > deadline:
            R.stop(p, signal.SIGKILL)
            raise BenchError("%s did not exit within %.0f s (hang?)" % (what, timeout))
        time.sleep(0.02)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(R, p, port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            raise BenchError("%s exited with status %s before listening: %s"
                             % (p.name, p.returncode, R.tail(p)))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError("%s did not listen on port %d within %.0f s" % (p.name, port, timeout))


# ---- the servers ----------------------------------------------------------------------------


class Server:
    """A running server: its process, port, and the URLs sseload uses."""

    def __init__(self, name, proc, port, sub_path, pub_path, pub_headers=()):
        self.name, self.proc, self.port = name, proc, port
        self.sub_url = "http://127.0.0.1:%d%s" % (port, sub_path)
        self.pub_url = "http://127.0.0.1:%d%s" % (port, pub_path)
        self.pub_headers = list(pub_headers)


def sse_args(port):
    return [SSE, "--listen", "127.0.0.1:%d" % port, "--publish-token", TOKEN, "--quiet",
            "--heartbeat", "0", "--max-clients", "30000", "--client-buffer", "16m"]


def nginx_conf(R, template, subs):
    prefix = tempfile.mkdtemp(prefix="nginx-", dir=R.tmp)
    with open(os.path.join(BENCH, "nginx", template)) as f:
        text = f.read()
    subs = dict(subs, PREFIX=prefix)
    for k, v in subs.items():
        text = text.replace("@%s@" % k, str(v))
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(text)
    return prefix, conf


def start_server(R, name, have, wrap=None, port=None):
    """Starts one of ALL_SERVERS on a free port and waits until it listens."""
    port = port or free_port()
    if name == "sse-server":
        cmd = (wrap or []) + sse_args(port)
        p = R.spawn(cmd, name)
        srv = Server(name, p, port, "/events/bench", "/publish?topic=bench",
                     ["Authorization: Bearer " + TOKEN])
        timeout = 60.0 if wrap else 15.0
    elif name == "nchan":
        prefix, conf = nginx_conf(R, "nchan.conf.in", {"PORT": port, "MODULE": NCHAN_MODULE})
        p = R.spawn([have["nginx"], "-p", prefix, "-c", conf, "-e", prefix + "/error.log"], name)
        srv = Server(name, p, port, "/sub/bench", "/pub?id=bench")
        timeout = 15.0
    elif name in ("node-http", "better-sse"):
        script = os.path.join(BENCH, "peers", name + ".js")
        p = R.spawn([have["node"], script, str(port)], name, cwd=BENCH)
        srv = Server(name, p, port, "/events", "/publish")
        timeout = 15.0
    else:
        raise ValueError(name)
    wait_listening(R, p, port, timeout)
    return srv


def start_nginx_proxy(R, have, upstream_port):
    port = free_port()
    prefix, conf = nginx_conf(R, "proxy.conf.in", {"PORT": port, "UPSTREAM": upstream_port})
    p = R.spawn([have["nginx"], "-p", prefix, "-c", conf, "-e", prefix + "/error.log"],
                "nginx-proxy")
    wait_listening(R, p, port)
    return port, p


# ---- sseload ----------------------------------------------------------------------------------


class Subs:
    def __init__(self, procs, ready_files, n):
        self.procs, self.ready_files, self.n = procs, ready_files, n


def sub_start(R, url, n, duration, procs=1, sources=1, expect_per_conn=None, headers=()):
    ps, readies = [], []
    share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    for i, k in enumerate(share):
        if k == 0:
            continue
        ready = os.path.join(R.tmp, "ready-%d-%d" % (R.seq + 1, i))
        cmd = [SSELOAD, "sub", "--url", url, "--connections", str(k), "--sources", str(sources),
               "--duration", "%g" % duration, "--ready-file", ready]
        if expect_per_conn:
            cmd += ["--expect-events", str(expect_per_conn * k)]
        for h in headers:
            cmd += ["--header", h]
        out = tempfile.TemporaryFile("w+", dir=R.tmp)
        p = R.spawn(cmd, "sseload-sub", stdout=out)
        p.outfile = out
        ps.append(p)
        readies.append(ready)
    return Subs(ps, readies, n)


def sub_wait_ready(R, subs, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(os.path.exists(f) for f in subs.ready_files):
            return
        for p, f in zip(subs.procs, subs.ready_files):
            if try_reap(p) and not os.path.exists(f):
                raise BenchError("sseload sub exited (status %s) before it was ready: %s"
                                 % (p.returncode, R.tail(p)))
        time.sleep(0.02)
    for p in subs.procs:
        R.stop(p, signal.SIGKILL)
    raise BenchError("sseload sub: not all %d connections settled within %.0f s (hang?)"
                     % (subs.n, timeout))


def read_json(R, p, what):
    p.outfile.seek(0)
    text = p.outfile.read().strip()
    try:
        return json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError("%s printed no JSON summary (status %s): %r %s"
                         % (what, p.returncode, text[-300:], R.tail(p)))


def hist_ms(hist, q):
    """The q-quantile in ms of a histogram [[us, count], ...] sorted by us, as sseload's."""
    total = sum(c for _, c in hist)
    want, seen = int(q * total), 0
    for us, c in hist:
        seen += c
        if seen > want:
            return us / 1000.0
    return hist[-1][0] / 1000.0 if hist else 0.0


def merge_subs(results):
    """One summary of several sseload sub summaries (or windows): counts add up, per-subscriber
    counts take the extremes, latency percentiles come from the merged histograms."""
    m = dict(results[0])
    for r in results[1:]:
        for k in ("connections", "connected", "failed", "dropped", "open", "events", "bytes",
                  "events_per_s", "bytes_per_s", "gaps"):
            m[k] += r[k]
        m["seconds"] = max(m["seconds"], r["seconds"])
        m["per_sub_min"] = min(m["per_sub_min"], r["per_sub_min"])
        m["per_sub_max"] = max(m["per_sub_max"], r["per_sub_max"])
    if len(results) > 1:
        merged = {}
        for r in results:
            for us, c in r["hist"]:
                merged[us] = merged.get(us, 0) + c
        h = sorted(merged.items())
        m["latency_ms"] = {"samples": sum(c for _, c in h), "p50": hist_ms(h, 0.50),
                           "p90": hist_ms(h, 0.90), "p99": hist_ms(h, 0.99),
                           "max": max(r["latency_ms"]["max"] for r in results)}
    m.pop("hist", None)
    return m


def sub_finish(R, subs, timeout):
    """Waits for every sub process, returns the merged summary."""
    deadline = time.time() + timeout
    results = []
    cpu = 0.0
    for p in subs.procs:
        reap(R, p, max(0.1, deadline - time.time()), "sseload sub")
        results.append(read_json(R, p, "sseload sub"))
        cpu += getattr(p, "cpu", 0.0)
        R.stop(p)
    m = merge_subs(results)
    m["sub_cpu"] = cpu
    return m


def sub_window(R, subs, timeout=10.0):
    """Ends the subscribers' current window (SIGUSR1: each sseload sub prints its summary of
    it and starts another); returns the merged summary of the window."""
    counts = []
    for p in subs.procs:
        p.outfile.seek(0)
        counts.append(len(p.outfile.read().splitlines()))
        os.kill(p.pid, signal.SIGUSR1)
    deadline = time.time() + timeout
    results = []
    for p, n in zip(subs.procs, counts):
        while True:
            p.outfile.seek(0)
            lines = p.outfile.read().split("\n")
            if len(lines) > n + 1:  # line n is complete: a newline follows it
                results.append(json.loads(lines[n]))
                break
            if try_reap(p) or time.time() > deadline:
                raise BenchError("sseload sub did not report its window (status %s): %s"
                                 % (p.returncode, R.tail(p)))
            time.sleep(0.02)
    return merge_subs(results)


def pub_cmd(srv, rate, count=None, duration=None, size=EVENT_BYTES, pipeline=1, connections=1):
    cmd = [SSELOAD, "pub", "--url", srv.pub_url, "--rate", "%g" % rate, "--size", str(size),
           "--pipeline", str(pipeline), "--connections", str(connections)]
    if count:
        cmd += ["--count", str(count)]
    if duration:
        cmd += ["--duration", "%g" % duration]
    for h in srv.pub_headers:
        cmd += ["--header", h]
    return cmd


def pub_start(R, srv, **kw):
    out = tempfile.TemporaryFile("w+", dir=R.tmp)
    p = R.spawn(pub_cmd(srv, **kw), "sseload-pub", stdout=out)
    p.outfile = out
    return p


def pub_finish(R, p, timeout):
    reap(R, p, timeout, "sseload pub")
    r = read_json(R, p, "sseload pub")
    r["cpu"] = getattr(p, "cpu", 0.0)
    R.stop(p)
    return r


class CpuWindow:
    """CPU use of the servers and of the load generator over the measured window, each as a
    fraction of one core: started when the subscribers are ready, ended when they exit."""

    def __init__(self, server_pids, subs):
        self.server_pids, self.t0 = list(server_pids), time.time()
        self.each0 = [cpu_seconds(p) for p in self.server_pids]
        self.sub0 = sum(cpu_seconds(p.pid) for p in subs.procs)

    def end(self, res):
        wall = max(1e-6, time.time() - self.t0)
        each = [cpu_seconds(p) - c0 for p, c0 in zip(self.server_pids, self.each0)]
        res["server_cpu"] = sum(each) / wall
        res["server_cpu_s"] = each  # CPU seconds of each server process, in order
        res["sub_cpu_frac"] = (res["sub_cpu"] - self.sub0) / wall


def metrics(port):
    """sse-server's /metrics as {name: value}; {} when it cannot be read."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    m = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                m[name] = float(value)
            except ValueError:
                pass
    return m


def metric_delta(before, after, name):
    return int(after.get(name, 0) - before.get(name, 0)) if before and after else None


def check_server(R, srv):
    if srv.proc.poll() is not None:
        raise BenchError("%s exited (status %s) during the run: %s"
                         % (srv.name, srv.proc.returncode, R.tail(srv.proc)))


# ---- scenarios --------------------------------------------------------------------------------


def s1_idle(R, name, have, C):
    """Idle subscribers: RSS and kernel memory before/after N connections."""
    n = C["s1_n"]
    # Closed connections leave TIME_WAIT sockets that expire 60 s later, and their slab memory
    # with them. Those of the previous server (made at S1_LAST_END) stay put through this
    # measurement if it is young; older ones (of an earlier run) are waited out, bounded.
    young = time.time() - S1_LAST_END[0] < 40
    deadline = time.time() + (65 if C is FULL else 0)
    while not young and sockstat().get("tw", 0) > n // 100 and time.time() < deadline:
        time.sleep(1)
    srv = start_server(R, name, have)
    try:
        time.sleep(0.5)
        rss0, sock0, slab0 = rss_bytes(srv.proc.pid), sockstat(), slab_bytes()
        subs = sub_start(R, srv.sub_url, n, C["s1_hold"], procs=C["s1_procs"],
                         sources=C["s1_sources"])
        sub_wait_ready(R, subs, READY_TIMEOUT[0])
        time.sleep(1.0)
        check_server(R, srv)
        rss1, sock1, slab1 = rss_bytes(srv.proc.pid), sockstat(), slab_bytes()
        res = sub_finish(R, subs, C["s1_hold"] + 30)
        S1_LAST_END[0] = time.time()
    finally:
        R.stop(srv.proc)
    conns = max(1, res["connected"])
    return {
        "n": n, "connected": res["connected"], "failed": res["failed"], "dropped": res["dropped"],
        "rss0": rss0, "rss1": rss1, "per_sub": (rss1 - rss0) / conns,
        "tcp_mem_per_conn": (sock1.get("mem", 0) - sock0.get("mem", 0)) * 4096 / conns,
        "slab_per_conn": (slab1 - slab0) / conns,
        "tcp_inuse_delta": sock1.get("inuse", 0) - sock0.get("inuse", 0),
        "tw": (sock0.get("tw", 0), sock1.get("tw", 0)),
    }


def latency_run(R, srv, pub_srv, n, rate, secs, server_pids=()):
    """n subscribers at srv, `rate` events/s for `secs` published at pub_srv."""
    count = max(1, int(rate * secs))
    subs = sub_start(R, srv.sub_url, n, secs + 15, expect_per_conn=count)
    sub_wait_ready(R, subs, READY_TIMEOUT[0])
    cw = CpuWindow(server_pids, subs)
    pub = pub_start(R, pub_srv, rate=rate, count=count, duration=secs + 10, **RATE_PUB)
    res = sub_finish(R, subs, secs + 45)
    cw.end(res)
    pres = pub_finish(R, pub, 30)
    res["expected"] = pres["published"] * n
    res["scheduled"] = count
    res["pub"] = pres
    return res


def throughput_run(R, srv, pub_srv, n, secs, rss_pids=()):
    """n subscribers at srv for `secs`, the publisher as fast as pub_srv accepts."""
    subs = sub_start(R, srv.sub_url, n, secs)
    sub_wait_ready(R, subs, READY_TIMEOUT[0])
    cw = CpuWindow(rss_pids, subs)
    # The publisher stops with the subscribers' window: publishing on after they left would
    # be cheap and inflate the publish rate.
    pub = pub_start(R, pub_srv, rate=0, duration=secs, **FAST_PUB)
    peak = 0
    deadline = time.time() + secs + 30
    while not all(try_reap(p) for p in subs.procs) and time.time() < deadline:
        for pid in rss_pids:
            try:
                peak = max(peak, rss_bytes(pid))
            except BenchError:
                pass
        time.sleep(0.25)
    res = sub_finish(R, subs, 30)
    cw.end(res)
    res["pub"] = pub_finish(R, pub, 30)
    res["peak_rss"] = peak
    return res


def s2_latency(R, name, have, C):
    srv = start_server(R, name, have)
    try:
        m0 = metrics(srv.port) if name == "sse-server" else {}
        res = latency_run(R, srv, srv, C["s2_n"], C["s2_rate"], C["s2_secs"],
                          server_pids=[srv.proc.pid])
        check_server(R, srv)
        if m0:
            m1 = metrics(srv.port)
            res["server_delivered"] = metric_delta(m0, m1, "sse_events_delivered_total")
            res["server_dropped"] = metric_delta(m0, m1, "sse_subscribers_dropped_total")
    finally:
        R.stop(srv.proc)
    return res


def s3_throughput(R, name, have, C):
    srv = start_server(R, name, have)
    try:
        m0 = metrics(srv.port) if name == "sse-server" else {}
        res = throughput_run(R, srv, srv, C["s3_n"], C["s3_secs"], rss_pids=[srv.proc.pid])
        check_server(R, srv)
        if m0:
            m1 = metrics(srv.port)
            res["server_dropped"] = metric_delta(m0, m1, "sse_subscribers_dropped_total")
    finally:
        R.stop(srv.proc)
    return res


def s4_proxy(R, have, C):
    """Direct vs through sse-server --proxy vs through nginx proxy_buffering off."""
    up = start_server(R, "sse-server", have)
    paths = [("direct", up.port, None)]
    pport = free_port()
    # The proxy serves its own stream elsewhere, so that every path goes to the upstream.
    pp = R.spawn([SSE, "--listen", "127.0.0.1:%d" % pport, "--quiet", "--max-clients", "30000",
                  "--stream", "/_proxy_own_stream",
                  "--proxy", "/=http://127.0.0.1:%d" % up.port], "sse-proxy")
    wait_listening(R, pp, pport)
    paths.append(("sse-server --proxy", pport, pp))
    if have["nginx"]:
        nport, np_ = start_nginx_proxy(R, have, up.port)
        paths.append(("nginx proxy_buffering off", nport, np_))
    out = {}
    try:
        for label, port, proc in paths:
            via = Server(label, proc or up.proc, port, "/events/bench", "/")
            r = {}
            try:
                pids = [up.proc.pid] + ([proc.pid] if proc else [])
                r["lat"] = latency_run(R, via, up, C["s4_n"], C["s4_rate"], C["s4_secs"], pids)
                m0 = metrics(up.port)
                r["tp"] = throughput_run(R, via, up, C["s4_tp_n"], C["s4_tp_secs"], pids)
                # Subscribers the upstream itself cut off for falling --client-buffer behind
                # (a proxy that passes back-pressure upstream makes its queue grow there).
                r["tp"]["upstream_dropped"] = metric_delta(m0, metrics(up.port),
                                                           "sse_subscribers_dropped_total")
                check_server(R, up)
                if proc:
                    check_server(R, via)
            except BenchError as e:
                r["error"] = str(e)
            out[label] = r
    finally:
        for _, _, proc in reversed(paths):
            if proc:
                R.stop(proc)
        R.stop(up.proc)
    if not have["nginx"]:
        out["nginx proxy_buffering off"] = {"error": "nginx not installed"}
    return out


def start_redis(R, have):
    """A redis-server on a free loopback port, append-only file synced every second (the
    setting docs/scaling.md recommends short of `always`)."""
    port = free_port()
    d = tempfile.mkdtemp(prefix="redis-", dir=R.tmp)
    p = R.spawn([have["redis"], "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                 "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                 "--daemonize", "no"], "redis-server")
    wait_listening(R, p, port)
    return port, p


def start_node(R, redis_port, wrap=None):
    """sse-server as a node of the hub at redis_port (under wrap, a command such as
    valgrind, if given), once /healthz says it follows."""
    port = free_port()
    p = R.spawn((wrap or []) + sse_args(port) + ["--redis", "127.0.0.1:%d" % redis_port],
                "sse-node")
    wait_listening(R, p, port, 60.0 if wrap else 30.0)
    deadline = time.time() + (60 if wrap else 15)
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=2):
                break
        except OSError:
            if time.time() > deadline:
                raise BenchError("node on port %d never became ready: %s" % (port, R.tail(p)))
            time.sleep(0.05)
    return Server("sse-node", p, port, "/events/bench", "/publish?topic=bench",
                  ["Authorization: Bearer " + TOKEN])


def children(pid):
    """PIDs whose parent is pid (nginx's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = read("/proc/%s/stat" % d).rsplit(")", 1)[-1].split()
            if len(f) > 1 and int(f[1]) == pid:
                out.append(int(d))
    return out


def per_event(res, i):
    """Microseconds of CPU of server process i per delivered event."""
    return 1e6 * res["server_cpu_s"][i] / res["events"] if res.get("events") else None


def s6_redis(R, have, C):
    """The same fan-out, locally published vs through Redis, on this one machine."""
    out = {}
    for n in C["s6_ns"]:
        for mode in ("local", "redis"):
            key = "%s %d" % (mode, n)
            procs = []
            try:
                if mode == "local":
                    srv = start_server(R, "sse-server", have)
                    pids = [srv.proc.pid]
                else:
                    rport, rp = start_redis(R, have)
                    procs.append(rp)
                    srv = start_node(R, rport)
                    pids = [srv.proc.pid, rp.pid]
                procs.append(srv.proc)
                res = latency_run(R, srv, srv, n, C["s6_rate"], C["s6_secs"], pids)
                check_server(R, srv)
                res["n"] = n
                res["sse_us"] = per_event(res, 0)
                res["redis_us"] = per_event(res, 1) if mode == "redis" else None
                out[key] = res
            except BenchError as e:
                out[key] = {"error": str(e), "n": n}
            finally:
                for p in reversed(procs):
                    R.stop(p)
    return out


def cluster_nginx(R, have, node_ports):
    """deploy/nginx-cluster.conf with only its machine-specific lines changed (as
    tests/test_cluster.py runs it); one node is both upstream servers."""
    port = free_port()
    d = tempfile.mkdtemp(prefix="nginx-cluster-", dir=R.tmp)
    with open(os.path.join(ROOT, "deploy", "nginx-cluster.conf")) as f:
        text = f.read()
    ports = list(node_ports) * (2 // len(node_ports))
    for old, new in [
        ("listen 8080;", "listen 127.0.0.1:%d;" % port),
        ("server 127.0.0.1:8081 ", "server 127.0.0.1:%d " % ports[0]),
        ("server 127.0.0.1:8082 ", "server 127.0.0.1:%d " % ports[1]),
        ("pid /run/nginx.pid;", "pid %s/nginx.pid;" % d),
        ("error_log /var/log/nginx/error.log;", "error_log %s/error.log;" % d),
        ("access_log /var/log/nginx/access.log cluster;", "access_log off;"),
        ("http {\n", "http {\n" + "".join("    %s_temp_path %s/%s;\n" % (k, d, k) for k in
                                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
    ]:
        if text.count(old) != 1:
            raise BenchError("deploy/nginx-cluster.conf no longer has %r" % old)
        text = text.replace(old, new)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(text)
    p = R.spawn([have["nginx"], "-p", d, "-c", conf, "-e", d + "/error.log", "-g",
                 "daemon off;"], "nginx-cluster")
    wait_listening(R, p, port)
    return port, p


def s7_cluster(R, have, C):
    """N subscribers of one hub: one node direct, one node behind nginx, two nodes behind
    nginx (least_conn spreads the subscribers); the publisher goes the same way."""
    out = {}
    for label, nodes, via_nginx in (("1 node, direct", 1, False), ("1 node, nginx", 1, True),
                                    ("2 nodes, nginx", 2, True)):
        procs = []
        try:
            if via_nginx and not have["nginx"]:
                raise BenchError("nginx not installed")
            rport, rp = start_redis(R, have)
            procs.append(rp)
            ns = [start_node(R, rport) for _ in range(nodes)]
            procs += [x.proc for x in ns]
            pids = [x.proc.pid for x in ns] + [rp.pid]
            via = ns[0]
            if via_nginx:
                nport, np_ = cluster_nginx(R, have, [x.port for x in ns])
                procs.append(np_)
                time.sleep(0.2)
                pids += [np_.pid] + children(np_.pid)
                via = Server("nginx", np_, nport, "/events/bench", "/publish?topic=bench",
                             ["Authorization: Bearer " + TOKEN])
            m0 = [metrics(x.port) for x in ns]
            res = latency_run(R, via, via, C["s7_n"], C["s7_rate"], C["s7_secs"], pids)
            for x in ns:
                check_server(R, x)
            res["per_node"] = [metric_delta(a, metrics(x.port), "sse_events_delivered_total")
                               for a, x in zip(m0, ns)]
            k = len(ns)
            res["nodes_us"] = 1e6 * sum(res["server_cpu_s"][:k]) / max(1, res["events"])
            res["redis_us"] = per_event(res, k)
            res["nginx_us"] = (1e6 * sum(res["server_cpu_s"][k + 1:]) / max(1, res["events"])
                               if via_nginx else None)
            out[label] = res
        except BenchError as e:
            out[label] = {"error": str(e)}
        finally:
            for p in reversed(procs):
                R.stop(p)
    return out


def s8_step(R, srv, subs, rate, secs):
    """One step of S8: `rate` events/s for `secs` to the subscribers already connected (their
    window restarted first); returns the step's figures and whether it held."""
    sub_window(R, subs)
    count = max(1, int(rate * secs))
    t = time.time()
    pub = pub_start(R, srv, rate=rate, count=count, duration=secs + 2, **RATE_PUB)
    pres = pub_finish(R, pub, secs + 30)
    time.sleep(1.0)  # events later than this are far past the 100 ms the step allows
    w = sub_window(R, subs)
    check_server(R, srv)
    n = subs.n
    lat = w["latency_ms"]["p99"] if w["latency_ms"]["samples"] else None
    why = []
    if pres["published"] < count or pres["errors"]:
        why.append("%d of %d published (%d errors)" % (pres["published"], count, pres["errors"]))
    if w["dropped"] or w["open"] < n:
        why.append("%d of %d subscribers open" % (w["open"], n))
    if w["per_sub_min"] < pres["published"] or w["gaps"]:
        why.append("lost: a subscriber got %d of %d, %d gaps"
                   % (w["per_sub_min"], pres["published"], w["gaps"]))
    if lat is None or lat > S8_P99_MS:
        why.append("p99 %s ms" % ms(lat))
    return {"rate": rate, "secs": secs, "published": pres["published"], "count": count,
            "p50": w["latency_ms"]["p50"], "p99": lat, "open": w["open"],
            "per_sub_min": w["per_sub_min"], "gaps": w["gaps"], "held": not why,
            "why": "; ".join(why), "wall": time.time() - t}


def s8_series(R, name, have, C, n):
    """The highest rate `name` sustains at n subscribers: short probe steps doubling the rate
    from a low start find the neighbourhood; steps of the full length then go up by 25% from
    the last probe that held (or down by 20% until one holds). A failed step may leave
    subscribers dropped or events queued, so the next begins with a fresh server."""
    steps = []
    state = {}

    def fresh():
        if state:
            R.stop(state["srv"].proc)
            for p in state["subs"].procs:
                R.stop(p)
        srv = start_server(R, name, have)
        procs = max(1, (n + C["s8_per_proc"] - 1) // C["s8_per_proc"])
        subs = sub_start(R, srv.sub_url, n, C["s8_budget"] + 300, procs=procs)
        state.update(srv=srv, subs=subs, dirty=False)
        sub_wait_ready(R, subs, READY_TIMEOUT[0])

    def step(rate, secs, kind):
        # Load from elsewhere on the machine only ever makes a step fail: a failed step is
        # tried once more (on a fresh server) before it counts.
        for attempt in (1, 2):
            if state.get("dirty"):
                fresh()
            r = s8_step(R, state["srv"], state["subs"], rate, secs)
            r["kind"] = kind if attempt == 1 else kind + " again"
            steps.append(r)
            log("      %-13s %8.0f events/s: %s"
                % (r["kind"], rate, "held, p99 %s ms" % ms(r["p99"]) if r["held"]
                   else "failed (%s)" % r["why"]))
            state["dirty"] = not r["held"]
            if r["held"]:
                return True
        return False

    t_end = time.time() + C["s8_budget"]
    try:
        fresh()
        rate, probe, failed = float(C["s8_start"][n]), None, None
        for _ in range(C["s8_probes"]):  # up from a rate that held, else down to one
            if step(rate, C["s8_probe_secs"], "probe"):
                probe = rate
                if failed:
                    break
            else:
                failed = rate
                if probe or rate / 2 < 1:
                    break
            rate = rate * 2 if not failed else rate / 2
        rate = probe
        best = None
        while probe and time.time() < t_end:
            if step(rate, C["s8_secs"], "confirm"):
                best = rate
                rate *= 1.25
            elif best is not None:
                break
            else:
                rate *= 0.8
                if rate < 1:
                    break
    finally:
        if state:
            R.stop(state["srv"].proc)
            for p in state["subs"].procs:
                R.stop(p)
    held = [r for r in steps if r["kind"].startswith("confirm") and r["held"]]
    return {"n": n, "steps": steps, "best": held[-1] if held else None,
            "budget_out": time.time() >= t_end}


def s8_sustained(R, name, have, C):
    out = {}
    for n in C["s8_ns"]:
        log("   %s, %d subscribers" % (name, n))
        try:
            out[n] = s8_series(R, name, have, C, n)
        except BenchError as e:
            out[n] = {"error": str(e), "n": n}
    return out


def s9_firehose(R, have, C):
    """`sseload gen | sse-server --stdin` with the server's default --client-buffer: the input
    as fast as the server reads it, n subscribers; every subscriber must get every event in
    order and none be dropped (flow control paces the writer instead)."""
    runs = []
    n, secs = C["s9_n"], C["s9_secs"]
    for i in range(C["s9_runs"]):
        port = free_port()
        rfd, wfd = os.pipe()
        srv_p = R.spawn([SSE, "--listen", "127.0.0.1:%d" % port, "--stdin", "--quiet",
                         "--heartbeat", "0", "--max-clients", "30000"], "sse-server-stdin",
                        stdin=rfd)
        os.close(rfd)
        gen = None
        try:
            wait_listening(R, srv_p, port)
            m0 = metrics(port)
            subs = sub_start(R, "http://127.0.0.1:%d/events/default" % port, n, secs + 60)
            sub_wait_ready(R, subs, READY_TIMEOUT[0])
            gen = R.spawn([SSELOAD, "gen", "--duration", "%g" % secs, "--size",
                           str(EVENT_BYTES)], "sseload-gen", stdout=wfd)
            os.close(wfd)
            wfd = None
            reap(R, gen, secs + 60, "sseload gen")
            gen.errfile.seek(0)
            g = json.loads(gen.errfile.read().strip().splitlines()[-1])
            deadline = time.time() + 60  # the queues drain
            while time.time() < deadline:
                d = metrics(port).get("sse_events_delivered_total", 0) - \
                    m0.get("sse_events_delivered_total", 0)
                if d >= g["events"] * n:
                    break
                time.sleep(0.2)
            time.sleep(0.5)
            w = sub_window(R, subs)
            m1 = metrics(port)
            check_server(R, Server("sse-server", srv_p, port, "", ""))
            runs.append({"events": g["events"], "rate": g["rate"], "n": n, "open": w["open"],
                         "dropped": w["dropped"], "per_sub_min": w["per_sub_min"],
                         "per_sub_max": w["per_sub_max"], "gaps": w["gaps"],
                         "p50": w["latency_ms"]["p50"], "p99": w["latency_ms"]["p99"],
                         "held_s": metric_delta(m0, m1, HELD_METRIC),
                         "holds": metric_delta(m0, m1, HOLDS_METRIC),
                         "server_dropped": metric_delta(m0, m1,
                                                        "sse_subscribers_dropped_total")})
            for p in subs.procs:
                R.stop(p)
        except BenchError as e:
            runs.append({"error": str(e)})
        finally:
            if wfd is not None:
                os.close(wfd)
            if gen:
                R.stop(gen)
            R.stop(srv_p)
        log("   run %d: %s" % (i + 1, brief("S9", runs[-1])))
    return {"runs": runs}


def callgrind_total(path):
    total = None
    for line in read(path).splitlines():
        if line.startswith("totals:") or (line.startswith("summary:") and total is None):
            total = int(line.split()[1])
    if total is None:
        raise BenchError("no totals in %s" % path)
    return total


def s5_callgrind(R, have, C, redis=False):
    """With redis, sse-server is a node of a hub (a plain redis-server beside it, not
    counted): the publish becomes an XADD and delivery waits for XREAD to bring it back."""
    n, events, rate = C["s5_n"], C["s5_events"], C["s5_rate"]
    out = {}
    for label, count in (("idle", 0), ("events", events)):
        cg = os.path.join(R.tmp, "callgrind.%s%s.out" % ("redis." if redis else "", label))
        wrap = [have["valgrind"], "--tool=callgrind", "--callgrind-out-file=" + cg]
        rp = None
        if redis:
            rport, rp = start_redis(R, have)
            srv = start_node(R, rport, wrap=wrap)
        else:
            srv = start_server(R, "sse-server", have, wrap=wrap)
        try:
            if count:
                res = latency_run(R, srv, srv, n, rate, count / rate)
            else:
                subs = sub_start(R, srv.sub_url, n, 1.0)
                sub_wait_ready(R, subs, READY_TIMEOUT[0])
                res = sub_finish(R, subs, 60)
            time.sleep(1.0)  # let the server see the subscribers go
            check_server(R, srv)
            R.stop(srv.proc, signal.SIGTERM, wait=120)
            if srv.proc.returncode != 0:
                raise BenchError("sse-server under callgrind exited with %s: %s"
                                 % (srv.proc.returncode, R.tail(srv.proc)))
        finally:
            R.stop(srv.proc)
            if rp:
                R.stop(rp)
        out[label] = {"ir": callgrind_total(cg), "events": res["events"],
                      "connected": res["connected"], "dropped": res["dropped"]}
    deliveries = out["events"]["events"]
    out["deliveries_expected"] = n * events
    if deliveries != n * events or out["idle"]["connected"] != n:
        raise BenchError("callgrind runs incomplete: %d of %d deliveries, %d and %d of %d "
                         "subscribers connected" % (deliveries, n * events,
                                                    out["idle"]["connected"],
                                                    out["events"]["connected"], n))
    out["per_event"] = (out["events"]["ir"] - out["idle"]["ir"]) / max(1, deliveries)
    return out


# ---- report -----------------------------------------------------------------------------------


def kb(b):
    return "%.1f KB" % (b / 1000)


def mb(b):
    return "%.1f MB" % (b / 1e6)


def ms(x):
    return "%.2f" % x if x is not None else "-"


def lat(r, k):
    return ms(r["latency_ms"][k]) if r.get("latency_ms") else "-"


def ratio(a, b):
    return "%.2fx" % (a / b) if a and b else "-"


def cpu(r):
    """'server % / load generator %' of one core over the window."""
    if "server_cpu" not in r:
        return "-"
    gen = r["sub_cpu_frac"] + r["pub"].get("cpu", 0) / max(1e-6, r["seconds"])
    return "%.0f%% / %.0f%%" % (100 * r["server_cpu"], 100 * gen)


def met(ok):
    return "**met**" if ok else "**missed**"


def report(C, smoke, info, vers, notes, results, R, started, elapsed, servers):
    L = []
    add = L.append
    title = "Benchmark smoke run (tiny N, not results)" if smoke else "Benchmark results"
    add("# %s\n" % title)
    add("Written by `%s` (bench/run.py) on %s, in %.0f s. Every figure below comes from this one "
        "run: the servers were measured one after another on the same machine, with the same "
        "load generator (build/sseload, bench/sseload.c) and the same event size (%d bytes)."
        % ("make bench-smoke" if smoke else "make bench", started, elapsed, EVENT_BYTES))
    add("")
    add("**The publisher and the subscribers run on the same %s-core machine as the server "
        "they measure**, so absolute numbers include the load generator's own CPU use; compare "
        "the ratios between servers of this run, not figures across machines." % info["nproc"])
    add("")
    add("## Machine\n")
    add("| | |\n|---|---|")
    add("| CPU | %s |" % info["cpu"])
    add("| cores (nproc) | %s |" % info["nproc"])
    add("| memory | %s |" % info["memory"])
    add("| kernel | %s |" % info["kernel"])
    add("| load average at the start (1, 5, 15 min) | %s |" % ", ".join(LOAD_AT_START))
    add("")
    add("## Versions\n")
    add("| | |\n|---|---|")
    for k, v in vers.items():
        add("| %s | %s |" % (k, v))
    add("")
    add("## Notes\n")
    for n in notes:
        add("- " + n)
    add("- Servers: sse-server (`%s`), nginx + nchan (bench/nginx/nchan.conf.in: one process, "
        "`master_process off`), Node `http` (bench/peers/node-http.js), better-sse "
        "(bench/peers/better-sse.js). Each runs as one process with one event loop."
        % " ".join(os.path.basename(a) if a == SSE else a
                   for a in sse_args(0)).replace(":0", ":PORT"))
    add("- CPU columns: CPU time over the measured window as a share of one core, for the "
        "server process(es) and for the load generator (sseload sub and pub together). A "
        "server near 100% is saturated (each server is one event loop; Node's own helper "
        "threads can take it past 100%), and what the load generator takes is CPU the server "
        "could not use: with two cores, server plus load generator near 200% means the machine "
        "was the limit.")
    add("- The publisher at a fixed rate (S2, S4 latency, S5, S8) keeps up to %d requests in "
        "flight so the schedule holds while a server is busy fanning out; each event carries "
        "the time it was due." % RATE_PUB["pipeline"])
    add("- The fast publisher (S3, S4 throughput) uses %d keep-alive connections with %d "
        "requests in flight each, the same for every server." % (FAST_PUB["connections"],
                                                                 FAST_PUB["pipeline"]))
    add("")

    def errrow(name, r, cols):
        return "| %s | %s |" % (name, " | ".join(["error: " + r["error"]] + [""] * (cols - 2)))

    # S1
    if "S1" in results:
        res = results["S1"]
        add("## S1: idle subscribers, memory per subscriber\n")
        add("N = %d subscribers per server (as many as one server process can hold under this "
            "machine's limit of %d descriptors per process, which cannot be raised here, with "
            "room for the server's own descriptors), opened by %d sseload "
            "processes from %d source addresses. User-space memory per subscriber = (server RSS "
            "with N idle subscribers - RSS at 0) / N. Kernel memory: the change of the TCP "
            "memory (`/proc/net/sockstat`, pages) and of `Slab` (`/proc/meminfo`) per "
            "connection; **both ends of every connection are on this machine**, so the kernel "
            "figures count the client's socket too (about half is the server's)."
            % (C["s1_n"], NOFILE[0], C["s1_procs"], C["s1_sources"]))
        add("")
        add("| server | connected / N | RSS at 0 | RSS at N | user bytes / subscriber | "
            "kernel TCP mem / conn | slab / conn (both ends) |")
        add("|---|---|---|---|---|---|---|")
        for name in servers:
            r = res.get(name)
            if not r:
                continue
            if "error" in r:
                add(errrow(name, r, 7))
                continue
            add("| %s | %d / %d | %s | %s | **%.0f B** | %.0f B | %.0f B |"
                % (name, r["connected"], r["n"], mb(r["rss0"]), mb(r["rss1"]), r["per_sub"],
                   r["tcp_mem_per_conn"], r["slab_per_conn"]))
        add("")
        ours, nchan = res.get("sse-server", {}), res.get("nchan", {})
        if "per_sub" in ours:
            add("- sse-server: %.0f bytes per idle subscriber; target at most 512: %s."
                % (ours["per_sub"], met(ours["per_sub"] <= 512)))
            if "per_sub" in nchan:
                add("- nchan / sse-server = %s (target at least 20x): %s."
                    % (ratio(nchan["per_sub"], ours["per_sub"]),
                       met(ours["per_sub"] * 20 <= nchan["per_sub"])))
            half_slab = ours["slab_per_conn"] / 2
            add("- Projection for sse-server from these figures (user bytes per subscriber + "
                "half the slab per connection as the server's kernel share, %.0f B + %.0f B):"
                " 100,000 subscribers ~ %s, 1,000,000 ~ %s (plus the process's base RSS; "
                "descriptors beyond this sandbox's limit need a higher RLIMIT_NOFILE)."
                % (ours["per_sub"], half_slab, mb((ours["per_sub"] + half_slab) * 1e5),
                   mb((ours["per_sub"] + half_slab) * 1e6)))
        for name in servers:
            r = res.get(name, {})
            if "tw" in r and abs(r["tw"][1] - r["tw"][0]) > r["n"] // 100:
                add("- %s: TIME_WAIT sockets changed from %d to %d during the measurement; its "
                    "slab figure is approximate." % (name, r["tw"][0], r["tw"][1]))
            if "connected" in r and r["connected"] < r["n"]:
                add("- %s: only %d of %d subscribers connected (%d failed)."
                    % (name, r["connected"], r["n"], r["failed"]))
        add("")

    def latency_table(res, key_n):
        add("| server | subscribers | events published / scheduled | deliveries received / "
            "expected | dropped | p50 ms | p90 ms | p99 ms | max ms | CPU: server / load "
            "generator |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for name, r in res:
            if "error" in r:
                add(errrow(name, r, 10))
                continue
            add("| %s | %d / %d | %d / %d | %d / %d | %d | %s | %s | **%s** | %s | %s |"
                % (name, r["connected"], r["connections"], r["pub"]["published"], r["scheduled"],
                   r["events"], r["expected"], r["dropped"], lat(r, "p50"), lat(r, "p90"),
                   lat(r, "p99"), lat(r, "max"), cpu(r)))
        add("")
        for name, r in res:
            if "error" not in r and r["pub"]["published"] < r["scheduled"]:
                add("- %s: the publisher got only %d of %d events accepted in time "
                    "(%d errors)." % (name, r["pub"]["published"], r["scheduled"],
                                      r["pub"]["errors"]))
            if "error" not in r and r["events"] < r["expected"]:
                add("- %s: %d deliveries missing." % (name, r["expected"] - r["events"]))

    if "S2" in results:
        res = results["S2"]
        add("## S2: fan-out latency\n")
        add("%d subscribers, %g events/s of %d bytes for %g s (%d events); latency is publish "
            "(the publisher's CLOCK_MONOTONIC in the event) to receive, over every delivery."
            % (C["s2_n"], C["s2_rate"], EVENT_BYTES, C["s2_secs"],
               int(C["s2_rate"] * C["s2_secs"])))
        add("")
        latency_table([(n, res[n]) for n in servers if n in res], "s2_n")
        o, p = res.get("sse-server", {}), res.get("nchan", {})
        if o.get("server_delivered") is not None:
            add("- Cross-check: sse-server's `/metrics` counted %d deliveries and %d dropped "
                "subscribers; sseload received %d events."
                % (o["server_delivered"], o["server_dropped"], o["events"]))
        if o.get("latency_ms") and p.get("latency_ms"):
            a, b = o["latency_ms"]["p99"], p["latency_ms"]["p99"]
            add("- p99 sse-server / nchan = %s (target at most 0.5x): %s."
                % (ratio(a, b), met(a <= b / 2)))
            add("")

    if "S3" in results:
        res = results["S3"]
        add("## S3: fan-out throughput\n")
        add("%d subscribers for %g s; the publisher sends as fast as the server accepts. "
            "Delivered events/s is the sum over all subscribers." % (C["s3_n"], C["s3_secs"]))
        add("")
        add("| server | subscribers | published events/s | delivered events/s | dropped "
            "subscribers | p50 / p99 latency ms | peak server RSS | CPU: server / load "
            "generator |")
        add("|---|---|---|---|---|---|---|---|")
        for name in servers:
            r = res.get(name)
            if not r:
                continue
            if "error" in r:
                add(errrow(name, r, 8))
                continue
            add("| %s | %d / %d | %.0f | **%.0f** | %d | %s / %s | %s | %s |"
                % (name, r["connected"], r["connections"], r["pub"]["rate"], r["events_per_s"],
                   r["dropped"], lat(r, "p50"), lat(r, "p99"), mb(r["peak_rss"]), cpu(r)))
        add("")
        o = res.get("sse-server", {})
        add("- Published events/s times subscribers above delivered events/s means the server "
            "accepted events faster than it could write them: they queue (latency and RSS "
            "grow) until the run ends.")
        if o.get("server_dropped") is not None:
            add("- sse-server's `/metrics`: %d subscribers dropped for falling `--client-buffer` "
                "behind." % o["server_dropped"])
        peers = [(res[n]["events_per_s"], n) for n in servers
                 if n != "sse-server" and "events_per_s" in res.get(n, {})]
        if "events_per_s" in o and peers:
            best, bname = max(peers)
            add("- sse-server / best peer (%s) = %s (target at least 2x, no subscriber dropped): "
                "%s." % (bname, ratio(o["events_per_s"], best),
                         met(o["events_per_s"] >= 2 * best and o["dropped"] == 0)))
            add("")

    if "S4" in results:
        res = results["S4"]
        add("## S4: reverse proxy\n")
        add("One sse-server upstream; the subscribers connect directly, through `sse-server "
            "--proxy /=http://upstream`, or through nginx (`proxy_buffering off`, "
            "bench/nginx/proxy.conf.in); the publisher always posts to the upstream.")
        add("")
        add("Latency: %d subscribers, %g events/s for %g s.\n"
            % (C["s4_n"], C["s4_rate"], C["s4_secs"]))
        add("| path | subscribers | events published / scheduled | deliveries received / "
            "expected | dropped | p50 ms | p90 ms | p99 ms | max ms | added p50 ms | "
            "added p99 ms | CPU: upstream + proxy / load generator |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|")
        d = res.get("direct", {}).get("lat")
        for label, r in res.items():
            if "error" in r and "lat" not in r:
                add(errrow(label, r, 12))
                continue
            x = r["lat"]
            added = ("%s | %s" % (ms(x["latency_ms"]["p50"] - d["latency_ms"]["p50"]),
                                  ms(x["latency_ms"]["p99"] - d["latency_ms"]["p99"]))
                     if d and label != "direct" else "- | -")
            add("| %s | %d / %d | %d / %d | %d / %d | %d | %s | %s | %s | %s | %s | %s |"
                % (label, x["connected"], x["connections"], x["pub"]["published"],
                   x["scheduled"], x["events"], x["expected"], x["dropped"], lat(x, "p50"),
                   lat(x, "p90"), lat(x, "p99"), lat(x, "max"), added, cpu(x)))
        add("")
        add("Throughput: %d subscribers for %g s, the publisher as fast as the upstream accepts.\n"
            % (C["s4_tp_n"], C["s4_tp_secs"]))
        add("| path | subscribers | published events/s | delivered events/s | dropped (by the "
            "upstream) | p50 / p99 latency ms | CPU: upstream + proxy / load generator |")
        add("|---|---|---|---|---|---|---|")
        for label, r in res.items():
            if "tp" not in r:
                add(errrow(label, r, 7))
                continue
            x = r["tp"]
            ud = x.get("upstream_dropped")
            add("| %s | %d / %d | %.0f | **%.0f** | %d (%s) | %s / %s | %s |"
                % (label, x["connected"], x["connections"], x["pub"]["rate"], x["events_per_s"],
                   x["dropped"], "?" if ud is None else ud, lat(x, "p50"), lat(x, "p99"),
                   cpu(x)))
        add("")
        o, g = res.get("sse-server --proxy", {}), res.get("nginx proxy_buffering off", {})
        if d and "lat" in o and "lat" in g:
            for q in ("p50", "p99"):
                ao = o["lat"]["latency_ms"][q] - d["latency_ms"][q]
                ag = g["lat"]["latency_ms"][q] - d["latency_ms"][q]
                add("- added %s: sse-server %.2f ms, nginx %.2f ms; ours / nginx's = %s "
                    "(target at most 0.5x): %s." % (q, ao, ag, ratio(ao, ag) if ag > 0 else "-",
                                                     met(ao <= ag / 2) if ag > 0 else
                                                     "not judged (nginx added nothing measurable)"))
        if "tp" in o and "tp" in g:
            a, b = o["tp"]["events_per_s"], g["tp"]["events_per_s"]
            add("- events/s through the proxy: sse-server / nginx = %s (target at least 1x): %s."
                % (ratio(a, b), met(a >= b)))
            if "tp" in res.get("direct", {}):
                dd = res["direct"]["tp"]["events_per_s"]
                add("- versus direct: sse-server %s, nginx %s." % (ratio(a, dd), ratio(b, dd)))
        add("")

    def s5_table(r, who):
        add("| workload | Ir (instructions) | events delivered |")
        add("|---|---|---|")
        add("| %s%d subscribers, no events | %d | %d |"
            % (who, C["s5_n"], r["idle"]["ir"], r["idle"]["events"]))
        add("| %s%d subscribers, %d events | %d | %d / %d |"
            % (who, C["s5_n"], C["s5_events"], r["events"]["ir"], r["events"]["events"],
               r["deliveries_expected"]))
        add("")

    if "S5" in results:
        res = results["S5"]
        add("## S5: instructions per delivered event (callgrind)\n")
        if "error" in res:
            add("error: " + res["error"] + "\n")
        else:
            add("sse-server under `valgrind --tool=callgrind`, %d subscribers; once with %d "
                "events published at %g/s, once with none (the same start, connections and "
                "shutdown). Instructions per delivered event = (Ir with events - Ir without) / "
                "deliveries; it includes parsing each publish request, amortised over %d "
                "subscribers. Deterministic: compare it exactly between commits."
                % (C["s5_n"], C["s5_events"], C["s5_rate"], C["s5_n"]))
            add("")
            s5_table(res, "")
            add("- **%.0f instructions per delivered event.**" % res["per_event"])
            add("")
            rr = res.get("redis")
            if rr and "error" in rr:
                add("Through Redis: error: %s\n" % rr["error"])
            elif rr:
                add("The same with sse-server as a node of a hub (`--redis`; redis-server beside "
                    "it is not counted, see S6 for its CPU): the publish becomes an `XADD` "
                    "and every event comes back over the node's `XREAD BLOCK` link.")
                add("")
                s5_table(rr, "node, ")
                add("- **%.0f instructions per delivered event through Redis** (%s of local)."
                    % (rr["per_event"], ratio(rr["per_event"], res["per_event"])))
                add("")

    def us(x):
        return "%.1f" % x if x is not None else "-"

    if "S6" in results:
        res = results["S6"]
        add("## S6: local publishing vs the Redis path, one machine\n")
        add("The same fan-out twice per subscriber count: a plain sse-server publishing locally, "
            "and one node of a hub (`--redis`, redis-server on loopback with `appendonly yes`, "
            "`appendfsync everysec`), where the publish is an `XADD` and delivery waits for the "
            "node's `XREAD BLOCK` to bring the entry back. %g events/s of %d bytes for %g s; "
            "latency is publish (the publisher's clock in the event) to receive. CPU per "
            "delivered event = the process's CPU time over the window / deliveries (perf's "
            "instruction counter is not available here, so CPU time from /proc/PID/stat); "
            "redis-server's own CPU is its own column."
            % (C["s6_rate"], EVENT_BYTES, C["s6_secs"]))
        add("")
        add("| mode | subscribers | deliveries / expected | p50 ms | p99 ms | max ms | sse-server "
            "CPU us / delivered event | redis-server CPU us / delivered event |")
        add("|---|---|---|---|---|---|---|---|")
        for label, r in res.items():
            if "error" in r:
                add(errrow(label, r, 8))
                continue
            add("| %s | %d / %d | %d / %d | %s | **%s** | %s | %s | %s |"
                % (label.split()[0], r["connected"], r["connections"], r["events"],
                   r["expected"], lat(r, "p50"), lat(r, "p99"), lat(r, "max"), us(r["sse_us"]),
                   us(r["redis_us"])))
        add("")

    if "S7" in results:
        res = results["S7"]
        add("## S7: one node vs two nodes behind nginx\n")
        add("%d subscribers of one hub, %g events/s of %d bytes for %g s, published the same "
            "way the subscribers connect: straight to one node, or through "
            "deploy/nginx-cluster.conf (only its ports and paths changed; `least_conn`, "
            "keep-alive to the nodes) in front of one node or of two. Everything, nginx's two "
            "workers and redis-server included, shares this machine's %s cores, so a second "
            "node adds work here instead of capacity."
            % (C["s7_n"], C["s7_rate"], EVENT_BYTES, C["s7_secs"], info["nproc"]))
        add("")
        add("| setup | subscribers | deliveries / expected | per node | p50 ms | p99 ms | max ms "
            "| CPU us / delivered event: nodes / redis / nginx |")
        add("|---|---|---|---|---|---|---|---|")
        for label, r in res.items():
            if "error" in r:
                add(errrow(label, r, 8))
                continue
            add("| %s | %d / %d | %d / %d | %s | %s | **%s** | %s | %s / %s / %s |"
                % (label, r["connected"], r["connections"], r["events"], r["expected"],
                   " + ".join(str(x) for x in r["per_node"]), lat(r, "p50"), lat(r, "p99"),
                   lat(r, "max"), us(r["nodes_us"]), us(r["redis_us"]), us(r["nginx_us"])))
        add("")

    if "S8" in results:
        res = results["S8"]
        add("## S8: sustained throughput at p99 <= %.0f ms\n" % S8_P99_MS)
        add("The highest publish rate each server sustains for %g s with the 99th-percentile "
            "publish-to-receive latency at or under %.0f ms, no subscriber dropped and nothing "
            "lost (every subscriber got every published event, each numbered, in order). "
            "Events of %d bytes, published over HTTP at a fixed rate (%d connection, up to %d "
            "requests in flight; each event stamped with the time it was due, so a server that "
            "makes the publisher wait shows it as latency). Steps of %g s double the rate from "
            "a low start (or halve it until one holds, down to 1 event/s); steps of %g s then "
            "go up by 25%% from the last short step that held, or down by 20%% until one "
            "holds; the figure is the last %g s step that held, so it is within 25%% below "
            "the true limit (\"at least\" where time ran out before a step failed). A failed "
            "step restarts the server and its subscribers and is tried once more before it "
            "counts (load from elsewhere on the machine can only make a step fail). At most "
            "%g s per server and subscriber count (a step under way finishes); subscribers "
            "are read by %s sseload processes."
            % (C["s8_secs"], S8_P99_MS, EVENT_BYTES, RATE_PUB["connections"],
               RATE_PUB["pipeline"], C["s8_probe_secs"], C["s8_secs"], C["s8_secs"],
               C["s8_budget"], " / ".join("%d (at %d)" % ((n + C["s8_per_proc"] - 1)
                                                         // C["s8_per_proc"], n)
                                          for n in C["s8_ns"])))
        add("")
        add("| server | " + " | ".join("%d subscribers: events/s (p50 / p99 ms)" % n
                                       for n in C["s8_ns"]) + " |")
        add("|---|" + "---|" * len(C["s8_ns"]))
        for name in servers:
            if name not in res:
                continue
            cells = []
            for n in C["s8_ns"]:
                x = res[name].get(n, {})
                if "error" in x:
                    cells.append("error: " + x["error"])
                elif x.get("best"):
                    b = x["best"]
                    more = x.get("budget_out") and x["steps"][-1]["held"]
                    cells.append("%s**%.0f** (%s / %s)" % ("at least " if more else "", b["rate"],
                                                           ms(b["p50"]), ms(b["p99"])))
                else:
                    low = min(x.get("steps") or [{}], key=lambda r: r.get("rate", 0))
                    cells.append("**none held** (the lowest, %.0f/s: p99 %s ms)"
                                 % (low.get("rate", 0), ms(low.get("p99")))
                                 if low else "**none held**")
            add("| %s | %s |" % (name, " | ".join(cells)))
        add("")
        for n in C["s8_ns"]:
            o = res.get("sse-server", {}).get(n, {}).get("best")
            peers = [(res[x][n]["best"]["rate"], x) for x in servers if x != "sse-server" and
                     res.get(x, {}).get(n, {}).get("best")]
            if o and peers:
                best, bname = max(peers)
                target = " (target at least 3x): %s" % met(o["rate"] >= 3 * best) \
                    if n == max(C["s8_ns"]) // 10 or n == 1000 else ""
                add("- %d subscribers: sse-server / best peer (%s) = %s%s."
                    % (n, bname, ratio(o["rate"], best), target))
        add("")
        add("<details><summary>Every step</summary>\n")
        add("| server | subscribers | step | events/s | published / scheduled | p50 ms | "
            "p99 ms | open | fewest events per subscriber | gaps | result |")
        add("|---|---|---|---|---|---|---|---|---|---|---|")
        for name in servers:
            for n in C["s8_ns"]:
                for r in res.get(name, {}).get(n, {}).get("steps", []):
                    add("| %s | %d | %s %gs | %.0f | %d / %d | %s | %s | %d | %d | %d | %s |"
                        % (name, n, r["kind"], r["secs"], r["rate"], r["published"],
                           r["count"], ms(r["p50"]), ms(r["p99"]), r["open"],
                           r["per_sub_min"], r["gaps"],
                           "held" if r["held"] else "failed: " + r["why"]))
        add("\n</details>\n")

    if "S9" in results:
        runs = results["S9"]["runs"]
        add("## S9: a firehose into `--stdin`\n")
        add("`sseload gen --duration %g | sse-server --stdin` (default `--client-buffer`, so "
            "flow control's high-water mark is its default), %d subscribers connected first; "
            "the generator writes numbered events of %d bytes as fast as the server reads "
            "them. Every subscriber must get every event, in order, and none be dropped: the "
            "writer is paced instead (time held from `/metrics`)."
            % (C["s9_secs"], C["s9_n"], EVENT_BYTES))
        add("")
        add("| run | events written | events/s written | subscribers open / N | dropped | "
            "events per subscriber (fewest / most) | gaps | p50 / p99 ms | held (holds) |")
        add("|---|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(runs):
            if "error" in r:
                add("| %d | error: %s | | | | | | | |" % (i + 1, r["error"]))
                continue
            add("| %d | %d | %.0f | %d / %d | %d | %d / %d | %d | %s / %s | %s s (%s) |"
                % (i + 1, r["events"], r["rate"], r["open"], r["n"], r["dropped"],
                   r["per_sub_min"], r["per_sub_max"], r["gaps"], ms(r["p50"]), ms(r["p99"]),
                   r["held_s"], r["holds"]))
        add("")
        ok = runs and all("error" not in r and r["dropped"] == 0 and r["gaps"] == 0 and
                          r["per_sub_min"] == r["events"] and r["open"] == r["n"] for r in runs)
        add("- Zero dropped and zero gaps in every run, every event to every subscriber: %s."
            % met(ok))
        add("")

    analysis = os.path.join(BENCH, "analysis.md")
    if not smoke and os.path.exists(analysis):
        add(read(analysis).rstrip() + "\n")

    add("## Commands\n")
    add("Every process the run started, in order (ports were free ports chosen at run time; "
        "nginx configurations are bench/nginx/*.conf.in with the placeholders filled in).\n")
    add("```")
    last = None
    for scen, cmd in R.commands:
        if scen != last:
            add("# %s" % scen)
            last = scen
        add(cmd.replace(R.tmp, "$TMP").replace(ROOT + "/", "./"))
    add("```")
    return "\n".join(L) + "\n"


def summary(results, servers):
    s = []
    r = results.get("S1", {})
    for n in servers:
        if "per_sub" in r.get(n, {}):
            s.append("S1 %-11s %6.0f B/subscriber (%d connected)" % (n, r[n]["per_sub"],
                                                                     r[n]["connected"]))
        elif n in r:
            s.append("S1 %-11s error: %s" % (n, r[n].get("error")))
    r = results.get("S2", {})
    for n in servers:
        if r.get(n, {}).get("latency_ms"):
            l = r[n]["latency_ms"]
            s.append("S2 %-11s p50 %.2f p99 %.2f max %.2f ms (%d/%d events)"
                     % (n, l["p50"], l["p99"], l["max"], r[n]["events"], r[n]["expected"]))
        elif n in r:
            s.append("S2 %-11s error: %s" % (n, r[n].get("error")))
    r = results.get("S3", {})
    for n in servers:
        if "events_per_s" in r.get(n, {}):
            s.append("S3 %-11s %10.0f events/s delivered, %d dropped"
                     % (n, r[n]["events_per_s"], r[n]["dropped"]))
        elif n in r:
            s.append("S3 %-11s error: %s" % (n, r[n].get("error")))
    for label, x in results.get("S4", {}).items():
        if "lat" in x and "tp" in x:
            s.append("S4 %-26s p50 %.2f p99 %.2f ms; %.0f events/s"
                     % (label, x["lat"]["latency_ms"]["p50"], x["lat"]["latency_ms"]["p99"],
                        x["tp"]["events_per_s"]))
        else:
            s.append("S4 %-26s error: %s" % (label, x.get("error")))
    for scen in ("S6", "S7"):
        for label, x in results.get(scen, {}).items():
            s.append("%s %-16s %s" % (scen, label, brief(scen, x)))
    for n in servers:
        if n in results.get("S8", {}):
            s.append("S8 %-11s %s" % (n, brief("S8", results["S8"][n])))
    for i, r in enumerate(results.get("S9", {}).get("runs", [])):
        s.append("S9 run %d       %s" % (i + 1, brief("S9", r)))
    r = results.get("S5")
    if r:
        s.append("S5 " + ("%.0f instructions per delivered event" % r["per_event"]
                          if "per_event" in r else "error: %s" % r.get("error")))
        if "redis" in r:
            s.append("S5 through Redis: " + brief("S5", r["redis"]))
    return "\n".join(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="seconds-long run with tiny N")
    ap.add_argument("--out", help="where to write the report (default: bench/RESULTS.md, "
                    "or a temporary file with --smoke)")
    ap.add_argument("--only", help="comma-separated scenarios, e.g. S1,S3")
    ap.add_argument("--servers", help="comma-separated subset of " + ",".join(ALL_SERVERS))
    args = ap.parse_args()
    C = SMOKE if args.smoke else FULL
    READY_TIMEOUT[0] = C["ready_timeout"]
    scenarios = args.only.upper().split(",") if args.only else SCENARIOS
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.time()

    LOAD_AT_START[:] = read("/proc/loadavg").split()[:3]
    notes = []
    raise_limits(notes)
    have = ensure_peers(notes)
    build()
    servers = args.servers.split(",") if args.servers else list(ALL_SERVERS)
    avail = {"sse-server": True, "nchan": have["nchan"], "node-http": bool(have["node"]),
             "better-sse": have["better-sse"]}
    servers = [s for s in servers if avail.get(s)]
    if args.smoke:
        notes.append("Smoke run: tiny N and durations, to check that every scenario runs end to "
                     "end; the figures mean nothing.")

    tmp = tempfile.mkdtemp(prefix="sse-bench-")
    R = Runner(tmp)
    results = {}
    others = {}

    def check_quiet(when):
        busy = busy_others()
        if busy:
            others[when] = busy
            log("   warning: other processes busy %s: %s" % (when, ", ".join(busy)))

    check_quiet("at the start")

    def on_signal(sig, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for scen in scenarios:
            R.scenario = scen
            log("== %s" % scen)
            if scen == "S1":
                log("   N = %d idle subscribers per server: RLIMIT_NOFILE is %d per process "
                    "here, so one server holds at most that many connections; sseload runs as "
                    "%d processes" % (C["s1_n"], NOFILE[0], C["s1_procs"]))
            if scen in ("S1", "S2", "S3"):
                fn = {"S1": s1_idle, "S2": s2_latency, "S3": s3_throughput}[scen]
                results[scen] = {}
                for name in servers:
                    t = time.time()
                    try:
                        results[scen][name] = fn(R, name, have, C)
                    except BenchError as e:
                        results[scen][name] = {"error": str(e)}
                    log("   %-11s %5.1f s  %s"
                        % (name, time.time() - t, brief(scen, results[scen][name])))
            elif scen == "S4":
                try:
                    results["S4"] = s4_proxy(R, have, C)
                except BenchError as e:
                    results["S4"] = {"direct": {"error": str(e)}}
                for label, r in results["S4"].items():
                    log("   %-26s %s" % (label, brief("S4", r)))
            elif scen in ("S6", "S7"):
                if not have["redis"]:
                    continue
                fn = {"S6": s6_redis, "S7": s7_cluster}[scen]
                try:
                    results[scen] = fn(R, have, C)
                except BenchError as e:
                    results[scen] = {"run": {"error": str(e)}}
                for label, r in results[scen].items():
                    log("   %-16s %s" % (label, brief(scen, r)))
            elif scen == "S8":
                results["S8"] = {}
                for name in servers:
                    t = time.time()
                    results["S8"][name] = s8_sustained(R, name, have, C)
                    log("   %-11s %5.1f s  %s" % (name, time.time() - t,
                                                 brief("S8", results["S8"][name])))
            elif scen == "S9":
                results["S9"] = s9_firehose(R, have, C)
            elif scen == "S5":
                if not have["valgrind"]:
                    continue
                try:
                    results["S5"] = s5_callgrind(R, have, C)
                except BenchError as e:
                    results["S5"] = {"error": str(e)}
                log("   %s" % brief("S5", results["S5"]))
                if have["redis"]:
                    try:
                        results["S5"]["redis"] = s5_callgrind(R, have, C, redis=True)
                    except BenchError as e:
                        results["S5"]["redis"] = {"error": str(e)}
                    log("   redis: %s" % brief("S5", results["S5"]["redis"]))
            R.stop_all()
            check_quiet("after " + scen)
    finally:
        R.stop_all()

    elapsed = time.time() - t0
    if others:
        notes.append("**Other processes were using the CPU during this run**, so its speed "
                     "figures are suspect (memory and instruction counts are not affected): "
                     + "; ".join("%s: %s" % (k, ", ".join(v)) for k, v in others.items()) + ".")
    else:
        notes.append("No other process used more than 10% of a core at the start of the run "
                     "or between its scenarios.")
    text = report(C, args.smoke, machine_info(), versions(have), notes, results, R, started,
                  elapsed, servers)
    if args.out:
        out = args.out
    elif args.smoke:
        fd, out = tempfile.mkstemp(prefix="sse-bench-smoke-", suffix=".md")
        os.close(fd)
    else:
        out = os.path.join(BENCH, "RESULTS.md")
    with open(out, "w") as f:
        f.write(text)
    log("")
    log(summary(results, servers))
    log("")
    log("report written to %s (%.0f s)" % (out, elapsed))
    errors = [1 for scen in results.values() for r in scen.values()
              if isinstance(r, dict) and "error" in r] if results else []
    if "S5" in results and "error" in results["S5"]:
        errors.append(1)
    errors += [1 for by_n in results.get("S8", {}).values() for x in by_n.values()
               if "error" in x]
    errors += [1 for x in results.get("S9", {}).get("runs", []) if "error" in x]
    if errors:
        log("%d measurement(s) failed: see the report; the servers' and sseload's stderr are "
            "kept in %s" % (len(errors), tmp))
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def brief(scen, r):
    if not isinstance(r, dict):
        return ""
    if "error" in r:
        return "error: " + r["error"]
    if scen == "S1":
        return "%d/%d connected, %.0f B/subscriber" % (r["connected"], r["n"], r["per_sub"])
    if scen == "S2":
        return "%d/%d events, p50 %s p99 %s ms" % (r["events"], r["expected"], lat(r, "p50"),
                                                   lat(r, "p99"))
    if scen == "S3":
        return "%.0f events/s, %d dropped" % (r["events_per_s"], r["dropped"])
    if scen == "S4":
        return ("p50 %s p99 %s ms; %.0f events/s" % (lat(r["lat"], "p50"), lat(r["lat"], "p99"),
                                                     r["tp"]["events_per_s"])
                if "tp" in r else "")
    if scen in ("S6", "S7"):
        return "%d/%d deliveries, p50 %s p99 %s ms" % (r["events"], r["expected"],
                                                        lat(r, "p50"), lat(r, "p99"))
    if scen == "S8":
        return "; ".join("%d: %s" % (n, "error: " + x["error"] if "error" in x else
                                     "%.0f events/s (p99 %s ms)" % (x["best"]["rate"],
                                                                   ms(x["best"]["p99"]))
                                     if x["best"] else "none held")
                         for n, x in r.items())
    if scen == "S9":
        if "error" in r:
            return "error: " + r["error"]
        return ("%d events at %.0f/s, %d/%d open, %d dropped, per subscriber %d..%d, %d gaps, "
                "p99 %s ms, held %s s" % (r["events"], r["rate"], r["open"], r["n"],
                                          r["dropped"], r["per_sub_min"], r["per_sub_max"],
                                          r["gaps"], ms(r["p99"]), r["held_s"]))
    if scen == "S5" and "per_event" in r:
        return "%.0f instructions per delivered event" % r["per_event"]
    if scen == "S5" and "error" in r:
        return "error: %s" % r["error"]
    return ""


if __name__ == "__main__":
    sys.exit(main())
