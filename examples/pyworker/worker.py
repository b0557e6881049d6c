#!/usr/bin/env python3
"""A PowerHouse sticky worker in Python (3.9+, standard library only).

It implements the receiving side of docs/handoff.md: it inherits its
hand-off socket from systemd (LISTEN_FDS=1, descriptor 3), receives one
connection per datagram with socket.recv_fds, checks the header strictly,
and answers each HTTP request with one line, like examples/hello:

    instance=<group>@<n> pid=<pid> remote=<client ip:port>

where the client is the original one from the PROXY protocol header when the
dispatcher read one. Only the supervisor may hand off: the worker sets
SO_PASSCRED on the socket and serves datagrams whose sender uid
(SCM_CREDENTIALS) is $POWERHOUSE_SUPERVISOR_UID, or, when that is unset, its
own euid or root. Malformed and rejected datagrams are counted, their
descriptors closed, and never stop the loop. On SIGTERM it stops reading
without draining the socket: what is still queued stays for the next
instance.

It serves one connection at a time, to stay short; a real worker would hand
each connection to a thread or an event loop.
"""

import array
import ipaddress
import os
import select
import signal
import socket
import struct
import sys
import time

MAGIC = b"PHHO"
VERSION = 1
FLAG_PROXY = 0x01
FIXED_LEN = 9
MAX_HEADER = 300  # 9 + 2 * (16 + 2) + 255
MAX_FDS = 16  # room to see (and close) a few extra descriptors
ADDR_LEN = {0: 0, 4: 4, 6: 16}  # family code -> address bytes
SD_LISTEN_FDS_START = 3
UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
# The credentials come first in the control data, then the descriptors:
# room for both, or the kernel truncates the descriptors (MSG_CTRUNC) and
# the connection is lost.
ANC_SIZE = socket.CMSG_SPACE(UCRED.size) + socket.CMSG_SPACE(MAX_FDS * 4)
REJECT_LOG_EVERY = 10.0  # seconds: a stranger must not flood the log


class Malformed(Exception):
    """A datagram that is not a valid hand-off."""


class Rejected(Exception):
    """A datagram from a sender that is not the supervisor."""


def supervisor_uids():
    """The uids whose hand-offs are served."""
    v = os.environ.get("POWERHOUSE_SUPERVISOR_UID", "")
    if not v:
        return {os.geteuid(), 0}
    if not v.isdigit() or int(v) >= 0xFFFFFFFF:
        sys.exit(f"worker.py: POWERHOUSE_SUPERVISOR_UID={v!r}: want a numeric user id")
    return {int(v)}


def listen_fds():
    """Descriptors passed by systemd (sd_listen_fds), if they are ours."""
    pid, n = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS", "0")
    for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(k, None)
    if pid != str(os.getpid()):
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(n)))


def sd_notify(state):
    """Tell systemd our state; nothing outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall(state.encode())


def parse_addr(family, b, off):
    """One address/port field: (ip, port) or None, and the next offset."""
    if family not in ADDR_LEN:
        raise Malformed(f"unknown address family {family}")
    n = ADDR_LEN[family]
    if n == 0:
        return None, off
    if len(b) < off + n + 2:
        raise Malformed("address truncated")
    ip = ipaddress.ip_address(b[off:off + n])
    (port,) = struct.unpack(">H", b[off + n:off + n + 2])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # before the check: ::ffff:0.0.0.0 is unspecified too
    if ip.is_unspecified or port == 0:
        raise Malformed(f"unusable address {ip} port {port}")
    return (ip, port), off + n + 2


def parse_header(b):
    """Decode a version 1 header: (name, source, destination)."""
    if len(b) < FIXED_LEN:
        raise Malformed(f"header is {len(b)} bytes")
    if b[0:4] != MAGIC:
        raise Malformed(f"bad magic {b[0:4]!r}")
    version, flags, src_family, dst_family, name_len = b[4:9]
    if version != VERSION:
        raise Malformed(f"version {version}, want {VERSION}")
    if flags & ~FLAG_PROXY:
        raise Malformed(f"unknown flags {flags:#04x}")
    src, off = parse_addr(src_family, b, FIXED_LEN)
    dst, off = parse_addr(dst_family, b, off)
    name = b[off:]
    if len(name) != name_len or name_len == 0:
        raise Malformed(f"name length {name_len} but {len(name)} bytes follow")
    if any(c < 0x20 or c == 0x7F for c in name):
        raise Malformed("control character in listener name")
    try:
        name = name.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("listener name is not UTF-8") from None
    return name, src, dst


def receive(hsock, allowed):
    """Receive one hand-off: (connection socket, name, source).

    Raises Rejected or Malformed after closing every descriptor the
    datagram brought.
    """
    msg, anc, flags, _ = hsock.recvmsg(MAX_HEADER + 1, ANC_SIZE, socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    cred = None
    for level, typ, data in anc:
        if level != socket.SOL_SOCKET:
            continue
        if typ == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        elif typ == socket.SCM_CREDENTIALS and len(data) >= UCRED.size:
            cred = UCRED.unpack(data[:UCRED.size])
    fds = list(fds)
    try:
        if cred is None:
            raise Rejected("hand-off without credentials (SO_PASSCRED not set?)")
        pid, uid, _gid = cred
        if uid not in allowed:
            raise Rejected(f"hand-off from uid {uid} (pid {pid}), not the supervisor's")
        if flags & socket.MSG_CTRUNC:
            raise Malformed("control data truncated (too many descriptors)")
        if flags & socket.MSG_TRUNC:
            raise Malformed("payload longer than a header")
        if len(fds) != 1:
            raise Malformed(f"{len(fds)} descriptors, want 1")
        name, src, _dst = parse_header(msg)
        try:
            conn = socket.socket(fileno=fds[0])  # detects family and type
        except OSError as e:
            raise Malformed(f"descriptor is not a socket: {e}") from None
        fds = []  # conn owns the descriptor now
        try:
            if conn.type != socket.SOCK_STREAM:
                raise Malformed("descriptor is not a stream socket")
            conn.getpeername()  # raises if not connected
        except (Malformed, OSError) as e:
            conn.close()
            raise Malformed(str(e)) from None
        return conn, name, src
    except (Malformed, Rejected):
        for fd in fds:
            os.close(fd)
        raise


def format_addr(addr):
    ip, port = addr
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def peer(conn):
    """The connection's own peer, as host:port."""
    if conn.family == socket.AF_INET:
        host, port = conn.getpeername()
        return f"{host}:{port}"
    if conn.family == socket.AF_INET6:
        host, port = conn.getpeername()[:2]
        return f"[{host}]:{port}"
    return "@"


