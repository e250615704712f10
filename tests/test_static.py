"""Static files under --root: types, exact lengths and bodies (sendfile), HEAD,
Last-Modified / If-Modified-Since, directories, traversal and symlink escapes, fifos."""

import email.utils
import os
import re
import socket
import subprocess
import time

import pytest

from conftest import BINARY, connect, healthy, read_response, recv_all, settled_fd_count

IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT$"
)

FILES = {
    "index.html": (b"<!doctype html><title>root</title>\n", "text/html; charset=utf-8"),
    "page.htm": (b"<p>htm</p>\n", "text/html; charset=utf-8"),
    "style.css": (b"body { color: red; }\n", "text/css; charset=utf-8"),
    "app.js": (b"console.log('hi');\n", "text/javascript; charset=utf-8"),
    "mod.mjs": (b"export const x = 1;\n", "text/javascript; charset=utf-8"),
    "data.json": (b'{"a": 1}\n', "application/json"),
    "readme.txt": (b"hello, static world\n", "text/plain; charset=utf-8"),
    "pic.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"/>\n', "image/svg+xml"),
    "img.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "image/png"),
    "photo.jpg": (b"\xff\xd8\xff\xe0jpeg", "image/jpeg"),
    "photo.jpeg": (b"\xff\xd8\xff\xe0jpeg2", "image/jpeg"),
    "anim.gif": (b"GIF89a....", "image/gif"),
    "favicon.ico": (b"\x00\x00\x01\x00ico", "image/x-icon"),
    "prog.wasm": (b"\x00asm\x01\x00\x00\x00", "application/wasm"),
    "blob.xyz": (b"\x00\x01\x02unknown type\xff", "application/octet-stream"),
    "noext": (b"no extension\n", "application/octet-stream"),
    "empty.txt": (b"", "text/plain; charset=utf-8"),
    "with space.txt": (b"spaced out\n", "text/plain; charset=utf-8"),
}
SECRET = b"TOP SECRET outside the root\n"
BIG_SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture
def site(tmp_path):
    """tmp/root (served) and tmp/outside + tmp/secret.txt (not served)."""
    root = tmp_path / "root"
    root.mkdir()
    for name, (body, _) in FILES.items():
        (root / name).write_bytes(body)
    big = os.urandom(BIG_SIZE)
    (root / "big.bin").write_bytes(big)
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<p>sub index</p>\n")
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "emptydir").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    os.symlink(str(outside / "secret.txt"), str(root / "link_out.txt"))
    os.symlink(str(outside), str(root / "linkdir_out"))
    os.symlink("../secret.txt", str(root / "rel_link_out.txt"))
    os.symlink("readme.txt", str(root / "link_in.txt"))
    os.symlink("sub", str(root / "linkdir_in"))
    os.mkfifo(str(root / "fifo.txt"))
    return {"root": root, "big": big, "tmp": tmp_path}


@pytest.fixture
def static(start_server, site):
    srv = start_server("--root", str(site["root"]))
    srv.site = site
    return srv








def exchange(port, raw, timeout=5):
    """One request on a fresh connection; returns (Response, leftover)."""
    s = connect(port, timeout)
    try:
        s.sendall(raw)
        return read_response(s, timeout)
    finally:
        s.close()


def get(port, path, extra=b"", method=b"GET", timeout=5):
    raw = (
        method
        + b" "
        + path.encode("latin-1")
        + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        + extra
        + b"\r\n"
    )
    s = connect(port, timeout)
    try:
        s.sendall(raw)
        resp, rest = read_response(s, timeout, head_only=(method == b"HEAD"))
        tail = rest + recv_all(s, timeout)
    finally:
        s.close()
    assert tail == b"", tail  # nothing after the response (and no body after HEAD/304)
    return resp


def assert_not_found(resp):
    assert resp.status == 404, (resp.raw_head, resp.body)
    assert resp.body == b"not found\n"
    assert SECRET not in resp.body


def http_date(path):
    return email.utils.formatdate(int(os.stat(str(path)).st_mtime), usegmt=True)


# ---- types, lengths, bodies ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILES))
def test_file_type_length_body(static, name):
    body, ctype = FILES[name]
    path = "/" + name.replace(" ", "%20")
    r = get(static.port, path)
    assert r.status == 200, r.raw_head
    assert r.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert r.header("Content-Type") == ctype
    assert r.header("Content-Length") == str(len(body))
    assert r.body == body
    assert r.header("X-Content-Type-Options") == "nosniff"
    lm = r.header("Last-Modified")
    assert lm is not None and IMF_FIXDATE.match(lm), lm
    assert lm == http_date(static.site["root"] / name)
    assert IMF_FIXDATE.match(r.header("Date", ""))


