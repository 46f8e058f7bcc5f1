"""The SMTP server end to end: the real daemon on loopback, real clients."""
import concurrent.futures
import os
import smtplib
import socket
import subprocess
import time
import unittest

from rmtest import HOST, ID_RE, Daemon, Raw, message


class SessionTest(unittest.TestCase):
    SERVER = ""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(server=cls.SERVER).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        diag = cls.d.diag()
        cls.d.cleanup()
        assert rc == 0, f"exit {rc}\n{diag}"
        assert "ERROR" not in diag and "Sanitizer" not in diag, diag

    def raw(self):
        r = Raw(self.d.port)
        self.addCleanup(r.close)
        code, text = r.reply()
        self.assertEqual(code, 220, text)
        return r

    def ehlo(self, r):
        r.send(b"EHLO client.example\r\n")
        code, text = r.reply()
        self.assertEqual(code, 250, text)
        return text


class Basics(SessionTest):
    def test_swaks_message_is_queued(self):
        out = subprocess.run(
            ["swaks", "--server", f"{HOST}:{self.d.port}", "--from", "alice@example.org",
             "--to", "bob@example.net", "--header", "Subject: swaks test", "--body", "hi"],
            capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        ids = ID_RE.findall(out.stdout.decode())
        self.assertEqual(len(ids), 1, out.stdout)
        q = self.d.queue_ids()
        self.assertIn(ids[0], q)
        self.assertEqual(q[ids[0]][3], "<alice@example.org>")
        self.assertEqual(q[ids[0]][4], "<bob@example.net>")

    def test_smtplib_message_is_stored_with_received_header(self):
        with smtplib.SMTP(HOST, self.d.port, timeout=10) as s:
            code, text = s.ehlo("client.example")
            self.assertEqual(code, 250)
            for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                        "dsn", "chunking"):
                self.assertTrue(s.has_extn(ext), ext)
            self.assertEqual(s.mail("a@example.org")[0], 250)
            self.assertEqual(s.rcpt("b@example.net")[0], 250)
            # smtplib dot-stuffs: ".dot line" goes out as "..dot line" and must come back.
            code, text = s.data(message("stored", body=".dot line\r\nlast\r\n"))
            self.assertEqual(code, 250, text)
            qid = ID_RE.search(text.decode()).group(1)
        stored = self.d.queue("cat", qid).stdout
        self.assertTrue(stored.startswith(b"Received: from client.example (127.0.0.1)\r\n"), stored)
        self.assertIn(f"id {qid}".encode(), stored)
        self.assertTrue(stored.endswith(b"Subject: stored\r\nMessage-ID: <stored@test>\r\n\r\n"
                                        b".dot line\r\nlast\r\n"), stored)
        log = [e for e in self.d.receptions() if e["id"] == qid and e["event"] == "reception"]
        self.assertEqual(len(log), 1)
        self.assertEqual(log[0]["event"], "reception")
        self.assertEqual(log[0]["rcpts"], ["b@example.net"])
        self.assertEqual(log[0]["size"], len(stored))

    def test_100_concurrent_sessions(self):
        def one(i):
            with smtplib.SMTP(HOST, self.d.port, timeout=30) as s:
                s.ehlo("c%d.example" % i)
                s.mail("s%d@example.org" % i)
                s.rcpt("r%d@example.net" % i)
                code, text = s.data(message("concurrent-%d" % i))
                return code, ID_RE.search(text.decode()).group(1)
        with concurrent.futures.ThreadPoolExecutor(100) as ex:
            results = list(ex.map(one, range(100)))
        self.assertTrue(all(code == 250 for code, _ in results))
        ids = {qid for _, qid in results}
        self.assertEqual(len(ids), 100)
        self.assertTrue(ids <= set(self.d.queue_ids()))

    def test_pipelined_transaction_in_one_write(self):
        r = self.raw()
        r.send(b"EHLO pipe.example\r\nMAIL FROM:<p@example.org>\r\nRCPT TO:<x@example.net>\r\n"
               b"RCPT TO:<y@example.net>\r\nDATA\r\n" + message("pipelined") +
               b".\r\nNOOP\r\nQUIT\r\n")
        codes = [c for c, _ in r.replies(8)]
        self.assertEqual(codes, [250, 250, 250, 250, 354, 250, 250, 221])
        self.assertTrue(r.closed())

    def test_bdat_message_is_queued(self):
        r = self.raw()
        self.ehlo(r)
        body = message("bdat")
        r.send(b"MAIL FROM:<b@example.org>\r\nRCPT TO:<c@example.net>\r\n"
               + b"BDAT %d\r\n" % 10 + body[:10] + b"BDAT %d LAST\r\n" % (len(body) - 10)
               + body[10:])
        codes = [c for c, _ in r.replies(4)]
        self.assertEqual(codes, [250, 250, 250, 250])


