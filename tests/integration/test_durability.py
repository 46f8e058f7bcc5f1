"""Durability: every 250 is in the queue after SIGKILL; drain and restart."""
import re
import signal
import smtplib
import socket
import threading
import time
import unittest

from rmtest import HOST, ID_RE, Daemon, Raw, message


class CrashTest(unittest.TestCase):
    CONNS = 20
    PER_CONN = 100
    KILL_AFTER = 700  # acknowledged messages before SIGKILL: "in the middle"

    def test_sigkill_mid_load_loses_no_acknowledged_message(self):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.start()
        acked = {}  # id -> subject token
        lock = threading.Lock()
        enough = threading.Event()
        errors = []

        def client(c):
            try:
                s = smtplib.SMTP(HOST, d.port, timeout=30)
                s.ehlo("crash%d.example" % c)
                for i in range(self.PER_CONN):
                    token = "crash-%d-%d" % (c, i)
                    s.mail("s%d@example.org" % c)
                    s.rcpt("r%d-%d@example.net" % (c, i))
                    code, text = s.data(message(token, body=token + "\r\n"))
                    if code != 250:
                        errors.append((code, text))
                        return
                    with lock:
                        acked[ID_RE.search(text.decode()).group(1)] = token
                        if len(acked) >= self.KILL_AFTER:
                            enough.set()
            except (smtplib.SMTPException, OSError):
                pass  # the daemon was killed under us: expected

        threads = [threading.Thread(target=client, args=(c,)) for c in range(self.CONNS)]
        for t in threads:
            t.start()
        self.assertTrue(enough.wait(120), "load did not reach %d messages" % self.KILL_AFTER)
        d.kill()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        with lock:
            acked = dict(acked)
        self.assertGreaterEqual(len(acked), self.KILL_AFTER)
        self.assertLess(len(acked), self.CONNS * self.PER_CONN, "kill came too late to test")

        # The queue as found on disk after the crash, read by the queue tool.
        queued = d.queue_ids()
        missing = set(acked) - set(queued)
        self.assertEqual(missing, set(), "acknowledged but lost: %d" % len(missing))
        # Content check: each stored message carries its own token.
        sample = sorted(acked)[:: max(1, len(acked) // 40)]
        for qid in sample:
            body = d.queue("cat", qid).stdout
            self.assertIn(("Subject: %s\r\n" % acked[qid]).encode(), body)
            self.assertTrue(body.endswith(("%s\r\n" % acked[qid]).encode()), body[-80:])
        # Restart: recovery finds every message again, and takes new mail.
        d.start()
        m = re.findall(r" ready .* recovered=(\d+)", d.diag(d._diag_start))
        self.assertEqual(int(m[-1]), len(queued))
        with smtplib.SMTP(HOST, d.port, timeout=10) as s:
            refused = s.sendmail("a@example.org", ["b@example.net"], message("after-crash"))
        self.assertEqual(refused, {})
        self.assertEqual(d.stop(), 0)
        self.assertEqual(len(d.queue_ids()), len(queued) + 1)
        print("crash test: %d acknowledged before SIGKILL, %d in the queue after, 0 lost"
              % (len(acked), len(queued)))


class Shutdown(unittest.TestCase):
    def test_sigterm_lets_a_transaction_finish_then_exits_0(self):
        d = Daemon(server="shutdown_grace = 20s")
        self.addCleanup(d.cleanup)
        d.start()
        busy = Raw(d.port)
        idle = Raw(d.port)
        self.addCleanup(busy.close)
        self.addCleanup(idle.close)
        busy.reply()
        idle.reply()
        busy.send(b"EHLO b.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                  b"DATA\r\nSubject: in flight\r\n\r\n")
        self.assertEqual([c for c, _ in busy.replies(4)], [250, 250, 250, 354])
        d.signal(signal.SIGTERM)
        # The idle session is told at once; the busy one may finish its message.
        self.assertEqual(idle.reply()[1][:9], "421 4.3.2")
        time.sleep(0.3)
        # New connections are refused (or told 421), never served.
        try:
            with socket.create_connection((HOST, d.port), timeout=2) as c:
                data = c.recv(100)
            self.assertTrue(data == b"" or data.startswith(b"421"), data)
        except (ConnectionRefusedError, ConnectionResetError):
            pass
        busy.send(b"body\r\n.\r\n")
        code, text = busy.reply()
        self.assertEqual(code, 250, text)
        qid = ID_RE.search(text).group(1)
        self.assertEqual(busy.reply()[1][:9], "421 4.3.2")
        self.assertEqual(d.wait(30), 0, d.diag())
        self.assertIn(qid, d.queue_ids())
        self.assertIn("stats ", d.diag())

    def test_grace_period_ends_stuck_sessions(self):
        d = Daemon(server="shutdown_grace = 1s")
        self.addCleanup(d.cleanup)
        d.start()
        r = Raw(d.port)
        self.addCleanup(r.close)
        r.reply()
        r.send(b"EHLO b.example\r\nMAIL FROM:<a@example.org>\r\n")
        r.replies(2)
        t0 = time.time()
        d.signal(signal.SIGTERM)
        self.assertEqual(r.reply()[1][:9], "421 4.3.2")
        self.assertEqual(d.wait(30), 0)
        self.assertLess(time.time() - t0, 10)

    def test_second_signal_exits_at_once_and_keeps_committed_mail(self):
        d = Daemon(server="shutdown_grace = 60s")
        self.addCleanup(d.cleanup)
        d.start()
        with smtplib.SMTP(HOST, d.port, timeout=10) as s:
            s.ehlo("x.example")
            s.mail("a@example.org")
            s.rcpt("b@example.net")
            code, text = s.data(message("committed"))
            qid = ID_RE.search(text.decode()).group(1)
        r = Raw(d.port)  # a session mid-transaction keeps the drain waiting
        self.addCleanup(r.close)
        r.reply()
        r.send(b"EHLO b.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        r.replies(4)
        d.signal(signal.SIGTERM)
        time.sleep(0.3)
        self.assertIsNone(d.proc.poll())
        t0 = time.time()
        d.signal(signal.SIGTERM)
        self.assertNotEqual(d.wait(10), 0)
        self.assertLess(time.time() - t0, 5)
        self.assertIn(qid, d.queue_ids())

    def test_restart_recovers_queued_messages(self):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.start()
        with smtplib.SMTP(HOST, d.port, timeout=10) as s:
            for i in range(25):
                s.sendmail("a@example.org", ["b%d@example.net" % i], message("r%d" % i))
        self.assertEqual(d.stop(), 0)
        d.start()
        self.assertEqual(re.findall(r" ready .* recovered=(\d+)", d.diag(d._diag_start))[-1], "25")
        self.assertEqual(d.stop(), 0)


class QueueFull(unittest.TestCase):
    def test_full_map_gives_452_and_keeps_accepted_mail(self):
        d = Daemon(server="queue_map_size = 1M\nmax_message_size = 200k")
        self.addCleanup(d.cleanup)
        d.start()
        accepted, refusal = [], None
        with smtplib.SMTP(HOST, d.port, timeout=10) as s:
            s.ehlo("full.example")
            for i in range(40):  # 40 x 64 KiB cannot fit a 1 MiB map
                s.mail("a@example.org")
                s.rcpt("b@example.net")
                code, text = s.data(message("full-%d" % i, body="y" * 900 + "\r\n") * 1
                                    + (b"z" * 998 + b"\r\n") * 64)
                if code != 250:
                    refusal = (code, text.decode())
                    break
                accepted.append(ID_RE.search(text.decode()).group(1))
            self.assertIsNotNone(refusal)
            self.assertEqual(refusal[0], 452, refusal)
            self.assertTrue(refusal[1].startswith("4.3.1"), refusal)
            self.assertEqual(s.noop()[0], 250)  # the session goes on
        self.assertGreater(len(accepted), 0)
        self.assertEqual(d.stop(), 0)
        queued = d.queue_ids()
        self.assertEqual(set(accepted), set(queued))
        for qid in accepted:
            self.assertEqual(len(d.queue("cat", qid).stdout), int(queued[qid][2]))


if __name__ == "__main__":
    unittest.main()
