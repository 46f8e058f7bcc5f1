#!/usr/bin/env python3
"""A test SMTP sink: a real SMTP server on a loopback address.

    sink.py --listen 127.0.0.2:2525 --dir OUT [--tempfail N] [--rcpt-fail PATTERN]
            [--no-pipelining] [--no-smtputf8] [--no-8bitmime] [--size N]
            [--data-fail CODE] [--greeting-fail]

Every accepted message is written to OUT/<n>.eml with a JSON envelope beside
it (OUT/<n>.json: mail_from, rcpt_to, params, the client's EHLO, the peer
address, the connection number and the transaction number on it). --tempfail N
answers the first N transactions with 451 4.3.0 at MAIL; --rcpt-fail answers
550 5.1.1 to recipients containing PATTERN. It prints "listening" when ready
and stops on SIGTERM. Loopback addresses only.
"""
import argparse
import asyncio
import ipaddress
import json
import os
import signal
import sys


class State:
    def __init__(self, args):
        self.args = args
        self.count = 0
        self.transactions = 0
        self.conns = 0


async def handle(reader, writer, st):
    a = st.args
    st.conns += 1
    conn = st.conns
    peer = writer.get_extra_info("peername")
    out = []

    def reply(line):
        out.append(line.encode() + b"\r\n")

    async def flush():
        if out:
            writer.write(b"".join(out))
            out.clear()
            await writer.drain()

    if a.greeting_fail:
        reply("554 5.3.2 sink: not accepting mail")
        await flush()
        writer.close()
        return
    reply("220 sink.test ESMTP test sink")
    await flush()
    ehlo = None
    mail = None
    rcpts = []
    params = {}
    ntx = 0
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if not line.endswith(b"\r\n"):
                reply("500 5.5.2 sink: line must end in CRLF")
                await flush()
                continue
            cmd = line[:-2].decode("utf-8", "replace")
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                ehlo = cmd[5:]
                caps = ["sink.test"]
                if not a.no_pipelining:
                    caps.append("PIPELINING")
                caps.append("SIZE %d" % a.size)
                if not a.no_8bitmime:
                    caps.append("8BITMIME")
                if not a.no_smtputf8:
                    caps.append("SMTPUTF8")
                caps += ["ENHANCEDSTATUSCODES", "DSN"]
                for i, c in enumerate(caps):
                    reply(("250-" if i < len(caps) - 1 else "250 ") + c)
            elif verb == "HELO":
                ehlo = cmd[5:]
                reply("250 sink.test")
            elif verb == "MAIL":
                st.transactions += 1
                if st.transactions <= a.tempfail:
                    reply("451 4.3.0 sink: try again later")
                else:
                    mail = cmd[10:].split(">", 1)[0].lstrip("<")
                    params = {"mail": cmd.split(">", 1)[1].strip()}
                    rcpts = []
                    reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                addr = cmd[8:].split(">", 1)[0].lstrip("<")
                if mail is None:
                    reply("503 5.5.1 sink: need MAIL")
                elif a.rcpt_fail and a.rcpt_fail in addr:
                    reply("550 5.1.1 sink: no such user <%s>" % addr)
                else:
                    rcpts.append(addr)
                    params.setdefault("rcpt", []).append(cmd.split(">", 1)[1].strip())
                    reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if mail is None or not rcpts:
                    reply("503 5.5.1 sink: need RCPT")
                    await flush()
                    continue
                reply("354 go ahead")
                await flush()
                body = bytearray()
                while True:
                    l = await reader.readline()
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    body += l
                if a.data_fail:
                    reply("%d %s sink: refused at end of data" %
                          (a.data_fail, "5.7.1" if a.data_fail >= 500 else "4.7.1"))
                else:
                    st.count += 1
                    ntx += 1
                    n = st.count
                    with open(os.path.join(a.dir, "%d.eml" % n), "wb") as f:
                        f.write(body)
                    meta = {"mail_from": mail, "rcpt_to": rcpts, "params": params,
                            "ehlo": ehlo, "peer": list(peer), "conn": conn, "tx": ntx}
                    tmp = os.path.join(a.dir, "%d.json.tmp" % n)
                    with open(tmp, "w") as f:
                        json.dump(meta, f)
                    os.rename(tmp, os.path.join(a.dir, "%d.json" % n))
                    reply("250 2.0.0 Ok: sink %d" % n)
                mail = None
                rcpts = []
            elif verb == "RSET":
                mail = None
                rcpts = []
                reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                reply("221 2.0.0 Bye")
                await flush()
                break
            else:
                reply("502 5.5.1 sink: not implemented")
            # Pipelining: answer a batch once the client has nothing more queued.
            if not reader._buffer:  # noqa: the stream's own buffer: nothing pipelined
                await flush()
        await flush()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--tempfail", type=int, default=0)
    p.add_argument("--rcpt-fail", default="")
    p.add_argument("--data-fail", type=int, default=0)
    p.add_argument("--greeting-fail", action="store_true")
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--no-smtputf8", action="store_true")
    p.add_argument("--no-8bitmime", action="store_true")
    p.add_argument("--size", type=int, default=100 * 1024 * 1024)
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        sys.exit("sink: loopback addresses only")
    os.makedirs(a.dir, exist_ok=True)
    st = State(a)
    server = await asyncio.start_server(lambda r, w: handle(r, w, st), host.strip("[]"),
                                        int(port), reuse_address=True, limit=1 << 20)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("listening", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
