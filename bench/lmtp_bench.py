"""LMTP throughput and latency: ticketmail (SQLite, whole pipeline) against a null LMTP server.

Run: `make bench` (or `.venv/bin/python bench/lmtp_bench.py [--count N]`). Both servers get the same
load, in the same run, one after the other: a ~4 KB multipart message and a ~100 KB message with an
attachment, over 1 and 20 concurrent LMTP sessions. Every message is made unique by a header so that
ticketmail's deduplication does not short-cut anything; each one becomes a ticket of a known customer.
Only 127.0.0.1 is ever connected to; every loop is bounded by the message count.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
RCPT = "support@xyzhosting.com"
SENDER = "alice@customer.example"


def message_4k() -> bytes:
    text = "Hello support,\n\n" + textwrap.fill("our invoice INV-2026-0042 shows the wrong VAT number. " * 18, 72)
    html = "<html><body><p>\n" + text.replace("\n", "<br>\n") + "\n</p></body></html>"
    return _msg("=?utf-8?q?Rechnung_f=C3=BCr_November?=", "multipart/alternative; boundary=b1", [
        "--b1", "Content-Type: text/plain; charset=utf-8", "", text,
        "--b1", "Content-Type: text/html; charset=utf-8", "", html, "--b1--"])


def message_100k() -> bytes:
    data = base64.encodebytes(os.urandom(72_000)).decode()
    return _msg("Logs attached", "multipart/mixed; boundary=b2", [
        "--b2", "Content-Type: text/plain; charset=utf-8", "", "Please find the server logs attached.",
        "--b2", "Content-Type: application/gzip; name=logs.tar.gz", "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="logs.tar.gz"', "", data, "--b2--"])


def _msg(subject: str, content_type: str, body: list[str]) -> bytes:
    received = [f"Received: from mx{i}.customer.example (mx{i}.customer.example [192.0.2.{i}]) by "
                f"mx.xyzhosting.com with ESMTPS id 4Xyz{i}; Sat, 28 Nov 2026 10:00:0{i} +0000" for i in range(3)]
    headers = received + [f"From: Alice Customer <{SENDER}>", f"To: Support <{RCPT}>", f"Subject: {subject}",
                          "Date: Sat, 28 Nov 2026 10:00:00 +0000", "MIME-Version: 1.0",
                          f"Content-Type: {content_type}"]
    return ("\r\n".join(headers + [""] + body) + "\r\n").replace("\r\n", "\n").replace("\n", "\r\n").encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, proc: subprocess.Popen) -> None:
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"server exited with {proc.returncode}")
            time.sleep(0.05)
    sys.exit("server did not start")


async def session(port: int, body: bytes, todo: list[int], latencies: list[float], seq: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    await reply()
    writer.write(b"LHLO bench\r\n")
    await reply()
    while todo:
        n = todo.pop()
        start = time.perf_counter()
        unique = f"Message-ID: <bench-{seq}-{n}@customer.example>\r\n".encode()
        writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode())
        for _ in range(3):
            line = await reply()
            assert line[:1] in b"23", line
        writer.write(unique + body + b".\r\n")
        line = await reply()
        if not line.startswith(b"250"):
            raise SystemExit(f"delivery failed: {line!r}")
        latencies.append(time.perf_counter() - start)
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


async def load(port: int, body: bytes, count: int, sessions: int, seq: str) -> tuple[float, float, float]:
    todo = list(range(count))
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(session(port, body, todo, latencies, seq) for _ in range(sessions)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return count / elapsed, q[49] * 1000, q[98] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000, help="messages per 4 KB run (100 KB runs: half)")
    ap.add_argument("--sizes", default="4,100", help="which messages: 4 (KB), 100 (KB) or both")
    ap.add_argument("--sessions", default="1,20", help="concurrent LMTP sessions, comma-separated")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ticketmail-bench-"))
    env = dict(os.environ, TICKETMAIL_DATABASE_URL=f"sqlite+aiosqlite:///{work}/bench.db",
               TICKETMAIL_WEB_PORT=str(free_port()))
    tm = [PYTHON, "-m", "ticketmail.cli"]
    for cmd in (["db", "upgrade"], ["department", "add", "Support", "--address", RCPT],
                ["customer", "add", SENDER]):
        subprocess.run(tm + cmd, env=env, check=True, stdout=subprocess.DEVNULL)

    null_port, tm_port = free_port(), free_port()
    env["TICKETMAIL_LMTP_PORT"] = str(tm_port)
    null = subprocess.Popen([PYTHON, str(HERE / "null_lmtp.py"), str(null_port)])
    server = subprocess.Popen(tm + ["serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(null_port, null)
        wait_for(tm_port, server)
        print(f"{'message':>8} {'sessions':>8} {'server':>10} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}")
        loads = {"4": ("4 KB", message_4k(), args.count), "100": ("100 KB", message_100k(), args.count // 2)}
        for label, body, count in (loads[size] for size in args.sizes.split(",")):
            for sessions in map(int, args.sessions.split(",")):
                n = count if sessions > 1 else max(count // 5, 100)
                base = asyncio.run(load(null_port, body, n, sessions, f"null{label}{sessions}"))
                ours = asyncio.run(load(tm_port, body, n, sessions, f"tm{label}{sessions}"))
                for name, (rate, p50, p99) in (("null", base), ("ticketmail", ours)):
                    ratio = f"{ours[0] / base[0]:.2f}" if name == "ticketmail" else ""
                    print(f"{label:>8} {sessions:>8} {name:>10} {rate:>8.0f} {p50:>8.1f} {p99:>8.1f} {ratio:>6}",
                          flush=True)
    finally:
        for proc in (server, null):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
