"""Summary rows and tables of the fan-out benchmark (medians over repetitions, CPU ratios)."""

from __future__ import annotations

from typing import Any

from bench._peers import REFERENCES
from bench._util import markdown_table, median

MEDIAN_KEYS = ("rate", "cpu_us", "user_us", "sys_us", "core_us", "p50_us", "p99_us", "p999_us", "client_cpu_us")


def fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def summarize(phases: list[dict[str, Any]], impls: list[str]) -> list[dict[str, Any]]:
    rows = []
    for n, burst in sorted({(p["n"], p["burst"]) for p in phases}):
        here = [p for p in phases if p["n"] == n and p["burst"] == burst]
        cell = {i: [p for p in here if p["impl"] == i and p["ok"]] for i in impls}
        meds = {i: {k: median([p[k] for p in ps]) for k in MEDIAN_KEYS} for i, ps in cell.items()}

        def paired(i: str, ref: str, cell: dict[str, list[dict[str, Any]]] = cell) -> float | None:
            # median over reps of the per-rep CPU ratio (reps are interleaved, so pairs share conditions)
            a = {p["rep"]: p["cpu_us"] for p in cell.get(i, [])}
            b = {p["rep"]: p["cpu_us"] for p in cell.get(ref, [])}
            return median([a[r] / b[r] for r in a if r in b and b[r]])

        for i in impls:
            m = meds[i]
            ps = cell[i]
            row = {
                "kind": "summary",
                "impl": i,
                "n": n,
                "burst": burst,
                "reps_ok": len(ps),
                "reps_failed": len([p for p in here if p["impl"] == i and not p["ok"]]),
                **{f"median_{k}": v for k, v in m.items()},
            }
            for ref in REFERENCES:
                if ref in meds and m["cpu_us"] and meds[ref]["cpu_us"]:
                    row[f"cpu_vs_{ref}"] = m["cpu_us"] / meds[ref]["cpu_us"]
                    row[f"cpu_vs_{ref}_paired"] = paired(i, ref)
                if ref in meds and m["core_us"] and meds[ref]["core_us"]:
                    row[f"core_vs_{ref}"] = m["core_us"] / meds[ref]["core_us"]
            if ps:
                row["cpu_us_range"] = [min(p["cpu_us"] for p in ps), max(p["cpu_us"] for p in ps)]
                row["rate_range"] = [min(p["rate"] for p in ps), max(p["rate"] for p in ps)]
            rows.append(row)
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    refs = [r for r in REFERENCES if any(row["impl"] == r for row in rows)]
    headers = [
        "impl",
        "N",
        "burst",
        "deliveries/s",
        "server CPU µs/deliv (user/sys)",
        "core0 µs/deliv",
        *(f"CPU ×{ref}" for ref in refs),
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "reps",
    ]
    out = []
    for r in rows:
        p50, p99, p999 = r["median_p50_us"], r["median_p99_us"], r.get("median_p999_us")
        out.append(
            [
                r["impl"],
                str(r["n"]),
                str(r["burst"]),
                fmt(r["median_rate"], ",.0f"),
                f"{fmt(r['median_cpu_us'], '.3f')} ({fmt(r['median_user_us'], '.3f')}/{fmt(r['median_sys_us'], '.3f')})",
                fmt(r["median_core_us"], ".3f"),
                *(fmt(r.get(f"cpu_vs_{ref}"), ".3f") for ref in refs),
                fmt(p50 / 1000 if p50 is not None else None, ".2f"),
                fmt(p99 / 1000 if p99 is not None else None, ".2f"),
                fmt(p999 / 1000 if p999 is not None else None, ".2f"),
                f"{r['reps_ok']}" + (f" (+{r['reps_failed']} failed)" if r["reps_failed"] else ""),
            ]
        )
    return markdown_table(headers, out)


def render_targets(rows: list[dict[str, Any]]) -> str:
    def get(n: int, burst: int, key: str) -> tuple[float | None, float | None]:
        for r in rows:
            if r["impl"] == "fastws" and r["n"] == n and r["burst"] == burst:
                return r.get(key), r.get(key + "_paired")
        return None, None

    lines = ["Targets (server CPU per delivery, ratio of medians; paired = median of per-rep ratios):"]
    checks = [
        (1000, 1, "cpu_vs_websockets", 0.6, "fastws ≤ 0.6 × websockets.broadcast()"),
        (1000, 1, "cpu_vs_picows", 1.05, "fastws ≤ 1.05 × naive picows loop"),
        (1000, 16, "cpu_vs_websockets", 1 / 15, "fastws ≤ 1/15 × websockets (bursts of 16)"),
        (1000, 1, "cpu_vs_bun", 0.9, "fastws ≤ 0.9 × Bun (uWebSockets), 1 per turn"),
        (1000, 16, "cpu_vs_bun", 0.8, "fastws ≤ 0.8 × Bun (uWebSockets), bursts of 16"),
    ]
    for n, burst, key, limit, text in checks:
        v, pv = get(n, burst, key)
        if v is None:
            lines.append(f"  N={n} burst={burst}: {text}: not measured")
            continue
        verdict = "PASS" if v <= limit else "FAIL"
        lines.append(
            f"  N={n} burst={burst}: {text}: {v:.3f} (paired {fmt(pv, '.3f')}), limit {limit:.3f} → {verdict}"
        )
    return "\n".join(lines)
