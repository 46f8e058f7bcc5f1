"""The ringmta command's helpers: passwd."""
import subprocess
import unittest
import warnings

from rmtest import RINGMTA

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # an independent check of the SHA-512-crypt hash


class Passwd(unittest.TestCase):
    def test_passwd_writes_a_sha512_crypt_line_that_verifies(self):
        r = subprocess.run([RINGMTA, "passwd", "alice"], input=b"s3cret pass\n",
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        line = r.stdout.decode()
        self.assertTrue(line.endswith("\n"))
        user, hashed = line.rstrip("\n").split(":", 1)
        self.assertEqual(user, "alice")
        self.assertTrue(hashed.startswith("$6$"))
        self.assertEqual(crypt.crypt("s3cret pass", hashed), hashed)
        self.assertNotEqual(crypt.crypt("s3cret pasS", hashed), hashed)

    def test_salts_differ(self):
        a = subprocess.run([RINGMTA, "passwd", "bob"], input=b"pw\n", capture_output=True)
        b = subprocess.run([RINGMTA, "passwd", "bob"], input=b"pw\n", capture_output=True)
        self.assertNotEqual(a.stdout, b.stdout)

    def test_bad_input_is_refused(self):
        for args, stdin in ((["passwd", "alice"], b""), (["passwd", "bad:user"], b"pw\n"),
                            (["passwd"], b"pw\n")):
            r = subprocess.run([RINGMTA, *args], input=stdin, capture_output=True, timeout=30)
            self.assertNotEqual(r.returncode, 0, args)
            self.assertIn(b"ringmta", r.stderr)


if __name__ == "__main__":
    unittest.main()