@pytest.mark.valgrind
def test_big_binary_file_exact(static):
    big = static.site["big"]
    s = connect(static.port, 20)
    try:
        # twice on one connection: the second response must follow the first exactly
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2)
        r1, rest = read_response(s, 20, buf=b"")
        r2, rest = read_response(s, 20, buf=rest)
        assert rest == b""
    finally:
        s.close()
    for r in (r1, r2):
        assert r.status == 200
        assert r.header("Content-Type") == "application/octet-stream"
        assert r.header("Content-Length") == str(len(big))
        assert len(r.body) == len(big)
        assert r.body == big


@pytest.mark.valgrind
def test_keep_alive_across_static_files(static):
    s = connect(static.port)
    try:
        s.sendall(
            b"GET /readme.txt HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /style.css HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /missing HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /data.json HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        rs = []
        rest = b""
        for _ in range(4):
            r, rest = read_response(s, buf=rest)
            rs.append(r)
        assert rest == b""
    finally:
        s.close()
    assert [r.status for r in rs] == [200, 200, 404, 200]
    assert rs[0].body == FILES["readme.txt"][0]
    assert rs[1].body == FILES["style.css"][0]
    assert rs[3].body == FILES["data.json"][0]


@pytest.mark.valgrind
def test_head_static(static):
    r = get(static.port, "/readme.txt", method=b"HEAD")
    assert r.status == 200
    assert r.header("Content-Type") == "text/plain; charset=utf-8"
    assert r.header("Content-Length") == str(len(FILES["readme.txt"][0]))
    assert r.header("Last-Modified") == http_date(static.site["root"] / "readme.txt")
    # HEAD of the big file followed by a pipelined GET: no body in between
    s = connect(static.port)
    try:
        s.sendall(
            b"HEAD /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /readme.txt HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        r1, rest = read_response(s, head_only=True)
        assert r1.header("Content-Length") == str(BIG_SIZE)
        r2, rest = read_response(s, buf=rest)
        assert r2.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (r2.body, rest) == (FILES["readme.txt"][0], b"")
    finally:
        s.close()


def test_put_static_405(static):
    r = get(static.port, "/readme.txt", extra=b"Content-Length: 0\r\n", method=b"PUT")
    assert r.status == 405
    assert r.header("Allow") == "GET, HEAD, OPTIONS"


# ---- If-Modified-Since --------------------------------------------------------------------


@pytest.mark.valgrind
def test_if_modified_since_equal_304(static):
    lm = http_date(static.site["root"] / "readme.txt")
    s = connect(static.port)
    try:
        s.sendall(
            b"GET /readme.txt HTTP/1.1\r\nHost: localhost\r\nIf-Modified-Since: "
            + lm.encode()
            + b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        r1, rest = read_response(s)
        assert r1.status == 304, r1.raw_head
        assert r1.header("Content-Length") is None
        assert r1.header("Last-Modified") == lm
        # the next bytes are the pipelined /healthz answer: the 304 had no body
        r2, rest = read_response(s, buf=rest)
        assert r2.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (r2.body, rest) == (b"ok\n", b"")
    finally:
        s.close()


def test_if_modified_since_newer_304(static):
    r = get(static.port, "/readme.txt", b"If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n")
    assert r.status == 304
    assert r.body == b""


def test_if_modified_since_older_200(static):
    r = get(static.port, "/readme.txt", b"If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n")
    assert r.status == 200
    assert r.body == FILES["readme.txt"][0]


def test_if_modified_since_one_second_older_200(static):
    p = static.site["root"] / "readme.txt"
    older = email.utils.formatdate(int(os.stat(str(p)).st_mtime) - 1, usegmt=True)
    r = get(static.port, "/readme.txt", b"If-Modified-Since: " + older.encode() + b"\r\n")
    assert r.status == 200
    assert r.body == FILES["readme.txt"][0]


@pytest.mark.parametrize(
    "value", [b"garbage", b"", b"Mon, 99 Foo 2020 99:99:99 GMT", b"1700000000"]
)
def test_if_modified_since_garbage_200(static, value):
    r = get(static.port, "/readme.txt", b"If-Modified-Since: " + value + b"\r\n")
    assert r.status == 200
    assert r.body == FILES["readme.txt"][0]


# ---- directories --------------------------------------------------------------------------


@pytest.mark.valgrind
def test_root_index(static):
    r = get(static.port, "/")
    assert r.status == 200
    assert r.header("Content-Type") == "text/html; charset=utf-8"
    assert r.body == FILES["index.html"][0]


def test_directory_with_slash_serves_index(static):
    r = get(static.port, "/sub/")
    assert r.status == 200
    assert r.header("Content-Type") == "text/html; charset=utf-8"
    assert r.body == b"<p>sub index</p>\n"
    r = get(static.port, "/sub/inner.txt")
    assert (r.status, r.body) == (200, b"inner\n")


@pytest.mark.valgrind
def test_directory_without_slash_redirects(static):
    r = get(static.port, "/sub")
    assert r.status == 301
    assert r.header("Location") == "/sub/"
    assert r.header("Content-Length") == str(len(r.body))
    r = get(static.port, "/sub?x=1&y=2")
    assert r.status == 301
    assert r.header("Location") == "/sub/?x=1&y=2"


def test_directory_without_index_404(static):
    assert_not_found(get(static.port, "/emptydir/"))


@pytest.mark.valgrind
def test_missing_file_404(static):
    r = get(static.port, "/missing.txt")
    assert_not_found(r)
    assert r.header("Content-Type") == "text/plain; charset=utf-8"
    assert_not_found(get(static.port, "/sub/missing/deeper.txt"))


def test_file_with_trailing_slash_404(static):
    """A regular file is not a directory: "/readme.txt/" names nothing (ENOTDIR)."""
    assert_not_found(get(static.port, "/readme.txt/"))


def test_space_in_name(static):
    r = get(static.port, "/with%20space.txt")
    assert (r.status, r.body) == (200, b"spaced out\n")


# ---- escaping the root --------------------------------------------------------------------

TRAVERSALS = [
    "/../etc/passwd",
    "/a/../../etc/passwd",
    "/%2e%2e/etc/passwd",
    "/%2E%2E/%2e%2e/etc/passwd",
    "/..%2fetc%2fpasswd",
    "/.%2e/x",
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/../outside/secret.txt",
    "/..",
    "/../",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_refused(static, path):
    r = get(static.port, path)
    assert r.status == 404, (path, r.raw_head, r.body)
    assert SECRET not in r.body
    assert b"root:" not in r.body
    healthy(static.port)


@pytest.mark.parametrize("path", ["/sub/../readme.txt", "/sub/%2e%2e/readme.txt",
                                  "/linkdir_in/../readme.txt", "/sub/../sub/inner.txt"])
def test_dot_dot_inside_the_root_refused(static, path):
    """A ".." segment is refused even when it would stay inside the root (the kernel's
    RESOLVE_BENEATH would allow it: only the server's own rule refuses it)."""
    assert_not_found(get(static.port, path))
    assert get(static.port, "/readme.txt").body == FILES["readme.txt"][0]


@pytest.mark.valgrind
def test_symlink_to_file_outside_404(static):
    assert_not_found(get(static.port, "/link_out.txt"))
    assert_not_found(get(static.port, "/rel_link_out.txt"))


def test_symlink_to_directory_outside_404(static):
    assert_not_found(get(static.port, "/linkdir_out/secret.txt"))
    assert_not_found(get(static.port, "/linkdir_out/"))


def test_symlink_inside_root_200(static):
    r = get(static.port, "/link_in.txt")
    assert r.status == 200
    assert r.body == FILES["readme.txt"][0]
    assert r.header("Content-Type") == "text/plain; charset=utf-8"
    r = get(static.port, "/linkdir_in/inner.txt")
    assert (r.status, r.body) == (200, b"inner\n")


@pytest.mark.valgrind
def test_fifo_404_no_hang(static):
    r = get(static.port, "/fifo.txt")
    assert_not_found(r)
    healthy(static.port)
    r = get(static.port, "/readme.txt")
    assert r.status == 200


@pytest.mark.valgrind
@pytest.mark.parametrize("path", ["/%00", "/readme.txt%00.html", "/%zz", "/read%4"])
def test_bad_escapes_400(static, path):
    r = get(static.port, path)
    assert r.status == 400, (path, r.raw_head)
    assert r.header("Connection") == "close"
    healthy(static.port)


def test_dev_null_via_symlink_404(static):
    os.symlink("/dev/null", str(static.site["root"] / "null.txt"))
    assert_not_found(get(static.port, "/null.txt"))
    healthy(static.port)


def test_nonexistent_root_fails_at_startup():
    p = subprocess.run(
        [BINARY, "--listen", "127.0.0.1:0", "--root", "/nonexistent/sse-server-test-root"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=5,
    )
    assert p.returncode != 0
    assert p.returncode == 1, p.returncode
    err = p.stderr.decode()
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("sse-server: "), err
    assert "listening" not in err


def test_no_fd_leak_serving_files(static):
    port = static.port
    healthy(port)
    base = settled_fd_count(static)
    for _ in range(20):
        assert get(port, "/readme.txt").status == 200
        assert get(port, "/readme.txt", method=b"HEAD").status == 200
        assert get(port, "/sub").status == 301
        assert get(port, "/sub/").status == 200
        assert get(port, "/emptydir/").status == 404
        assert get(port, "/fifo.txt").status == 404
        assert get(port, "/link_out.txt").status == 404
        assert get(port, "/%2e%2e/secret.txt").status == 404
        lm = http_date(static.site["root"] / "readme.txt").encode()
        assert get(port, "/readme.txt", b"If-Modified-Since: " + lm + b"\r\n").status == 304
        # a client that goes away in the middle of a big file
        # (a small receive buffer keeps the file from fitting in the kernel's buffers)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.recv(1000)
        s.close()
    deadline = time.monotonic() + 10
    while static.fd_count() != base:
        assert time.monotonic() < deadline, "fd count %d, started at %d" % (
            static.fd_count(),
            base,
        )
        time.sleep(0.1)
    healthy(port)
