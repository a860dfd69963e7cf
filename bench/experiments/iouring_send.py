"""io_uring against a send() loop for fan-out: one small write to each of N sockets per turn.

Standalone experiment for issue 13 (item 2); it does not use fastws. The sender is the C program
``iouring_send.c`` next to this file, compiled here with gcc into a temporary directory (raw
syscalls and ``<linux/io_uring.h>`` from linux-libc-dev; no liburing needed). The reader is this
script run with ``--reader``: one process that drains all N sockets with epoll, counts the bytes of
every socket and checks every byte's content (a periodic 102-byte frame pattern), and answers the
sender's "EXPECT <bytes per socket>" after each run with "OK" only when every socket has exactly that.

    python bench/experiments/iouring_send.py                       # N=1000, 5 reps, all modes
    python bench/experiments/iouring_send.py --reps 2 --turns1 50  # quick

The sender runs pinned to --sender-cpu, the reader to --reader-cpu. For each repetition, each burst
(1 and 16 frames per socket per turn; 16 are written as one coalesced buffer, as fastws does at
bursts) and each mode (order rotated per repetition), the sender measures its own
getrusage(RUSAGE_SELF) user and sys time, and the CPU time of ksoftirqd on its core (io_uring batches
leave part of the loopback softirq work to it). The table gives medians over repetitions, per
delivery (one frame to one socket); "total" is sender + ksoftirqd, compared with the send() loop of
the same burst as the ratio of the medians and the median of the per-repetition ratios. Results and
conclusion: bench/README.md, "io_uring experiment".
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRAME = 102
MODES = "send,uring,uring_dt,uring_dtfix,sqpoll"


def frame_pattern(frames: int) -> bytes:
    """The sender's periodic byte stream: FIN+text, length 100, a 100-byte JSON payload."""
    payload = b'{"pad":"' + b"x" * 90 + b'"}'
    assert len(payload) == 100
    return (b"\x81\x64" + payload) * frames


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- reader process
def reader(n: int, cpu: int | None, timeout: float, chunk: int) -> int:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    raise_nofile()
    data_l = socket.create_server(("127.0.0.1", 0), backlog=max(n, 128))
    ctrl_l = socket.create_server(("127.0.0.1", 0))
    print(f"PORTS {data_l.getsockname()[1]} {ctrl_l.getsockname()[1]}", flush=True)
    ctrl_l.settimeout(timeout)
    ctrl, _ = ctrl_l.accept()
    data_l.settimeout(timeout)
    socks: dict[int, socket.socket] = {}
    counts: dict[int, int] = {}
    for _ in range(n):
        s, _ = data_l.accept()
        s.setblocking(False)
        socks[s.fileno()] = s
        counts[s.fileno()] = 0
    pattern = frame_pattern(chunk // FRAME + 2)
    ep = select.epoll()
    for fd in socks:
        ep.register(fd, select.EPOLLIN)
    ctrl_fd = ctrl.fileno()
    ep.register(ctrl_fd, select.EPOLLIN)
    ctrl_buf = b""
    expect: int | None = None
    last_expect = 0
    total = 0
    last_progress = time.monotonic()
    while True:
        events = ep.poll(1.0)
        now = time.monotonic()
        if events:
            last_progress = now
        elif now - last_progress > timeout:
            ctrl.sendall(f"FAIL no progress for {timeout} s (total {total}, expected {expect})\n".encode())
            return 1
        for fd, _ in events:
            if fd == ctrl_fd:
                got = ctrl.recv(4096)
                if not got:
                    print("reader: control socket closed early", file=sys.stderr)
                    return 1
                ctrl_buf += got
                while b"\n" in ctrl_buf:
                    line, ctrl_buf = ctrl_buf.split(b"\n", 1)
                    if line == b"END":
                        print(f"READER total={total} per_socket={last_expect} sockets={n} ok", flush=True)
                        return 0
                    expect = int(line.split()[1])
                continue
            data = socks[fd].recv(chunk)
            if not data:
                ctrl.sendall(b"FAIL a data socket closed\n")
                return 1
            off = counts[fd] % FRAME
            if data != pattern[off : off + len(data)]:
                ctrl.sendall(f"FAIL wrong bytes on fd {fd} at offset {counts[fd]}\n".encode())
                return 1
            counts[fd] += len(data)
            total += len(data)
        if expect is not None and total >= expect * n:
            bad = [c for c in counts.values() if c != expect]
            if bad:
                ctrl.sendall(f"FAIL {len(bad)} sockets off (e.g. {bad[0]} != {expect})\n".encode())
                return 1
            ctrl.sendall(b"OK\n")
            last_expect, expect = expect, None


# ---------------------------------------------------------------- orchestrator
def compile_sender(tmp: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("no C compiler: apt-get install -y gcc")
    out = tmp / "iouring_send"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(out), str(HERE / "iouring_send.c")], check=True)
    return out


