// Server role for the Bun peer: `bun bench/bun_server.js --mode fanout|memory [--core N]`.
//
// Speaks the protocol of bench/_server.py (JSON lines: count, run, stop, mem, quit on stdin;
// ready, count, sent, cpu, mem, bye on stdout). Bun.serve's WebSocket server is uWebSockets;
// every client subscribes to one topic and a broadcast is `server.publish("all", json)`, the
// payload built with JSON.stringify once per message, `burst` per event-loop turn.
// CPU is the process's own (process.cpuUsage: getrusage user+sys), the core's busy time is
// read from /proc/stat, memory from /proc/self/status, as the Python servers do.
import { dlopen, FFIType } from "bun:ffi";
import { readFileSync } from "node:fs";

const PAYLOAD_LEN = 100;
const SKELETON_LEN = 23; // {"seq":,"ts":,"pad":""}

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const mode = arg("--mode", "fanout");
const core = Number(arg("--core", "0"));
const fanout = mode === "fanout";

function emit(msg) {
  process.stdout.write(JSON.stringify(msg) + "\n");
}

function nowNs() {
  return (performance.timeOrigin + performance.now()) * 1e6; // wall clock, ns (as a double)
}

// CLOCK_MONOTONIC in ns, the clock of the Python processes' time.monotonic_ns() (Bun's
// process.hrtime counts from the process start instead).
const libc = dlopen("libc.so.6", { clock_gettime: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 } });
const timespec = new BigInt64Array(2);
function monotonicNs() {
  libc.symbols.clock_gettime(1, timespec);
  return Number(timespec[0] * 1000000000n + timespec[1]);
}

function makeMessage(seq) {
  const ts = Math.round(nowNs());
  const pad = PAYLOAD_LEN - SKELETON_LEN - String(seq).length - String(ts).length;
  return JSON.stringify({ seq, ts, pad: "x".repeat(pad) });
}

function rssKib() {
  const m = readFileSync("/proc/self/status", "utf8").match(/^VmRSS:\s+(\d+)/m);
  return m ? Number(m[1]) : -1;
}

function cpuJiffies() {
  for (const line of readFileSync("/proc/stat", "utf8").split("\n")) {
    if (line.startsWith(`cpu${core} `)) {
      const v = line.trim().split(/\s+/).slice(1).map(Number);
      const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
      return [total - v[3] - v[4], total];
    }
  }
  return null;
}

function usage() {
  const u = process.resourceUsage ? process.resourceUsage() : {};
  return { cpu: process.cpuUsage(), vcsw: u.voluntaryContextSwitches ?? 0, ivcsw: u.involuntaryContextSwitches ?? 0, maxrss: u.maxRSS ?? 0 };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const turn = () => new Promise((r) => setImmediate(r));

let clients = 0;
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch(req, srv) {
    return srv.upgrade(req) ? undefined : new Response("upgrade required", { status: 426 });
  },
  websocket: {
    // memory mode: Bun's defaults (idle timeout 120 s with pings); fanout: no keepalive traffic
    ...(fanout ? { idleTimeout: 0, sendPings: false } : {}),
    open(ws) {
      ws.subscribe("all");
      clients++;
    },
    close() {
      clients--;
    },
    message() {},
  },
});

emit({ event: "ready", port: server.port, pid: process.pid, pids: [process.pid], rss_kib: rssKib() });

let seq = 0;
let phase = null;
for await (const line of console) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  if (cmd.cmd === "count") {
    emit({ event: "count", count: clients });
  } else if (cmd.cmd === "run") {
    const m = Number(cmd.messages), burst = Number(cmd.burst);
    phase = { u0: usage(), j0: cpuJiffies() };
    const tStart = monotonicNs();
    let sent = 0, queued = 0;
    while (sent < m) {
      const k = Math.min(burst, m - sent);
      for (let i = 0; i < k; i++) {
        server.publish("all", makeMessage(seq));
        queued += clients;
        seq++;
      }
      sent += k;
      await turn();
    }
    emit({ event: "sent", t_start: tStart, t_loop_end: monotonicNs(), queued });
  } else if (cmd.cmd === "stop") {
    const u1 = usage(), j1 = cpuJiffies(), u0 = phase.u0;
    const res = {
      event: "cpu",
      user_s: (u1.cpu.user - u0.cpu.user) / 1e6,
      sys_s: (u1.cpu.system - u0.cpu.system) / 1e6,
      vcsw: u1.vcsw - u0.vcsw,
      ivcsw: u1.ivcsw - u0.ivcsw,
      maxrss_kib: u1.maxrss,
    };
    if (phase.j0 && j1) res.core_busy_s = (j1[0] - phase.j0[0]) / 100; // USER_HZ
    emit(res);
  } else if (cmd.cmd === "mem") {
    Bun.gc(true);
    await sleep(1000 * Number(cmd.settle ?? 3));
    const samples = [];
    for (let i = 0; i < 5; i++) {
      samples.push(rssKib());
      await sleep(200);
    }
    const sorted = [...samples].sort((a, b) => a - b);
    emit({ event: "mem", rss_kib: sorted[2], samples, count: clients });
  } else if (cmd.cmd === "quit") {
    server.stop(true);
    emit({ event: "bye" });
    process.exit(0);
  }
}
