"""Delivery end to end: the real daemon, a real DNS server (unbound) and real
SMTP sinks on other loopback addresses."""
import glob
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import time
import unittest

from dnsfix import Unbound
from rmtest import HOST, ID_RE, Daemon, free_port, message

SINK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sink.py")


class Sink:
    """tests/integration/sink.py on addr:port, stopped by its PID."""

    def __init__(self, addr, port, *args):
        self.dir = tempfile.mkdtemp(prefix="ringmta-sink-")
        self.proc = subprocess.Popen([sys.executable, SINK, "--listen", f"{addr}:{port}",
                                      "--dir", self.dir, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        line = self.proc.stdout.readline()
        if b"listening" not in line:
            raise RuntimeError(f"sink {addr}:{port} did not start: {line!r}")

    def messages(self):
        out = []
        for meta in sorted(glob.glob(os.path.join(self.dir, "*.json")),
                           key=lambda p: int(os.path.basename(p).split(".")[0])):
            with open(meta) as f:
                m = json.load(f)
            with open(meta[:-5] + ".eml", "rb") as f:
                m["body"] = f.read()
            out.append(m)
        return out

    def wait(self, n, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            msgs = self.messages()
            if len(msgs) >= n:
                return msgs
            time.sleep(0.05)
        return self.messages()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stdout.close()


class DeliveryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port = free_port("127.0.0.2")  # one port for every sink address
        p = cls.port
        cls.dns = Unbound([
            "ok.test. 300 IN MX 10 mx.ok.test.", "mx.ok.test. 300 IN A 127.0.0.2",
            "temp.test. 300 IN MX 10 mx.temp.test.", "mx.temp.test. 300 IN A 127.0.0.3",
            "perm.test. 300 IN MX 10 mx.perm.test.", "mx.perm.test. 300 IN A 127.0.0.4",
            "sender.test. 300 IN MX 10 mx.sender.test.", "mx.sender.test. 300 IN A 127.0.0.5",
            # first MX down (nothing listens on 127.0.0.6), the second gets it
            "twomx.test. 300 IN MX 10 down.twomx.test.", "twomx.test. 300 IN MX 20 up.twomx.test.",
            "down.twomx.test. 300 IN A 127.0.0.6", "up.twomx.test. 300 IN A 127.0.0.7",
            "implicit.test. 300 IN A 127.0.0.2",
            # the first MX refuses at the greeting (554), the second takes it
            "greet.test. 300 IN MX 10 bad.greet.test.", "greet.test. 300 IN MX 20 up.twomx.test.",
            "bad.greet.test. 300 IN A 127.0.0.15",
            "noutf8.test. 300 IN MX 10 mx.noutf8.test.", "mx.noutf8.test. 300 IN A 127.0.0.10",
            "reuse.test. 300 IN MX 10 mx.reuse.test.", "mx.reuse.test. 300 IN A 127.0.0.11",
            # 40 MX records with long names: more than 1232 octets, so the UDP
            # answer is truncated and must be fetched again over TCP
            "big.test. 300 IN MX 5 mx.ok.test.",
        ] + ["big.test. 300 IN MX 50 filler-%02d-%s.big.test." % (i, "x" * 50) for i in range(40)] + [
            "null.test. 300 IN MX 0 .",
        ])
        cls.sinks = {
            "ok": Sink("127.0.0.2", p),
            "temp": Sink("127.0.0.3", p, "--tempfail", "1"),
            "perm": Sink("127.0.0.4", p, "--rcpt-fail", "nobody"),
            "sender": Sink("127.0.0.5", p),
            "up": Sink("127.0.0.7", p),
            "route": Sink("127.0.0.8", p),
            "noutf8": Sink("127.0.0.10", p, "--no-smtputf8"),
            "reuse": Sink("127.0.0.11", p),
            "badgreet": Sink("127.0.0.15", p, "--greeting-fail"),
        }
        cls.d = Daemon(server="", extra=f"""
[delivery]
port = {p}
retry = 1s 1s 2s
connection_idle = 1s



[dns]
resolvers = 127.0.0.1:{cls.dns.port}

[domain routed.example]
route = 127.0.0.8:{p}

""").start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        diag = cls.d.diag()
        cls.d.cleanup()
        for s in cls.sinks.values():
            s.stop()
        cls.dns.stop()
        assert rc == 0, diag

    def send(self, sender, rcpts, subject, body="Hello.\r\n"):
        with smtplib.SMTP(HOST, self.d.port, timeout=10) as s:
            s.ehlo("client.example")
            s.mail(sender)
            for r in rcpts:
                self.assertEqual(s.rcpt(r)[0], 250)
            code, text = s.data(message(subject, body=body, sender=sender, to=rcpts[0]))
            self.assertEqual(code, 250, text)
            return ID_RE.search(text.decode()).group(1)

    def events(self, qid):
        return [e for e in self.d.receptions() if e.get("id") == qid]

    def wait_event(self, qid, event, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ev = [e for e in self.events(qid) if e["event"] == event]
            if ev:
                return ev
            time.sleep(0.05)
        self.fail(f"no {event} for {qid}: {self.events(qid)}\n{self.d.diag()}")

    def by_subject(self, sink, subject, n=1):
        deadline = time.time() + 60
        while time.time() < deadline:
            got = [m for m in self.sinks[sink].messages()
                   if b"Subject: " + subject.encode() + b"\r\n" in m["body"]]
            if len(got) >= n:
                return got
            time.sleep(0.05)
        self.fail(f"{subject} did not reach {sink}")

    def test_mx_delivery_is_byte_for_byte(self):
        body = ".leading dot\r\n" + "x" * 900 + "\r\nlast line\r\n"
        qid = self.send("a@example.org", ["b@ok.test", "c@ok.test"], "mx-byte", body)
        m = self.by_subject("ok", "mx-byte")[0]
        self.assertEqual(m["mail_from"], "a@example.org")
        self.assertEqual(sorted(m["rcpt_to"]), ["b@ok.test", "c@ok.test"])  # one transaction
        self.assertTrue(m["body"].startswith(b"Received: from client.example"))
        self.assertTrue(m["body"].endswith(message("mx-byte", body=body, sender="a@example.org",
                                                   to="b@ok.test")))
        ev = self.wait_event(qid, "delivery")
        self.assertEqual(ev[0]["mx"], "mx.ok.test")
        deadline = time.time() + 5
        while qid in self.d.queue_ids() and time.time() < deadline:
            time.sleep(0.05)
        self.assertNotIn(qid, self.d.queue_ids())  # deleted once every recipient is final

    def test_truncated_mx_answer_is_fetched_over_tcp(self):
        qid = self.send("a@example.org", ["x@big.test"], "over-tcp")
        self.by_subject("ok", "over-tcp")
        self.assertEqual(self.wait_event(qid, "delivery")[0]["mx"], "mx.ok.test")

    def test_route_override_skips_mx(self):
        self.send("a@example.org", ["x@routed.example"], "routed")
        self.by_subject("route", "routed")

    def test_implicit_mx_uses_the_domain_address(self):
        self.send("a@example.org", ["x@implicit.test"], "implicit")
        self.by_subject("ok", "implicit")

    def test_tempfail_then_delivered_on_retry(self):
        qid = self.send("a@example.org", ["x@temp.test"], "tempfail")
        self.wait_event(qid, "deferral")
        self.by_subject("temp", "tempfail")
        ev = self.wait_event(qid, "delivery")
        self.assertEqual(ev[0]["attempt"], 2)

    def test_first_mx_down_second_gets_it(self):
        qid = self.send("a@example.org", ["x@twomx.test"], "twomx")
        self.by_subject("up", "twomx")
        self.assertEqual(self.wait_event(qid, "delivery")[0]["mx"], "up.twomx.test")

    def test_greeting_refused_by_the_first_mx_goes_to_the_second(self):
        """The job went back to the queue and a new connection started at the
        first MX again: a tight reconnect loop that never reached the second."""
        qid = self.send("a@example.org", ["x@greet.test"], "greet-fail")
        self.by_subject("up", "greet-fail")
        self.assertEqual(self.wait_event(qid, "delivery")[0]["mx"], "up.twomx.test")

    def test_5xx_bounces_with_a_dsn_to_the_sender(self):
        qid = self.send("s@sender.test", ["nobody@perm.test"], "permfail")
        ev = self.wait_event(qid, "bounce")
        self.assertEqual(ev[0]["status"], "5.1.1")
        dsn = self.by_subject("sender", "Undelivered Mail Returned to Sender")
        m = [x for x in dsn if b"nobody@perm.test" in x["body"]][0]
        self.assertEqual(m["mail_from"], "")  # null sender: no bounce loops
        self.assertEqual(m["rcpt_to"], ["s@sender.test"])
        self.assertIn(b"multipart/report", m["body"])
        self.assertIn(b"Status: 5.1.1", m["body"])

    def test_null_mx_bounces_5_1_10(self):
        qid = self.send("s@sender.test", ["x@null.test"], "nullmx")
        self.assertEqual(self.wait_event(qid, "bounce")[0]["status"], "5.1.10")

    def test_nxdomain_bounces_5_1_2(self):
        qid = self.send("s@sender.test", ["x@nonexistent.test"], "nxdomain")
        self.assertEqual(self.wait_event(qid, "bounce")[0]["status"], "5.1.2")



    def test_connection_is_reused_for_the_next_message(self):
        # One at a time, each after the previous arrived: a connection is
        # idle (connection_idle = 1s) when the next message comes. (Messages
        # that overlap rightly open more connections.) Two workers keep a
        # pool each, so at least 3 messages share one worker's connection.
        for i in range(6):
            self.send("a@example.org", ["x%d@reuse.test" % i], "reuse-%d" % i)
            self.sinks["reuse"].wait(i + 1)
        got = self.sinks["reuse"].wait(6)
        self.assertEqual(len(got), 6)
        conns = {m["conn"] for m in got}
        self.assertLess(len(conns), 6, got)  # RSET between, same connection
        self.assertGreater(max(m["tx"] for m in got), 1)

    def test_smtputf8_message_to_a_server_without_it_bounces_5_6_7(self):
        with smtplib.SMTP(HOST, self.d.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("s@sender.test", ["SMTPUTF8"])[0], 250)
            self.assertEqual(s.rcpt("j\u00f6rg@noutf8.test")[0], 250)
            code, text = s.data("Subject: utf8\r\n\r\nhi\r\n".encode())
            qid = ID_RE.search(text.decode()).group(1)
        self.assertEqual(self.wait_event(qid, "bounce")[0]["status"], "5.6.7")
        self.assertEqual(self.sinks["noutf8"].messages(), [])

    def test_bounce_of_a_bounce_is_dropped_and_logged(self):
        qid = self.send("", ["nobody@perm.test"], "double-bounce")
        self.wait_event(qid, "bounce")
        deadline = time.time() + 5
        while "bounce of a bounce dropped" not in self.d.diag() and time.time() < deadline:
            time.sleep(0.05)
        self.assertIn("bounce of a bounce dropped", self.d.diag())


class SlotLimit(unittest.TestCase):
    """A refused connect left its slot waiting for the linked timeout's
    completion forever: slots leaked until nothing was tried any more."""

    def test_refused_connections_defer_every_message_and_free_their_slots(self):
        port = free_port("127.0.0.9")
        route = Sink("127.0.0.8", port)
        self.addCleanup(route.stop)
        d = Daemon(extra=f"""
[delivery]
port = {port}
retry = 1m
max_outbound = 8
[domain refused.example]
route = 127.0.0.9:{port}
[domain routed.example]
route = 127.0.0.8:{port}
""")
        self.addCleanup(d.cleanup)
        d.start()
        ids = []
        with smtplib.SMTP(HOST, d.port, timeout=10) as s:
            for i in range(30):  # more than max_outbound (8)
                s.sendmail("a@example.org", ["x%d@refused.example" % i], message("refused-%d" % i))
        deadline = time.time() + 60
        while time.time() < deadline:
            n = len([e for e in d.receptions() if e["event"] == "deferral"])
            if n >= 30:
                break
            time.sleep(0.1)
        deferrals = [e for e in d.receptions() if e["event"] == "deferral"]
        self.assertEqual(len(deferrals), 30)
        self.assertTrue(all("127.0.0.9" in e["reply"] for e in deferrals))
        with smtplib.SMTP(HOST, d.port, timeout=10) as s:  # slots are free for others
            s.sendmail("a@example.org", ["y@routed.example"], message("after-refused"))
        self.assertEqual(len(route.wait(1)), 1)
        self.assertEqual(d.stop(), 0)


class Expiry(unittest.TestCase):
    def test_message_that_keeps_failing_expires_with_a_dsn(self):
        port = free_port("127.0.0.12")
        dns = Unbound(["late.test. 300 IN MX 10 mx.late.test.", "mx.late.test. 300 IN A 127.0.0.12",
                       "sender.test. 300 IN MX 10 mx.sender.test.",
                       "mx.sender.test. 300 IN A 127.0.0.13"])
        self.addCleanup(dns.stop)
        late = Sink("127.0.0.12", port, "--tempfail", "1000000")
        self.addCleanup(late.stop)
        sender = Sink("127.0.0.13", port)
        self.addCleanup(sender.stop)
        d = Daemon(extra=f"""
[delivery]
port = {port}
retry = 1s
max_queue_lifetime = 3s
[dns]
resolvers = 127.0.0.1:{dns.port}
""")
        self.addCleanup(d.cleanup)
        d.start()
        with smtplib.SMTP(HOST, d.port, timeout=10) as s:
            s.sendmail("s@sender.test", ["x@late.test"], message("expire"))
        deadline = time.time() + 20
        while time.time() < deadline and not [e for e in d.receptions() if e["event"] == "expiry"]:
            time.sleep(0.1)
        ev = [e for e in d.receptions() if e["event"] == "expiry"]
        self.assertEqual(len(ev), 1, d.receptions())
        self.assertEqual(ev[0]["status"][:1], "4")
        self.assertGreaterEqual(ev[0]["attempt"], 2)
        dsn = sender.wait(1)
        self.assertEqual(len(dsn), 1)
        self.assertIn(b"Status: 4.4.7", dsn[0]["body"])
        self.assertEqual(d.stop(), 0)
        self.assertEqual(d.queue_ids(), {})


if __name__ == "__main__":
    unittest.main()