class Malformed(SessionTest):
    SERVER = "max_recipients = 5\nmax_message_size = 20k\nmax_errors = 10"

    def test_over_long_command_line_gets_500_and_session_goes_on(self):
        r = self.raw()
        r.send(b"NOOP " + b"a" * 5000 + b"\r\nNOOP\r\n")
        self.assertEqual(r.reply()[1][:9], "500 5.5.2")
        self.assertEqual(r.reply()[0], 250)

    def test_nul_in_command_gets_500(self):
        r = self.raw()
        r.send(b"NO\x00OP\r\n")
        self.assertEqual(r.reply()[1][:9], "500 5.5.2")

    def test_commands_out_of_order_get_503(self):
        r = self.raw()
        r.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(r.reply()[1][:9], "503 5.5.1")
        self.ehlo(r)
        r.send(b"RCPT TO:<b@example.net>\r\nDATA\r\nMAIL FROM:<a@example.org>\r\n"
               b"MAIL FROM:<a@example.org>\r\nDATA\r\n")
        got = [t[:9] for _, t in r.replies(5)]
        self.assertEqual(got, ["503 5.5.1", "503 5.5.1", "250 2.1.0", "503 5.5.1", "503 5.5.1"])

    def test_bad_addresses(self):
        r = self.raw()
        self.ehlo(r)
        r.send(b"MAIL FROM:<a b@example.org>\r\nMAIL FROM:<@relay.example:a@example.org>\r\n"
               + "MAIL FROM:<jos\u00e9@example.org>\r\n".encode()
               + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<>\r\n")
        got = [t[:9] for _, t in r.replies(6)]
        self.assertEqual(got, ["501 5.1.7", "501 5.1.7", "553 5.6.7", "250 2.1.0", "501 5.1.3",
                               "501 5.1.3"])

    def test_smtputf8_address_is_accepted(self):
        r = self.raw()
        self.ehlo(r)
        r.send("MAIL FROM:<jos\u00e9@example.org> SMTPUTF8\r\nRCPT TO:<\u00fc@b\u00fccher.example>\r\n"
               .encode())
        self.assertEqual([c for c, _ in r.replies(2)], [250, 250])

    def test_bare_lf_in_data_is_refused_and_never_ends_the_message(self):
        r = self.raw()
        self.ehlo(r)
        before = set(self.d.queue_ids())
        # SMTP smuggling: <LF>.<CR><LF> then a second transaction inside the body.
        r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        self.assertEqual([c for c, _ in r.replies(3)], [250, 250, 354])
        r.send(b"Subject: smuggle\r\n\r\nhello\n.\r\nMAIL FROM:<evil@example.org>\r\n"
               b"RCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n")
        code, text = r.reply()
        # The first "." that ends DATA is the real CRLF.CRLF: one reply for it all.
        self.assertEqual(text[:9], "550 5.5.2", text)
        r.send(b"NOOP\r\n")
        self.assertEqual(r.reply()[0], 250)  # no reply was pending from smuggled commands
        self.assertEqual(set(self.d.queue_ids()), before)

    def test_bare_cr_in_data_is_refused(self):
        r = self.raw()
        self.ehlo(r)
        r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        r.replies(3)
        r.send(b"Subject: x\r\n\r\nab\rcd\r\n.\r\n")
        self.assertEqual(r.reply()[1][:9], "550 5.5.2")

    def test_nul_in_data_is_refused(self):
        r = self.raw()
        self.ehlo(r)
        r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        r.replies(3)
        r.send(b"Subject: x\r\n\r\nab\x00cd\r\n.\r\n")
        self.assertEqual(r.reply()[1][:9], "554 5.6.0")

    def test_8bit_data_without_8bitmime_is_accepted_and_flagged(self):
        with smtplib.SMTP(HOST, self.d.port, timeout=10) as s:
            s.ehlo("c.example")
            s.mail("a@example.org")
            s.rcpt("b@example.net")
            code, text = s.data("Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode())
            self.assertEqual(code, 250, text)
            qid = ID_RE.search(text.decode()).group(1)
        show = self.d.queue("show", qid).stdout.decode()
        self.assertIn(" 8bit", show)
        self.assertNotIn("8bitmime", show)

    def test_too_many_recipients_get_452(self):
        r = self.raw()
        self.ehlo(r)
        r.send(b"MAIL FROM:<a@example.org>\r\n" +
               b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(6)))
        got = [t[:9] for _, t in r.replies(7)]
        self.assertEqual(got, ["250 2.1.0"] + ["250 2.1.5"] * 5 + ["452 4.5.3"])

    def test_over_size_is_refused_at_mail_and_at_end_of_data(self):
        r = self.raw()
        self.ehlo(r)
        r.send(b"MAIL FROM:<a@example.org> SIZE=30000\r\n")
        self.assertEqual(r.reply()[1][:9], "552 5.3.4")
        r.send(b"MAIL FROM:<a@example.org> SIZE=1000\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        self.assertEqual([c for c, _ in r.replies(3)], [250, 250, 354])
        r.send(b"Subject: big\r\n\r\n" + (b"x" * 900 + b"\r\n") * 30 + b".\r\n")
        self.assertEqual(r.reply()[1][:9], "552 5.3.4")
        r.send(b"NOOP\r\n")
        self.assertEqual(r.reply()[0], 250)

    def test_too_many_errors_close_with_421(self):
        r = self.raw()
        # As Postfix's hard error limit: max_errors error replies, then 421.
        r.send(b"BOGUS\r\n" * 12)
        replies = r.replies(11)
        self.assertTrue(all(t.startswith("500 5.5.2") for _, t in replies[:10]))
        self.assertEqual(replies[10][1][:9], "421 4.7.0")
        self.assertTrue(r.closed())


class Relay(SessionTest):
    # The client (127.0.0.1) is not in trusted_networks: never an open relay.
    SERVER = "trusted_networks = 127.0.0.2/32"

    def test_untrusted_client_gets_554_at_rcpt(self):
        r = self.raw()
        self.ehlo(r)
        r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        got = [t[:9] for _, t in r.replies(3)]
        self.assertEqual(got, ["250 2.1.0", "554 5.7.1", "503 5.5.1"])


class Limits(SessionTest):
    SERVER = "idle_timeout = 1s\nmax_sessions_per_ip = 3"

    def test_idle_session_gets_421_and_is_closed(self):
        r = self.raw()
        t0 = time.time()
        code, text = r.reply()
        self.assertEqual(text[:9], "421 4.4.2")
        self.assertTrue(r.closed())
        self.assertLess(time.time() - t0, 5)

    def test_sessions_per_ip_limit(self):
        held = [self.raw() for _ in range(3)]
        r = Raw(self.d.port)
        self.addCleanup(r.close)
        self.assertEqual(r.reply()[1][:9], "421 4.7.0")
        self.assertTrue(r.closed())
        for h in held:
            h.close()


class Config(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.addCleanup(self.d.cleanup)

    def check(self, text):
        with open(self.d.conf, "w") as f:
            f.write(text)
        from rmtest import RINGMTA
        return subprocess.run([RINGMTA, "-c", self.d.conf, "--check"], capture_output=True)

    def test_valid_config_passes_check(self):
        r = self.check("[server]\nworkers = 2\n[listen a]\naddress = 127.0.0.1:2525\n")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_errors_name_file_line_and_problem(self):
        cases = [
            ("[server]\nworkers = 2\nworkerz = 3\n", ":3:", "unknown key"),
            ("[server]\n\nworkers = lots\n", ":3:", "workers"),
            ("[listen a]\naddress = 127.0.0.1\n", ":2:", "host:port"),
            ("[listen a]\naddress = 127.0.0.1:25\ntls = maybe\n", ":3:", "tls"),
            ("[server]\ntrusted_networks = 10.0.0.0/33\n", ":2:", "trusted_networks"),
            ("[server]\nidle_timeout = soon\n", ":2:", "idle_timeout"),
            ("[bogus]\nx = 1\n", ":2:", "unknown section"),
            ("[server\n", ":1:", ""),
        ]
        for text, line, what in cases:
            r = self.check(text)
            err = r.stderr.decode()
            self.assertNotEqual(r.returncode, 0, text)
            self.assertIn(self.d.conf + line, err, text)
            self.assertIn(what, err, text)

    def test_missing_file_is_an_error(self):
        from rmtest import RINGMTA
        r = subprocess.run([RINGMTA, "-c", "/nonexistent/ringmta.conf"], capture_output=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"/nonexistent/ringmta.conf", r.stderr)


@unittest.skipUnless(os.geteuid() == 0, "needs root for a private network namespace")
class BuiltInDefaults(unittest.TestCase):
    def test_no_config_listens_on_587_465_2525_and_queues(self):
        """The README's run command: no config file at all. Runs in a network
        namespace of its own so the real ports 587/465/2525 of the host are
        never touched."""
        from rmtest import RINGMTA
        import tempfile
        tmp = tempfile.mkdtemp(prefix="ringmta-defaults-")
        script = f"""
set -e
ip link set lo up
cd {tmp}
{RINGMTA} > out.log 2> err.log &
pid=$!
for i in $(seq 100); do grep -q ' ready ' err.log && break; sleep 0.05; done
for p in 587 465 2525; do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $p), 2).close()"
done
swaks --server 127.0.0.1:2525 --from a@example.org --to b@example.net > swaks.log 2>&1 </dev/null
kill -TERM $pid
wait $pid
{RINGMTA} queue count
"""
        r = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.decode().strip().splitlines()[-1], "1")
        self.assertTrue(os.path.exists(os.path.join(tmp, "var/queue/data.mdb")))
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    unittest.main()
