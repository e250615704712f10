"""The build as shipped: `make install` (PREFIX, DESTDIR), `make run` (PORT, LISTEN) and
`make static` (a binary with no dynamic section that serves from an empty directory with an
empty environment). These run make in the repository, as a user would."""

import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import time

import pytest

from conftest import Stream, free_port, not_applicable, publish, request, unavailable

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def make(*args, timeout=300):
    r = subprocess.run(["make", "-s", "-C", ROOT, *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


# ---- make install -----------------------------------------------------------------------

@pytest.mark.parametrize("prefix", [None, "/opt/sse"])
def test_install_into_destdir(tmp_path, prefix):
    """The binary, the man page and the systemd unit land under DESTDIR+PREFIX (PREFIX
    defaults to /usr/local) with their modes; the binary runs; the man page is the binary's
    own (--help-man); the unit starts the installed binary, wherever PREFIX put it."""
    dest = tmp_path / "stage"
    make("install", "DESTDIR=%s" % dest, *(["PREFIX=%s" % prefix] if prefix else []))
    base = str(dest) + (prefix or "/usr/local")
    files = {
        "bin/sse-server": 0o755,
        "share/man/man1/sse-server.1": 0o644,
        "lib/systemd/system/sse-server.service": 0o644,
    }
    installed = sorted(os.path.relpath(os.path.join(d, f), base)
                       for d, _, fs in os.walk(dest) for f in fs)
    assert installed == sorted(files), installed
    for rel, mode in files.items():
        assert stat.S_IMODE(os.stat(os.path.join(base, rel)).st_mode) == mode, rel
    binary = os.path.join(base, "bin/sse-server")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    assert version.returncode == 0 and re.match(r"^sse-server \S+\n$", version.stdout)
    helped = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    assert helped.returncode == 0 and "--publish-token TOKEN" in helped.stdout
    man = subprocess.run([binary, "--help-man"], capture_output=True, text=True, timeout=10)
    with open(os.path.join(base, "share/man/man1/sse-server.1")) as f:
        assert f.read() == man.stdout
    with open(os.path.join(base, "lib/systemd/system/sse-server.service")) as f:
        unit = f.read()
    with open(os.path.join(ROOT, "deploy/sse-server.service")) as f:
        shipped = f.read()
    execstart = "ExecStart=%s/bin/sse-server " % (prefix or "/usr/local")
    assert unit == re.sub(r"(?m)^ExecStart=\S+ ", execstart, shipped)
    assert str(dest) not in unit


# ---- make run ---------------------------------------------------------------------------

def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("how", ["PORT", "LISTEN"])
def test_make_run_passes_the_address(how):
    """`make run PORT=N` and `make run LISTEN=127.0.0.1:N` start the demo on that address;
    SIGTERM to the server (found by PID under make) stops it, and make with it."""
    make("sse-server")
    port = free_port()
    arg = "PORT=%d" % port if how == "PORT" else "LISTEN=127.0.0.1:%d" % port
    proc = subprocess.Popen(["make", "-s", "-C", ROOT, "run", arg], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server = None
        for _ in range(200):
            assert proc.poll() is None, proc.communicate(timeout=5)
            pids = [p for c in children(proc.pid) for p in [c, *children(c)]]
            for p in pids:
                try:
                    with open("/proc/%d/cmdline" % p, "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if argv[0].endswith(b"sse-server") and b"--demo" in argv:
                    server = p
            if server:
                try:
                    if request(port, "GET", "/healthz").status == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.05)
        else:
            raise AssertionError("make run did not serve on port %d" % port)
        st = Stream(port, "/events/time")
        try:
            assert st.read_event()["event"] == "time"
        finally:
            st.close()
        os.kill(server, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert b"listening on http://127.0.0.1:%d/" % port in err, err
    finally:
        if proc.poll() is None:
            for p in children(proc.pid):
                os.kill(p, signal.SIGKILL)
            proc.kill()
            proc.communicate(timeout=10)


# ---- make static --------------------------------------------------------------------------

def elf_segments(path):
    """The p_type of every program header of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not ELF64 LE"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]


PT_DYNAMIC, PT_INTERP, PT_LOAD = 2, 3, 1


@pytest.fixture(scope="module")
def static_binary():
    if not shutil.which("musl-gcc"):
        unavailable("musl-gcc is missing (tests/install-deps.sh installs musl-tools)")
    make("static", "WERROR=1")
    return os.path.join(ROOT, "sse-server-static")


def test_static_binary_has_no_dynamic_section(static_binary):
    types = elf_segments(static_binary)
    assert PT_LOAD in types and PT_INTERP not in types and PT_DYNAMIC not in types, types
    if shutil.which("readelf"):
        r = subprocess.run(["readelf", "-d", static_binary], capture_output=True, text=True)
        assert "There is no dynamic section in this file." in r.stdout, r.stdout


def test_elf_check_sees_a_dynamic_binary():
    """The check above, on a binary that is dynamically linked: it must see PT_INTERP."""
    types = elf_segments(shutil.which("sh") and os.path.realpath(shutil.which("sh")))
    assert PT_INTERP in types and PT_DYNAMIC in types


def serve_and_check(argv, cwd, preexec_fn=None):
    """Starts argv (a server on 127.0.0.1:0 with --publish-token secret) with an empty
    environment; reads the stream's head and an event published over HTTP."""
    proc = subprocess.Popen(argv, cwd=cwd, env={}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=preexec_fn)
    try:
        line = proc.stderr.readline().decode()
        m = re.match(r"^sse-server: listening on http://127\.0\.0\.1:(\d+)/\n$", line)
        assert m, (line, proc.poll())
        port = int(m.group(1))
        st = Stream(port, "/events/news")
        try:
            assert st.status == 200
            assert st.header("Content-Type").startswith("text/event-stream")
            assert st.read_block() == b"retry: 3000\n\n"
            assert publish(port, b"static hello", topic="news").status == 200
            assert st.read_event()["data"] == "static hello"
        finally:
            st.close()
        assert request(port, "GET", "/").status == 200  # the built-in page
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_static_binary_serves_with_nothing_around_it(static_binary, tmp_path):
    """From an empty directory, with an empty environment (env -i)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    serve_and_check([static_binary, "--listen", "127.0.0.1:0", "--publish-token", "secret"],
                    empty)
    assert os.listdir(empty) == []


def test_static_binary_serves_in_an_empty_root(static_binary, tmp_path):
    """Chrooted into a directory holding nothing but the binary: no loader, no libc, no
    /etc, no /dev, no /proc."""
    if os.geteuid() != 0:
        not_applicable("chroot needs root")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(static_binary, root / "sse-server")
    serve_and_check(["/sse-server", "--listen", "127.0.0.1:0", "--publish-token", "secret"],
                    "/", preexec_fn=lambda: (os.chroot(str(root)), os.chdir("/")))
