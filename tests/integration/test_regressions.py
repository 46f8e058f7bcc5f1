"""Regression tests for defects found in review, each named after its bug."""
import json
import os
import signal
import socket
import struct
import subprocess
import time
import unittest

from rmtest import HOST, ID_RE, RINGMTA, Daemon, Raw


def txn(sender, rcpt, body):
    return (b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (sender, rcpt)) + body + b".\r\n"


class RxBuffer(unittest.TestCase):
    """rx was reset to 0 while a recv was pending: old bytes were parsed again."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon().start()

    @classmethod
    def tearDownClass(cls):
        assert cls.d.stop() == 0, cls.d.diag()
        cls.d.cleanup()

    def raw(self):
        r = Raw(self.d.port)
        self.addCleanup(r.close)
        r.reply()
        r.send(b"EHLO c.example\r\n")
        r.reply()
        return r

    def test_commands_pipelined_after_end_of_data_are_answered(self):
        r = self.raw()
        r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        self.assertEqual([c for c, _ in r.replies(3)], [250, 250, 354])
        r.send(b"Subject: x\r\n\r\nbody\r\n.\r\nNOOP\r\n")
        self.assertEqual([c for c, _ in r.replies(2)], [250, 250])
        r.send(b"QUIT\r\n")
        self.assertEqual(r.reply()[0], 221)

    def test_520_pipelined_recipients_then_data(self):
        r = self.raw()
        r.send(b"MAIL FROM:<a@example.org>\r\n"
               + b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(520)) + b"DATA\r\n")
        replies = r.replies(522)
        self.assertTrue(all(c == 250 for c, _ in replies[:521]))
        self.assertEqual(replies[521][0], 354)

    def test_stale_body_bytes_are_never_executed_as_commands(self):
        r = self.raw()
        r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        r.replies(3)
        r.send(b"MAIL FROM:<x@evil.example>\r\nSubject: first\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(r.reply()[0], 250)
        time.sleep(0.05)  # the next bytes arrive in a later recv
        r.send(b"MAIL FROM:<alic@b.example>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        self.assertEqual([c for c, _ in r.replies(3)], [250, 250, 354])
        r.send(b"Subject: second\r\n\r\nbody\r\n.\r\n")
        code, text = r.reply()
        qid = ID_RE.search(text).group(1)
        self.assertIn("sender: alic@b.example", self.d.queue("show", qid).stdout.decode())

    def test_half_close_after_quit_still_gets_the_replies(self):
        r = self.raw()
        r.send(txn(b"a@example.org", b"b@example.net", b"Subject: hc\r\n\r\nx\r\n") + b"QUIT\r\n")
        r.s.shutdown(socket.SHUT_WR)
        codes = [c for c, _ in r.replies(5)]
        self.assertEqual(codes, [250, 250, 354, 250, 221])
        self.assertTrue(r.closed())


class DrainWhileClosing(unittest.TestCase):
    """SIGTERM while half-closed sessions were closing: the drain queued a 421
    and sent it on a slot whose close was already submitted, so the close
    completed with an operation still in flight (assertion, exit -6)."""

    def test_sigterm_during_half_closes_exits_cleanly(self):
        for _ in range(5):
            d = Daemon()
            self.addCleanup(d.cleanup)
            d.start()
            socks = []
            for _ in range(60):
                r = Raw(d.port)
                r.reply()
                socks.append(r)
            for r in socks:
                r.s.shutdown(socket.SHUT_WR)  # EOF: the server closes these
            d.signal(signal.SIGTERM)
            self.assertEqual(d.wait(30), 0, d.diag())
            for r in socks:
                r.close()


class Refusals(unittest.TestCase):
    """A linked close was cancelled when the 421 send failed: the fd leaked."""

    def test_refused_connections_that_reset_leak_no_fd(self):
        d = Daemon(server="max_sessions = 1", workers=1)
        self.addCleanup(d.cleanup)
        d.start()
        held = Raw(d.port)
        self.addCleanup(held.close)
        held.reply()
        fds = lambda: len(os.listdir("/proc/%d/fd" % d.proc.pid))
        before = fds()
        for _ in range(200):
            s = socket.create_connection((HOST, d.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST: the 421 send fails
        time.sleep(0.5)
        self.assertLessEqual(fds(), before + 2)
        self.assertEqual(d.stop(), 0)


class DeliveryLog(unittest.TestCase):
    def test_lines_survive_two_workers_writing_to_a_plain_file(self):
        """io_uring writes at the file offset raced without O_APPEND."""
        d = Daemon(server="", workers=2)
        self.addCleanup(d.cleanup)
        with open(d.conf) as f:
            conf = f.read().replace("delivery_log = " + d.delivery_log, "delivery_log = stdout")
        with open(d.conf, "w") as f:
            f.write(conf)
        out = os.path.join(d.tmp, "stdout.log")
        with open(out, "w") as o, open(d.diag_log, "w") as e:  # "w": no O_APPEND from us
            p = subprocess.Popen([RINGMTA, "-c", d.conf], stdout=o, stderr=e)
        try:
            for _ in range(100):
                if " ready " in d.diag():
                    break
                time.sleep(0.05)
            socks = [Raw(d.port) for _ in range(8)]
            for r in socks:
                r.reply()
                r.send(b"EHLO x\r\n")
                r.reply()
            n = 0
            for i in range(50):
                for r in socks:
                    body = b"Subject: l\r\n\r\nx\r\n"
                    r.send(txn(b"a@example.org", b"b@example.net", body))
            for r in socks:  # MAIL, RCPT, 354 and the final reply per message
                n += sum(1 for _, t in r.replies(200) if "queued as" in t)
            self.assertEqual(n, 400)
            # 300 recipients: a line longer than PIPE_BUF would split on a pipe
            big = Raw(d.port)
            big.reply()
            big.send(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\n" + b"".join(
                b"RCPT TO:<long-recipient-name-%03d@example.net>\r\n" % i for i in range(300))
                + b"DATA\r\nSubject: big\r\n\r\nx\r\n.\r\n")
            self.assertEqual(big.replies(304)[-1][0], 250)
        finally:
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(30), 0)
        with open(out) as f:
            lines = f.read().splitlines()
        events = [json.loads(line) for line in lines]  # every line is whole JSON
        events = [e for e in events if e["event"] == "reception"]
        self.assertEqual(len(events), 401)
        self.assertTrue(all(len(line) <= 4096 for line in lines))
        self.assertTrue(any(e.get("rcpts_truncated") for e in events))


if __name__ == "__main__":
    unittest.main()
