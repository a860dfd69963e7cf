"""Charts of the fan-out benchmark: server CPU per delivery and deliveries/s against N.

Reads the JSON lines that ``python -m bench.bench_fanout --json FILE`` writes (an
``env`` record, one ``phase`` record per measurement, ``summary`` rows with the
medians) and draws two PNGs, one panel per burst size (messages per loop turn), one
line per implementation measured (fastws and each peer):

* ``fanout_cpu.png``: median server CPU (user+sys) per delivered message, in µs,
  with the range over the repetitions as error bars;
* ``fanout_rate.png``: median deliveries per second.

Run (needs the ``bench`` extra: ``pip install -e '.[bench]'``)::

    python -m bench.plot_fanout bench/results/fanout-full.json [--out bench/results]

It prints the command it was run with and the files it wrote; the charts carry
that command and the benchmark's own command in their footer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

#: One colour and marker per implementation, the same in every chart.
STYLE = {
    "fastws": {"color": "#1f5fd6", "marker": "o", "label": "fastws"},
    "websockets": {"color": "#d1495b", "marker": "s", "label": "websockets (broadcast())"},
    "picows": {"color": "#5a9a3c", "marker": "^", "label": "picows (naive loop)"},
    "bun": {"color": "#e08a1e", "marker": "D", "label": "Bun (uWebSockets, publish)"},
    "socketify": {"color": "#8e6cc0", "marker": "v", "label": "socketify (uWebSockets, publish)"},
}
OTHER_COLOURS = ["#4a4a4a", "#1b998b"]


def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(env record, summary rows) of a bench_fanout JSON-lines file."""
    env: dict[str, Any] = {}
    phases: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{n}: not a JSON line ({exc})") from None
        kind = rec.get("kind")
        if kind == "env":
            env = rec
        elif kind == "phase":
            phases.append(rec)
        elif kind == "summary":
            summary.append(rec)
    if not summary and phases:  # an interrupted run: summarize what was measured
        summary = summarize(phases)
    if not summary:
        raise SystemExit(f"{path}: no fan-out results (no 'summary' or 'phase' records)")
    return env, summary


