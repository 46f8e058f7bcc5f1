"""A real DNS server for tests: unbound on a loopback port, serving the
test's records as local-data and refusing everything else (nothing leaves
the machine). Started by the test, stopped by its PID."""
import os
import subprocess
import tempfile
import time

from rmtest import free_port


class Unbound:
    def __init__(self, records, zones=("test.",)):
        self.tmp = tempfile.mkdtemp(prefix="ringmta-unbound-")
        self.port = free_port()
        conf = os.path.join(self.tmp, "unbound.conf")
        lines = [
            "server:",
            f"    interface: 127.0.0.1@{self.port}",
            f"    port: {self.port}",
            "    do-daemonize: no",
            '    username: ""',
            '    chroot: ""',
            f'    directory: "{self.tmp}"',
            f'    pidfile: "{self.tmp}/unbound.pid"',
            "    use-syslog: no",
            '    logfile: ""',
            "    verbosity: 0",
            "    do-not-query-localhost: no",
            "    access-control: 127.0.0.0/8 allow",
            '    module-config: "iterator"',
            '    local-zone: "." refuse',
        ]
        for z in zones:
            lines.append(f'    local-zone: "{z}" static')
        for r in records:
            lines.append(f'    local-data: "{r}"')
        lines += ["remote-control:", "    control-enable: no"]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = open(os.path.join(self.tmp, "unbound.log"), "w")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", conf], stdout=self.log,
                                     stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:  # ready when it answers
            r = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(self.port),
                                "@127.0.0.1", "SOA", "test."], capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("unbound did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
