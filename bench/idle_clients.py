#!/usr/bin/env python3
"""Open many idle PostgreSQL client connections and report a process's memory while they are open.

Standard library only. Each connection sends a protocol-3.0 StartupMessage, expects the server
(a pooler) to accept it without a password (a tenantgate user with auth_type = "trust"), reads
until ReadyForQuery ('Z') and then just holds the socket open. With all of them open, the VmRSS
of --pid (the pooler) is read from /proc/<pid>/status; then every connection is closed with a
Terminate message.

    idle_clients.py --port 6432 --user idle --database bench --count 10000 --pid 1234

Prints one JSON object on stdout (progress goes to stderr). Exit status 0 when every connection
reached ReadyForQuery, 1 otherwise (the JSON still says how many did).
"""

import argparse
import json
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import time


def proc_status(pid):
    """VmRSS / VmHWM (kB) and thread count of a process, or None if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
                elif key == "Threads":
                    out[key] = int(value)
    except OSError:
        return None
    return {"rss_kb": out.get("VmRSS"), "hwm_kb": out.get("VmHWM"), "threads": out.get("Threads")}


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def probe(cmd):
    try:
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
        return (p.stdout.strip() or p.stderr.strip())[:500]
    except subprocess.TimeoutExpired:
        return "probe timed out"


def startup_message(user, database):
    params = b""
    for k, v in (("user", user), ("database", database), ("application_name", "idle_clients")):
        params += k.encode() + b"\0" + v.encode() + b"\0"
    params += b"\0"
    body = struct.pack("!i", 196608) + params
    return struct.pack("!i", len(body) + 4) + body


def error_text(payload):
    """The severity/code/message fields of an ErrorResponse."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return "{} {}: {}".format(fields.get("S", "ERROR"), fields.get("C", "?"), fields.get("M", "?"))


class Conn:
    __slots__ = ("sock", "state", "buf", "out", "error")

    def __init__(self, sock, startup):
        self.sock = sock
        self.state = "connecting"
        self.buf = b""
        self.out = startup
        self.error = None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="idle")
    ap.add_argument("--database", default="bench")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--pid", type=int, help="process whose VmRSS is measured (the pooler)")
    ap.add_argument("--parallel", type=int, default=256, help="handshakes in flight at once")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to open them all")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before measuring")
    ap.add_argument("--probe-cmd", help="shell command run while the connections are open; "
                    "its output is included in the JSON (e.g. count server connections)")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < want:
        print(f"idle_clients: RLIMIT_NOFILE is {soft}, fewer than {want}; "
              f"only about {soft - 256} connections possible", file=sys.stderr)

    result = {"target": f"{args.host}:{args.port}", "user": args.user, "requested": args.count}
    if args.pid:
        result["before"] = proc_status(args.pid)
        result["before"]["fds"] = open_fds(args.pid)
    if args.probe_cmd:
        result["probe_before"] = probe(args.probe_cmd)

    startup = startup_message(args.user, args.database)
    sel = selectors.DefaultSelector()
    ready, failed, errors = [], 0, {}
    pending = 0
    started = 0
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    last_report = t0

    def fail(conn, why):
        nonlocal failed, pending
        failed += 1
        pending -= 1
        errors[why] = errors.get(why, 0) + 1
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    while (started < args.count or pending) and time.monotonic() < deadline:
        while started < args.count and pending < args.parallel:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Conn(s, startup)
            started += 1
            pending += 1
            rc = s.connect_ex((args.host, args.port))
            if rc not in (0, 115):  # 115 = EINPROGRESS
                fail(c, f"connect: {os.strerror(rc)}")
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
        for key, events in sel.select(timeout=0.5):
            c = key.data
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(c, f"connect: {os.strerror(err)}")
                    continue
                c.state = "startup"
            if c.state == "startup" and events & selectors.EVENT_WRITE:
                try:
                    n = c.sock.send(c.out)
                except OSError as e:
                    fail(c, f"send: {e.strerror}")
                    continue
                c.out = c.out[n:]
                if not c.out:
                    c.state = "reading"
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            if c.state == "reading" and events & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(65536)
                except OSError as e:
                    fail(c, f"recv: {e.strerror}")
                    continue
                if not data:
                    fail(c, "closed by server before ReadyForQuery")
                    continue
                c.buf += data
                while len(c.buf) >= 5:
                    typ = c.buf[0:1]
                    (length,) = struct.unpack("!i", c.buf[1:5])
                    if len(c.buf) < 1 + length:
                        break
                    payload = c.buf[5:1 + length]
                    c.buf = c.buf[1 + length:]
                    if typ == b"E":
                        fail(c, error_text(payload))
                        break
                    if typ == b"R":
                        (code,) = struct.unpack("!i", payload[:4])
                        if code != 0:
                            fail(c, f"server asked for authentication (code {code}); "
                                    f"the user must have auth_type = \"trust\"")
                            break
                    if typ == b"Z":
                        c.state = "ready"
                        sel.unregister(c.sock)
                        pending -= 1
                        ready.append(c)
                        break
        now = time.monotonic()
        if now - last_report > 2:
            print(f"idle_clients: {len(ready)} ready, {failed} failed, {pending} in flight",
                  file=sys.stderr)
            last_report = now

    open_secs = time.monotonic() - t0
    if pending:
        errors["timed out before ReadyForQuery"] = pending
        failed += pending
    result.update(ready=len(ready), failed=failed, errors=errors,
                  open_seconds=round(open_secs, 3))
    print(f"idle_clients: {len(ready)} connections ready in {open_secs:.1f}s, {failed} failed; "
          f"holding them {args.settle:.0f}s", file=sys.stderr)

    time.sleep(args.settle)
    if args.pid:
        during = proc_status(args.pid)
        if during is not None:
            during["fds"] = open_fds(args.pid)
        result["during"] = during
        b = result.get("before") or {}
        if during and b.get("rss_kb") is not None and during.get("rss_kb") is not None and ready:
            result["rss_delta_kb"] = during["rss_kb"] - b["rss_kb"]
            result["bytes_per_connection"] = round(
                (during["rss_kb"] - b["rss_kb"]) * 1024 / len(ready))
    if args.probe_cmd:
        result["probe"] = probe(args.probe_cmd)

    terminate = b"X\0\0\0\4"
    for c in ready:
        try:
            c.sock.send(terminate)
        except OSError:
            pass
        c.sock.close()
    if args.pid:
        time.sleep(args.settle)
        after = proc_status(args.pid)
        if after is not None:
            after["fds"] = open_fds(args.pid)
        result["after_close"] = after

    print(json.dumps(result))
    return 0 if len(ready) == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