def parse_run(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reader", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--turns1", type=int, default=300, help="turns per run at 1 frame per turn")
    ap.add_argument("--turns16", type=int, default=100, help="turns per run at 16 frames per turn")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--modes", default=MODES, help=f"comma separated, from {MODES}")
    ap.add_argument("--sender-cpu", type=int, default=0)
    ap.add_argument("--reader-cpu", type=int, default=1)
    ap.add_argument(
        "--reader-chunk",
        type=int,
        default=256 * 1024,
        help="bytes per recv() in the reader; a small value (e.g. 102) makes a slow reader whose queues grow",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="reader: seconds without progress")
    args = ap.parse_args()
    if args.reader:
        return reader(args.clients, args.reader_cpu, args.timeout, args.reader_chunk)

    raise_nofile()
    uring_disabled = Path("/proc/sys/kernel/io_uring_disabled")
    print(
        f"kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"io_uring_disabled={uring_disabled.read_text().strip() if uring_disabled.exists() else 'n/a'}, "
        f"load average at start {loadavg()}\n"
        f"N={args.clients}, turns {args.turns1} (1 frame) / {args.turns16} (16 frames), reps {args.reps}, "
        f"reader recv chunk {args.reader_chunk} B"
    )
    rows: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        binary = compile_sender(Path(tmpdir))
        rd = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--reader",
                "--clients",
                str(args.clients),
                "--reader-cpu",
                str(args.reader_cpu),
                "--timeout",
                str(args.timeout),
                "--reader-chunk",
                str(args.reader_chunk),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert rd.stdout is not None
            first = rd.stdout.readline().split()
            if not first or first[0] != "PORTS":
                sys.exit("reader did not start")
            cpu = args.sender_cpu
            sender = subprocess.Popen(
                [
                    str(binary),
                    first[1],
                    first[2],
                    str(args.clients),
                    str(args.turns1),
                    str(args.turns16),
                    str(args.reps),
                    args.modes,
                ],
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
            )
            assert sender.stdout is not None
            for line in sender.stdout:
                line = line.rstrip()
                if line.startswith("run "):
                    rows.append(parse_run(line))
                    r = rows[-1]
                    d = int(r["deliveries"])
                    print(
                        f"  {r['mode']:>11} k={r['k']:>2} rep={r['rep']} "
                        f"user {float(r['user_us']) / d:.3f} sys {float(r['sys_us']) / d:.3f} µs/deliv, "
                        f"eagain {r['eagain']} short {r['short']} enters {r['enters']}",
                        flush=True,
                    )
                else:
                    print(line, flush=True)
            rc = sender.wait(timeout=60)
            rd_rc = rd.wait(timeout=60)
            tail = rd.stdout.read().strip()
        finally:
            if rd.poll() is None:
                rd.kill()
                rd.wait()
    if tail:
        print(tail)
    if rc != 0 or rd_rc != 0 or "ok" not in tail:
        print(f"FAILED: sender exit {rc}, reader exit {rd_rc}")
        return 1
    print(f"load average at end {loadavg()}")
    report(rows, args.clients)
    return 0


def report(rows: list[dict[str, str]], n: int) -> None:
    def per(r: dict[str, str], key: str) -> float:
        d = int(r["deliveries"])
        if key == "sender":
            return (float(r["user_us"]) + float(r["sys_us"])) / d
        if key == "total":  # the sender's own CPU plus the softirq work deferred to its CPU's ksoftirqd
            return (float(r["user_us"]) + float(r["sys_us"]) + float(r["ksoftirqd_us"])) / d
        if key == "cpu0":
            return float(r["cpu0_jiffies"]) * 1e4 / d  # USER_HZ = 100: one jiffy = 10,000 µs
        return float(r[key]) / d

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    print()
    print(
        "| mode | frames/turn | µs/deliv: user | sys | sender | ksoftirqd | **total** | total / send() "
        "| paired ratio (range) | sender / send() | cpu0 µs/deliv | enters/turn | NET_RX softirqs/turn "
        "| ksoftirqd wakeups/turn | EAGAIN+short | reps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in ("1", "16"):
        base = [r for r in rows if r["mode"] == "send" and r["k"] == k]
        base_total = statistics.median(per(r, "total") for r in base) if base else None
        base_sender = statistics.median(per(r, "sender") for r in base) if base else None
        base_by_rep = {r["rep"]: per(r, "total") for r in base}
        for m in modes:
            rs = [r for r in rows if r["mode"] == m and r["k"] == k]
            if not rs:
                continue
            med = {
                key: statistics.median(per(r, key) for r in rs)
                for key in ("user_us", "sys_us", "sender", "ksoftirqd_us", "total", "cpu0")
            }
            turns = int(rs[0]["deliveries"]) // (int(k) * n)
            enters = statistics.median(int(r["enters"]) for r in rs) / turns
            ratio = f"{med['total'] / base_total:.3f}" if base_total else "-"
            paired = [per(r, "total") / base_by_rep[r["rep"]] for r in rs if r["rep"] in base_by_rep]
            pr = f"{statistics.median(paired):.3f} ({min(paired):.2f}-{max(paired):.2f})" if paired else "-"
            sratio = f"{med['sender'] / base_sender:.3f}" if base_sender else "-"
            ent = f"{enters:.2f}" if m != "send" else "-"
            netrx = statistics.median(int(r["net_rx"]) for r in rs) / turns
            wakeups = statistics.median(int(r["ksoftirqd_wakeups"]) for r in rs) / turns
            eagain = sum(int(r["eagain"]) + int(r["short"]) for r in rs)
            print(
                f"| {m} | {k} | {med['user_us']:.3f} | {med['sys_us']:.3f} | {med['sender']:.3f} "
                f"| {med['ksoftirqd_us']:.3f} | **{med['total']:.3f}** | {ratio} | {pr} | {sratio} | {med['cpu0']:.3f} | {ent} | {netrx:.1f} | {wakeups:.2f} | {eagain} | {len(rs)} |"
            )


if __name__ == "__main__":
    sys.exit(main())
