"""Shared fixtures for ringmta integration tests.

Each test starts the real daemon on loopback with a temporary config
(Daemon), drives it with real clients (smtplib, swaks, raw sockets) and stops
it by its PID. Nothing here ever targets a non-loopback address.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

RINGMTA = os.environ.get("RINGMTA_BIN", "")
HOST = "127.0.0.1"
READY_RE = re.compile(r"ringmta \S+ ready pid=(\d+)")
ID_RE = re.compile(r"queued as ([0-9a-v]{26})")


def free_port(host=HOST):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Daemon:
    """One ringmta process with its own config, queue and logs in a temp dir."""

    def __init__(self, server="", workers=2, tmp=None, port=None, extra=""):
        self.tmp = tmp or tempfile.mkdtemp(prefix="ringmta-test-")
        self.port = port or free_port()
        self.conf = os.path.join(self.tmp, "ringmta.conf")
        self.queue_dir = os.path.join(self.tmp, "queue")
        self.delivery_log = os.path.join(self.tmp, "delivery.log")
        self.diag_log = os.path.join(self.tmp, "diag.log")
        with open(self.conf, "w") as f:
            f.write(f"""[server]
hostname = mx.test.example
workers = {workers}
queue_dir = {self.queue_dir}
queue_map_size = 1G
delivery_log = {self.delivery_log}
{server}

[listen test]
address = {HOST}:{self.port}
tls = none
auth = none
{extra}
""")
            if "[dns]" not in extra:
                # Never the machine's resolv.conf: tests only ever talk to
                # loopback. Nothing answers on this port, so lookups time out
                # and mail stays queued (deferred), as reception tests expect.
                f.write(f"\n[dns]\nresolvers = 127.0.0.1:{free_port()}\n")
        self.proc = None

    def start(self, timeout=15):
        """Starts the daemon; returns once this run logged its ready line.
        The diagnostics file is appended to across restarts."""
        self._err = open(self.diag_log, "a")
        self._diag_start = self._err.tell()
        self.proc = subprocess.Popen([RINGMTA, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=self._err, stderr=self._err)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ringmta exited with {self.proc.returncode}:\n{self.diag()}")
            if READY_RE.search(self.diag(self._diag_start)):
                return self
            time.sleep(0.02)
        raise RuntimeError("ringmta did not get ready:\n" + self.diag())

    def diag(self, since=0):
        """The diagnostics (stderr) from byte offset `since`."""
        with open(self.diag_log, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait(self, timeout=60):
        try:
            return self.proc.wait(timeout)
        finally:
            self._err.close()

    def stop(self, timeout=60):
        """SIGTERM by PID; returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self):
        self.signal(signal.SIGKILL)
        return self.wait(30)

    def queue(self, *args, check=True):
        r = subprocess.run([RINGMTA, "-c", self.conf, "queue", *args], capture_output=True,
                           timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"queue {args}: {r.returncode} {r.stderr!r}")
        return r

    def queue_ids(self):
        out = self.queue("list").stdout.decode()
        return {line.split("\t")[0]: line.split("\t") for line in out.splitlines() if line}

    def receptions(self):
        if not os.path.exists(self.delivery_log):
            return []
        with open(self.delivery_log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if not os.environ.get("RINGMTA_KEEP_TMP"):  # set it to read a failed run's logs
            shutil.rmtree(self.tmp, ignore_errors=True)


class Raw:
    """A raw SMTP client: send exact bytes, read whole replies."""

    def __init__(self, port, host=HOST, timeout=10):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def reply(self):
        """Reads one whole (possibly multi-line) reply; returns (code, text)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise EOFError(f"connection closed; got {lines!r} {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def closed(self, timeout=5):
        """True when the server closes the connection (after any pending bytes)."""
        self.s.settimeout(timeout)
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def message(subject, body="Hello.\r\n", sender="sender@example.org", to="rcpt@example.net"):
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@test>\r\n\r\n{body}").encode()
