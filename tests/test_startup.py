"""Start-up: names resolved once, start-up failures exit 1, and the documented defaults."""

import re
import subprocess

from conftest import BINARY, Stream, request


def run(*args, timeout=5):
    return subprocess.run([BINARY, *args], capture_output=True, timeout=timeout)


def test_listen_by_host_name(start_server):
    srv = start_server("--listen", "localhost:0")
    assert srv.host in ("127.0.0.1", "[::1]")
    assert request(srv.port, "GET", "/healthz").body == b"ok\n"


def test_port_in_use_exits_1(start_server):
    srv = start_server()
    r = run("--listen", "127.0.0.1:%d" % srv.port)
    assert r.returncode == 1
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sse-server: cannot listen on"), lines


def test_unresolvable_host_exits_1():
    r = run("--listen", "no-such-host.invalid:0")
    assert r.returncode == 1
    assert r.stderr.decode().startswith("sse-server: cannot resolve")


def test_missing_root_exits_1(tmp_path):
    r = run("--listen", "127.0.0.1:0", "--root", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert "cannot serve" in r.stderr.decode()


def test_dotfiles_inside_root_are_served(start_server, tmp_path):
    (tmp_path / ".well-known").mkdir()
    (tmp_path / ".well-known" / "x.txt").write_text("dot\n")
    srv = start_server("--root", str(tmp_path))
    r = request(srv.port, "GET", "/.well-known/x.txt")
    assert r.status == 200 and r.body == b"dot\n"


def test_default_heartbeat_and_retry_are_documented_values(start_server):
    """--help says 15 s heartbeat and 3000 ms retry; the stream says retry: 3000."""
    help_text = run("--help").stdout.decode()
    assert re.search(r"--heartbeat SECONDS [^(]*; 0 = none \(default: 15\)", help_text), help_text
    assert re.search(r"--retry MS [^(]*; 0 = none \(default: 3000\)", help_text), help_text
    srv = start_server()
    st = Stream(srv.port)
    assert st.read_block() == b"retry: 3000\n\n"
    st.close()


def test_nofile_limit_is_raised_to_hard_limit(start_server):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower_soft():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    srv = start_server(preexec_fn=lower_soft)
    with open("/proc/%d/limits" % srv.pid) as f:
        line = next(l for l in f if l.startswith("Max open files"))
    assert line.split()[3] == str(hard), line
