"""The documentation runs as written: every ```sh block of README.md and docs/*.md is run,
command by command, in a scratch copy of the project, and what the text shows a command
printing is compared with what it really prints.

How a document is read (a reader following it top to bottom, with as many terminals as
it takes):
- Commands run in order, each with bash, in the document's scratch directory (a `cd` in
  one carries over to the next). A command ending in `&`, or one still running once it
  printed something and then went quiet (a server, a `curl -N`), goes on in the
  background, like a second terminal; `kill %N` stops the Nth command sent to the
  background with `&`. What a section (`## `) started is stopped at its end, as the text
  tells the reader to.
- `# ...` lines right after a command are its output. A fenced block with no language (or
  `text`) right after a ```sh block is the output of that block's last command; anywhere
  else, one preceded by `<!-- output of: COMMAND -->` is the output of the command that
  starts with COMMAND. Any other plain block is an illustration and is not compared.
- A block preceded by `<!-- file: NAME -->` is written to NAME, as the text says to save
  it; one preceded by `<!-- not run: REASON -->` is not run, and REASON says which test
  runs it instead (the test fails on an empty reason).
- Masked in the comparison: the machine's host name (shown as `vm`), event ids (13 digits or more, and Redis's MS-SEQ ids) and
  dates and times. An id the text shows is mapped to the real one the first time it is
  seen, and must be the same real one every time after, and is replaced by it in later
  commands (the reader types the id they saw). A shown line ending in " ..." matches any
  line starting with what comes before. Runs of heartbeat lines (`:`) count as one.
  Output of a command still running must start with what the text shows.
- Ports: each port the documents name (8080, 8081, 8082, 9000, 6379) is replaced by a free
  one, in commands and in shown output alike; `./sse-server` without `--listen` gets the
  one that stands for 8080 (a wrapper adds it first, so a `--listen` in the text wins), as
  does `redis-server` for 6379. Paths under /tmp/ go to the scratch directory's own tmp/.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import BINARY, free_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DOCUMENTS = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
PORTS = ("8080", "8081", "8082", "9000", "6379")
QUIET = 1.5  # seconds without output after which a running command is a "second terminal"
STREAMING = 4  # seconds after its first output that a command still printing is "running"
LONGEST = 180  # seconds a command that prints nothing may take (a compiler)
ID = re.compile(r"\b\d{13,}(?:-\d+)?\b")
MASKS = [
    (re.compile(r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT"),
     "<DATE>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), "<TIME>"),
]


BACKGROUND = re.compile(r"(?s)(.*[^&])&\s*(#[^'\"]*)?")  # "cmd &", maybe "# a comment"


def background(cmd):
    return BACKGROUND.fullmatch(cmd.strip()) is not None


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
        return True
    except OSError:
        return False


class Block:
    def __init__(self, lang, lines, note, after_sh, heading):
        self.lang, self.lines, self.note, self.heading = lang, lines, note, heading
        self.after_sh = after_sh  # right after a ```sh block, nothing between


def blocks(path):
    """The fenced blocks of a markdown file, with the HTML comment right before each."""
    out, note, lang, body, heading, prev_sh, gap = [], None, None, None, "", False, True
    for line in open(path, encoding="utf-8").read().split("\n"):
        if body is not None:
            if line.startswith("```"):
                out.append(Block(lang, body, note, prev_sh and not gap, heading))
                prev_sh, gap, note, body = lang == "sh", False, None, None
            else:
                body.append(line)
            continue
        m = re.match(r"```(\w*)\s*$", line)
        if m:
            lang, body = m.group(1), []
            continue
        if line.startswith("## "):
            heading, prev_sh = line, False
        c = re.match(r"<!-- (.*) -->\s*$", line)
        if c:
            note = c.group(1)
        elif line.strip():
            note, gap = None, True
    return out


def commands(lines):
    """(command, shown output lines) for each command of an sh block."""
    out, cur = [], None
    joined = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1] + "\n" + line
        else:
            joined.append(line)
    for line in joined:
        if line.startswith("#"):
            if cur is not None:
                cur[1].append(line[2:] if line.startswith("# ") else "")
            continue
        if not line.strip():
            continue
        cur = (line, [])
        out.append(cur)
    return out


def normalise(lines):
    out = []
    for line in lines:
        for rx, mask in MASKS:
            line = rx.sub(mask, line)
        if line == ":" and out and out[-1] == ":":
            continue
        out.append(line)
    return out


class Session:
    """One document read by one reader, in a scratch copy of the project."""

    def __init__(self, tmp):
        self.dir = str(tmp / "project")
        shutil.copytree(ROOT, self.dir, ignore=shutil.ignore_patterns(
            ".git", "build", "node_modules", "sse-server*", "__pycache__", "*.o"))
        os.makedirs(os.path.join(self.dir, "tmp"))
        self.cwd = self.oldpwd = self.dir
        self.ports = {p: str(free_port()) for p in PORTS}
        self.ids = {}  # id in the text -> id really seen
        self.jobs = []  # [(command as written, Popen, output path)]
        self.numbered = {}  # bash's job number -> job, for the commands sent off with &
        self.n = 0
        bindir = os.path.join(self.dir, ".bin")
        os.makedirs(bindir)
        with open(os.path.join(self.dir, "sse-server"), "w") as f:
            f.write('#!/bin/sh\nexec %s --listen 127.0.0.1:%s "$@"\n' % (BINARY, self.ports["8080"]))
        redis = shutil.which("redis-server") or "redis-server"
        with open(os.path.join(bindir, "redis-server"), "w") as f:
            f.write('#!/bin/sh\nexec %s --port %s --save "" "$@"\n' % (redis, self.ports["6379"]))
        for p in (os.path.join(self.dir, "sse-server"), os.path.join(bindir, "redis-server")):
            os.chmod(p, 0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
        self.env["PATH"] = bindir + ":" + self.env["PATH"]
        # curl draws no progress meter on a terminal; here its output is a file, so say so
        self.env["CURL_HOME"] = self.dir
        with open(os.path.join(self.dir, ".curlrc"), "w") as f:
            f.write("no-progress-meter\n")

    def text(self, s):
        """The text as the reader types it here: ports, scratch paths, real ids."""
        for old, new in self.ports.items():
            s = re.sub(r"(?<=[: ])%s\b" % old, new, s)
        s = s.replace("/tmp/", self.dir + "/tmp/")
        return ID.sub(lambda m: self.ids.get(m.group(0), m.group(0)), s)

    def start(self, cmd):
        self.n += 1
        out = os.path.join(self.dir, ".out%d" % self.n)
        cwd_file = out + ".cwd"
        cmd = self.text(cmd)
        if background(cmd):  # our own background: this bash lives as long as the job
            cmd = BACKGROUND.fullmatch(cmd.strip()).group(1)
        script = "%s\n__rc=$?\npwd > %s\nexit $__rc\n" % (cmd, cwd_file)
        env = dict(self.env, OLDPWD=self.oldpwd)  # (for a `cd -`)
        with open(out, "wb") as f, open(out + ".err", "wb") as err:
            p = subprocess.Popen(["bash", "-c", script], cwd=self.cwd, stdout=f, stderr=err,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        return p, out, cwd_file

    def run(self, cmd):
        """Runs one command; returns (its output so far, still running)."""
        m = re.fullmatch(r"kill((?: %\d+)+)\s*(#.*)?", cmd.strip())
        if m:
            for n in re.findall(r"%(\d+)", m.group(1)):
                self.stop(self.numbered.pop(int(n)))
            return [], False
        p, out, cwd_file = self.start(cmd)
        self.jobs.append((cmd, p, out))  # stopped with the section, and what it left behind
        if background(cmd):  # bash numbers it one above the highest job still running
            self.numbered = {n: j for n, j in self.numbered.items() if j[1].poll() is None}
            self.numbered[max(self.numbered, default=0) + 1] = self.jobs[-1]
            self.wait_listening(cmd, p, out)
        else:
            self.settle(p, out, LONGEST)
        if p.poll() is not None and os.path.exists(cwd_file):
            cwd = open(cwd_file).read().strip() or self.cwd
            if cwd != self.cwd:
                self.oldpwd, self.cwd = self.cwd, cwd
        assert p.poll() in (None, 0), "%r failed (exit %d): %s" % (
            cmd, p.returncode, open(out + ".err", errors="replace").read())
        return self.output(out), p.poll() is None

    def wait_listening(self, cmd, p, out, timeout=15):
        """A command sent to the background: until it said something, and every port the
        command names (or that a server it starts takes by default) takes connections, as a
        reader would see before typing on (a server: "listening on")."""
        ports = [new for old, new in self.ports.items() if re.search(r"[: ]%s\b" % old, cmd)]
        if re.search(r"(^|[|;&]\s*)\./sse-server\b", cmd) and "--listen" not in cmd:
            ports.append(self.ports["8080"])
        if cmd.startswith("redis-server"):
            ports.append(self.ports["6379"])
        deadline = time.monotonic() + timeout
        while p.poll() is None and time.monotonic() < deadline:
            if self.said(out) and all(accepts(port) for port in ports):
                return
            time.sleep(0.05)

    def settle(self, p, out, longest):
        """Waits until p ends, or printed something and then went quiet for QUIET s (or
        goes on printing: a stream of one event a second) for STREAMING s."""
        deadline, size, since = time.monotonic() + longest, 0, time.monotonic()
        first = None
        while p.poll() is None and time.monotonic() < deadline:
            now = self.said(out)
            if now != size:
                size, since = now, time.monotonic()
                first = first or since
            elif size > 0 and time.monotonic() - since >= QUIET:
                return
            if first and time.monotonic() - first >= STREAMING:
                return
            time.sleep(0.1)

    def said(self, out):
        """Bytes a command wrote so far, on its output and its error output."""
        return os.path.getsize(out) + os.path.getsize(out + ".err")

    def output(self, out):
        """What a command printed on its standard output (what the text shows)."""
        data = open(out, "rb").read().decode("utf-8", "replace")
        lines = [line[:-1] if line.endswith("\r") else line for line in data.split("\n")]
        return lines[:-1] if lines and lines[-1] == "" else lines

    def job_output(self, prefix):
        for cmd, p, out in reversed(self.jobs):
            if cmd.startswith(prefix):
                self.settle(p, out, QUIET + 1)
                return self.output(out), p.poll() is None
        raise AssertionError("no command starting with %r ran before its output" % prefix)

    def stop(self, job):
        """Stops a command and whatever it started (its own process group), as Ctrl-C or
        kill would, then makes sure."""
        p = job[1]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=10)
                time.sleep(0.2)  # (what it left behind gets the signal too, and exits)
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self):
        for job in self.jobs:
            self.stop(job)
        self.jobs, self.numbered = [], {}

    def compare(self, where, shown, actual, running):
        """The shown lines against the real ones: masked, ids mapped, prefix if running."""
        want = normalise([self.text_ports(s) for s in shown])
        host = socket.gethostname()  # the transcripts were taken on a machine called vm
        got = normalise([re.sub(r"\b%s\b" % re.escape(host), "vm", a) for a in actual])
        if want and want[-1] == "...":  # "and more"
            want = want[:-1]
            running = True
        if running:
            got = got[:len(want)]
        ok = len(want) == len(got)
        for w, g in zip(want, got):
            if not ok:
                break
            ok = self.line_matches(w, g)
        assert ok, "%s: shown\n%s\nbut it printed\n%s" % (where, "\n".join(shown),
                                                          "\n".join(actual))

    def text_ports(self, s):
        for old, new in self.ports.items():
            s = re.sub(r"(?<=[: ])%s\b" % old, new, s)
        return s

    def line_matches(self, want, got):
        if want.endswith(" ..."):
            want, got = want[:-4], got[:len(want) - 4]
        wi, gi = ID.split(want), ID.split(got)
        if len(wi) != len(gi) or wi != gi:
            return False
        for text_id, real in zip(ID.findall(want), ID.findall(got)):
            if self.ids.setdefault(text_id, real) != real:
                return False
        return True


def read_document(session, name):
    """Runs one document; returns the reasons given for blocks not run."""
    skipped, last_cmd, heading = [], None, None
    for i, b in enumerate(blocks(os.path.join(ROOT, name))):
        where = "%s, block %d (%s)" % (name, i + 1, b.heading)
        if b.heading != heading:
            session.stop_all()
            heading = b.heading
        note = b.note or ""
        if note.startswith("not run:"):
            assert note[len("not run:"):].strip(), where + ": not run, but no reason given"
            skipped.append((where, note))
            continue
        if note.startswith("file:"):
            with open(os.path.join(session.cwd, note[5:].strip()), "w") as f:
                f.write("\n".join(b.lines) + "\n")
            continue
        if b.lang == "sh":
            for cmd, shown in commands(b.lines):
                actual, running = session.run(cmd)
                if shown:
                    session.compare("%s: %s" % (where, cmd), shown, actual, running)
                last_cmd = cmd
        elif b.lang in ("", "text"):
            if note.startswith("output of:"):
                actual, running = session.job_output(note[len("output of:"):].strip())
            elif b.after_sh and last_cmd:
                actual, running = session.job_output(last_cmd)
            else:
                continue  # an illustration
            session.compare(where, b.lines, actual, running)
    session.stop_all()
    return skipped


PARTS = {"docs/proxy.md": ("proxy", "relay"), "docs/scaling.md": ("redis",),
         "docs/auth.md": ("auth",)}  # what they need


@pytest.mark.parametrize("name", [
    pytest.param(d, marks=[getattr(pytest.mark, m) for m in PARTS.get(d, ())]) for d in DOCUMENTS])
def test_document_runs_as_written(name, tmp_path):
    session = Session(tmp_path)
    try:
        skipped = read_document(session, name)
    finally:
        session.stop_all()
    for where, why in skipped:
        print("%s: %s" % (where, why))


def test_readme_examples_not_run_are_run_elsewhere():
    """README's examples that need a part are marked not run there (README itself runs in the
    core build too) and name the document that runs them: each such block must be in that
    document, as written, so what the reader copies from README is what the test ran."""
    readme = blocks(os.path.join(ROOT, "README.md"))
    checked = 0
    for b in readme:
        m = re.match(r"not run: (docs/[\w.-]+\.md) runs these commands as written", b.note or "")
        if not m:
            continue
        there = ["\n".join(o.lines) for o in blocks(os.path.join(ROOT, m.group(1)))
                 if o.lang == b.lang and (o.note or "") == ""]
        assert any("\n".join(b.lines) in t for t in there), (
            "README.md's block under %s is not in %s as written" % (b.heading, m.group(1)))
        checked += 1
    assert checked >= 1
    # A file README has the reader save (mint.py) is the same file wherever else it is saved.
    files = {b.note: b.lines for b in readme if (b.note or "").startswith("file:")}
    for name in DOCUMENTS[1:]:
        for b in blocks(os.path.join(ROOT, name)):
            if b.note in files:
                assert b.lines == files[b.note], "%s: %s differs from README.md's" % (name, b.note)