def serve(conn, line_prefix, remote):
    """Answer one HTTP/1.x request on conn, then close it."""
    # The descriptor's O_NONBLOCK flag is shared with the dispatcher's copy:
    # set the mode we want rather than assume one.
    conn.settimeout(10)
    with conn:
        req = b""
        while b"\r\n\r\n" not in req and len(req) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                return
            req += chunk
        method, _, rest = req.partition(b" ")
        path = rest.partition(b" ")[0]
        if method == b"GET" and path == b"/":
            status, body = "200 OK", f"{line_prefix}{remote}\n"
        else:
            status, body = "404 Not Found", "404 page not found\n"
        data = body.encode()
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
        )


def main():
    fds = listen_fds()
    if len(fds) != 1:
        sys.exit("worker.py: want exactly one hand-off socket from systemd (LISTEN_FDS=1)")
    hsock = socket.socket(fileno=fds[0])
    if hsock.family != socket.AF_UNIX or hsock.type != socket.SOCK_DGRAM:
        sys.exit("worker.py: descriptor 3 is not a unix datagram socket")
    # Non-blocking, polled together with a wake-up pipe for signals: the
    # loop reads a datagram only when it will serve it, and SIGTERM never
    # interrupts a connection in hand.
    hsock.setblocking(False)
    # The kernel attaches the sender's credentials to every datagram: only
    # the supervisor may hand off. The option is the socket's, shared with
    # systemd and the next instance, which want it too.
    hsock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    allowed = supervisor_uids()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))

    group = os.environ.get("POWERHOUSE_GROUP") or "dev"
    instance = os.environ.get("POWERHOUSE_INSTANCE") or "0"
    line_prefix = f"instance={group}@{instance} pid={os.getpid()} remote="

    malformed = rejected = 0
    reject_logged = None
    sd_notify("READY=1")
    while not stopping:
        readable, _, _ = select.select([hsock, wake_r], [], [])
        if stopping:
            break
        if wake_r in readable:
            os.read(wake_r, 512)  # another signal: nothing to do
        if hsock not in readable:
            continue
        try:
            conn, _name, src = receive(hsock, allowed)
        except BlockingIOError:
            continue
        except Rejected as e:
            rejected += 1
            now = time.monotonic()
            if reject_logged is None or now - reject_logged >= REJECT_LOG_EVERY:
                reject_logged = now
                print(f"worker.py: rejected {e} ({rejected} so far)", file=sys.stderr, flush=True)
            continue
        except Malformed as e:
            malformed += 1
            print(f"worker.py: dropped malformed hand-off ({malformed} so far): {e}", file=sys.stderr, flush=True)
            continue
        try:
            serve(conn, line_prefix, format_addr(src) if src else peer(conn))
        except OSError as e:
            print(f"worker.py: connection: {e}", file=sys.stderr, flush=True)
    sd_notify("STOPPING=1")
    hsock.close()  # without draining: queued connections stay for the next instance


if __name__ == "__main__":
    main()
