"""Fan-out over TLS vs plain TCP: server CPU per delivery, and the ratio.

    python -m bench.bench_tls --clients 200 --messages 2000 --per-tick 1,10 --reps 3 [--json]

The server role (``bench._server --impl fastws``, uvloop, ``ssl=`` from a trustme
certificate made at start) and the load client (``bench._client``, ``--cafile`` for TLS,
every connection counting bytes) run in separate processes, pinned to CPU 0 and CPU 1
when there are two. The server waits for N clients, then broadcasts M messages of
100 bytes, K per loop turn, and measures its own CPU time (getrusage, user+sys) from
the first broadcast until every client has received every byte.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from typing import Any

from bench._child import Child, python_role, run_phase, start_clients, wait_count
from bench._util import FRAME_LEN, env_info, format_env, raise_nofile


def run_once(tls: bool, n: int, m: int, k: int, files: dict[str, str]) -> dict[str, Any]:
    role = ["--impl", "fastws", "--mode", "fanout", "--max-connections", str(n + 10),
            "--max-queued-bytes", str(64 << 20)]
    role += ["--certfile", files["cert"], "--keyfile", files["key"]] if tls else []
    srv = Child("tls-server" if tls else "plain-server", python_role("bench._server", *role), core=0)
    try:
        port = srv.recv("ready", 30)["port"]
        cli = start_clients("client", port, n, "--sample", "0", *(["--cafile", files["ca"]] if tls else []),
                            core=1, timeout=120)
        try:
            wait_count(srv, n, 60)
            sent, done, cpu = run_phase(srv, cli, m, k, 300)
        finally:
            cli.close()
    finally:
        srv.close()
    deliveries = n * m
    assert done["ok"] and sent["queued"] == deliveries, (sent, done)
    elapsed = (done["t_done"] - sent["t_start"]) / 1e9
    return {
        "tls": tls, "clients": n, "messages": m, "per_tick": k,
        "server_cpu_us_per_delivery": (cpu["user_s"] + cpu["sys_s"]) / deliveries * 1e6,
        "server_user_us": cpu["user_s"] / deliveries * 1e6,
        "server_sys_us": cpu["sys_s"] / deliveries * 1e6,
        "deliveries_per_s": deliveries / elapsed,
    }


def make_cert(tmp: str) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {"ca": f"{tmp}/ca.pem", "cert": f"{tmp}/cert.pem", "key": f"{tmp}/key.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_tls", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--per-tick", default="1,10", help="messages per loop turn, comma-separated")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = p.parse_args(argv)
    raise_nofile()
    env = env_info()
    ks = [int(x) for x in args.per_tick.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = make_cert(tmp)
        for k in ks:
            runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for _ in range(args.reps):  # interleaved: this VM is noisy over time
                for tls in (False, True):
                    r = run_once(tls, args.clients, args.messages, k, files)
                    runs[tls].append(r)
                    if args.json:
                        print(json.dumps({**r, "env": env}), flush=True)
            med = {tls: {key: statistics.median(r[key] for r in rs) for key in
                         ("server_cpu_us_per_delivery", "server_user_us", "server_sys_us", "deliveries_per_s")}
                   for tls, rs in runs.items()}
            rows.append((k, med))
    if not args.json:
        print(format_env(env))
        print(f"N={args.clients} clients, M={args.messages} messages of {FRAME_LEN - 2} B, "
              f"median of {args.reps} interleaved runs; server pinned to CPU0, clients to CPU1\n")
        print("| per tick | transport | server CPU µs/delivery (user / sys) | deliveries/s | TLS / plain CPU |")
        print("|---|---|---|---|---|")
        for k, med in rows:
            for tls in (False, True):
                m = med[tls]
                ratio = m["server_cpu_us_per_delivery"] / med[False]["server_cpu_us_per_delivery"]
                print(f"| {k} | {'TLS' if tls else 'plain'} | {m['server_cpu_us_per_delivery']:.3f} "
                      f"({m['server_user_us']:.3f} / {m['server_sys_us']:.3f}) | {m['deliveries_per_s']:,.0f} "
                      f"| {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
