#!/usr/bin/env python3
"""Stopgap SMTP load generator until ringmta-bench (issue 6) exists.

Opens C connections per process (P processes), each sending whole
transactions (MAIL, RCPT, DATA, content, '.') in one write per message and
reading the 4 replies: PIPELINING at its most aggressive. Bounded by a total
message count and a time limit; loopback targets only. Prints messages/s and
the accept latency (end of DATA written -> 250 read) percentiles.

    bench/quickload.py --port 2525 --procs 2 --conns 25 --count 100000 --size 4096
"""
import argparse
import ipaddress
import multiprocessing
import selectors
import socket
import sys
import time


def worker(args, n_msgs, q):
    body = b"Subject: load\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(1, args.size // 78)
    txn = (b"MAIL FROM:<load@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n"
           + body + b".\r\n")
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(args.conns):
        s = socket.create_connection((args.host, args.port))
        s.sendall(b"EHLO load.example\r\n")
        buf = b""
        while buf.count(b"\r\n250 ") < 1:
            buf += s.recv(65536)
        s.setblocking(False)
        c = {"s": s, "buf": b"", "left": 0, "t0": 0.0, "replies": 0}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    sent = done = errors = 0
    lat = []
    deadline = time.time() + args.seconds
    t_start = time.time()

    def send(c):
        nonlocal sent
        c["s"].sendall(txn)
        c["t0"] = time.perf_counter()
        c["replies"] = 0
        sent += 1

    for c in conns:
        if sent < n_msgs:
            send(c)
    while done < sent and time.time() < deadline:
        for key, _ in sel.select(1.0):
            c = key.data
            data = c["s"].recv(65536)
            if not data:
                errors += 1
                sel.unregister(c["s"])
                continue
            c["buf"] += data
            while b"\r\n" in c["buf"]:
                line, c["buf"] = c["buf"].split(b"\r\n", 1)
                if line[3:4] == b"-":
                    continue
                c["replies"] += 1
                if c["replies"] == 4:  # MAIL, RCPT, 354, final
                    if not line.startswith(b"250"):
                        errors += 1
                    lat.append(time.perf_counter() - c["t0"])
                    done += 1
                    if sent < n_msgs and time.time() < deadline:
                        send(c)
    q.put((done, errors, time.time() - t_start, lat))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--conns", type=int, default=25)
    p.add_argument("--count", type=int, default=50000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--size", type=int, default=4096)
    args = p.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("quickload: loopback targets only")
    q = multiprocessing.Queue()
    per = args.count // args.procs
    ps = [multiprocessing.Process(target=worker, args=(args, per, q)) for _ in range(args.procs)]
    for x in ps:
        x.start()
    res = [q.get() for _ in ps]
    for x in ps:
        x.join()
    done = sum(r[0] for r in res)
    errors = sum(r[1] for r in res)
    secs = max(r[2] for r in res)
    lat = sorted(l for r in res for l in r[3])
    pct = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000 if lat else 0
    print(f"messages={done} errors={errors} seconds={secs:.2f} rate={done / secs:.0f}/s "
          f"latency_ms p50={pct(.5):.2f} p90={pct(.9):.2f} p99={pct(.99):.2f} max={lat[-1]*1000 if lat else 0:.2f}")


if __name__ == "__main__":
    main()