def summarize(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted({(p["impl"], p["n"], p["burst"]) for p in phases}):
        ok = [p for p in phases if (p["impl"], p["n"], p["burst"]) == key and p.get("ok") and p.get("rate")]
        if not ok:
            continue
        cpu = [p["cpu_us"] for p in ok]
        rate = [p["rate"] for p in ok]
        rows.append({"kind": "summary", "impl": key[0], "n": key[1], "burst": key[2], "reps_ok": len(ok),
                     "median_cpu_us": statistics.median(cpu), "median_rate": statistics.median(rate),
                     "cpu_us_range": [min(cpu), max(cpu)], "rate_range": [min(rate), max(rate)]})
    return rows


def style(impl: str, i: int) -> dict[str, Any]:
    return STYLE.get(impl, {"color": OTHER_COLOURS[i % len(OTHER_COLOURS)], "marker": "D", "label": impl})


def draw(env: dict[str, Any], rows: list[dict[str, Any]], metric: str, out: Path, command: str, source: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    value_key, range_key = (("median_cpu_us", "cpu_us_range") if metric == "cpu" else ("median_rate", "rate_range"))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    impls.sort(key=lambda i: (i != "fastws", i))
    bursts = sorted({r["burst"] for r in rows})
    ns = sorted({r["n"] for r in rows})

    fig, axes = plt.subplots(1, len(bursts), figsize=(5.2 * len(bursts) + 0.6, 4.9), sharey=True, squeeze=False)
    for ax, burst in zip(axes[0], bursts, strict=True):
        labels: list[tuple[float, float, str]] = []
        for i, impl in enumerate(impls):
            pts = sorted((r for r in rows if r["impl"] == impl and r["burst"] == burst and r.get(value_key)),
                         key=lambda r: r["n"])
            if not pts:
                continue
            xs = [r["n"] for r in pts]
            ys = [r[value_key] for r in pts]
            lo = [max(0.0, y - r[range_key][0]) if r.get(range_key) else 0.0 for r, y in zip(pts, ys, strict=True)]
            hi = [max(0.0, r[range_key][1] - y) if r.get(range_key) else 0.0 for r, y in zip(pts, ys, strict=True)]
            s = style(impl, i)
            ax.errorbar(xs, ys, yerr=[lo, hi], color=s["color"], marker=s["marker"], label=s["label"],
                        linewidth=2, markersize=6, capsize=3, elinewidth=1)
            labels.extend((x, y, s["color"]) for x, y in zip(xs, ys, strict=True))
        _annotate(ax, labels, metric)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ns)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(ns[0] / 1.6, ns[-1] * 1.9)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v, metric)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("N connected clients")
        turn = "1 message per loop turn" if burst == 1 else f"bursts of {burst} messages per loop turn"
        ax.set_title(turn, fontsize=11)
    axes[0][0].set_ylabel("server CPU per delivery, µs (lower is better)" if metric == "cpu"
                          else "deliveries per second (higher is better)")
    axes[0][0].legend(loc="best", fontsize=9, framealpha=0.9)
    title = ("Fan-out: server CPU (user+sys) per delivered message" if metric == "cpu"
             else "Fan-out: deliveries per second")
    fig.suptitle(f"{title}  (median of {_reps(rows)}; bars: min–max)", fontsize=12, fontweight="bold")
    machine = ", ".join(str(env[k]) for k in ("cpu", "virt", "kernel") if env.get(k))
    versions = ", ".join(f"{k} {env[k]}" for k in ("fastws", "picows", "websockets", "python", "loop") if env.get(k))
    foot = (f"{machine}; server and load generator pinned to one core each; {env.get('date', '')}\n{versions}\n"
            f"data: {env.get('command', source)}\nchart: {command}")
    fig.text(0.01, 0.01, foot, fontsize=7, color="#555555", va="bottom", ha="left", family="monospace")
    fig.tight_layout(rect=(0, 0.12, 1, 0.97))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _annotate(ax: Any, labels: list[tuple[float, float, str]], metric: str, close: float = 2.2) -> None:
    """Value labels: above a point, below it when a close one is above, left of it when both."""
    for x, y, colour in labels:
        others = [y2 for x2, y2, _ in labels if x2 == x and y2 != y]
        near_above = any(y < y2 < y * close for y2 in others)
        near_below = any(y / close < y2 < y for y2 in others)
        offset, va, ha = ((-8, 0), "center", "right") if near_above and near_below else \
            ((6, -4), "top", "left") if near_above else ((6, 4), "bottom", "left")
        ax.annotate(_short(y, metric), (x, y), textcoords="offset points", xytext=offset, va=va, ha=ha,
                    fontsize=7.5, color=colour)


def _reps(rows: list[dict[str, Any]]) -> str:
    reps = sorted({r.get("reps_ok") for r in rows if r.get("reps_ok")})
    return f"{reps[0]} runs" if len(reps) == 1 else f"{reps[0]}–{reps[-1]} runs" if reps else "runs"


def _short(v: float, metric: str) -> str:
    if metric == "cpu":
        return f"{v:.2g}" if v < 1 else f"{v:.3g}"
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def markdown(rows: list[dict[str, Any]], out: Path) -> str:
    """README block: the two charts side by side, then the benchmark's own table."""
    rel = out.as_posix()
    images = (f'<img src="{rel}/fanout_cpu.png" width="49%" alt="server CPU per delivery against N"> '
              f'<img src="{rel}/fanout_rate.png" width="49%" alt="deliveries per second against N">')
    try:
        from bench._fanout_report import render_table
    except ImportError:  # run from elsewhere than the repository root
        return images
    have = all(k in r for r in rows for k in ("median_user_us", "median_sys_us", "median_core_us", "median_p50_us",
                                               "median_p99_us", "reps_failed"))
    return images + ("\n\n" + render_table(rows) if have else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.plot_fanout", description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, nargs="?", default=Path("bench/results/fanout-full.json"),
                   help="JSON lines from `python -m bench.bench_fanout --json` (default bench/results/fanout-full.json)")
    p.add_argument("--out", type=Path, default=None, help="directory for the PNGs (default: the JSON file's)")
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        p.error("matplotlib is needed: pip install -e '.[bench]'")
    out = args.out if args.out is not None else args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.plot_fanout " + " ".join(argv)
    print(f"command: {command.strip()}")
    env, rows = load(args.json)
    for metric, name in (("cpu", "fanout_cpu.png"), ("rate", "fanout_rate.png")):
        draw(env, rows, metric, out / name, command.strip(), str(args.json))
        print(f"wrote {out / name}")
    print("\nREADME block (charts beside the table):\n")
    print(markdown(rows, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
