// CPU time of processes from /proc/<pid>/stat (utime + stime, every thread of the process), in
// clock ticks (CLK_TCK = 100 on Linux). openloop.mjs samples at a step's start and end.
//
// Postgres is one process per connection plus auxiliaries, and the machine's Postgres may be
// shared with other work, so `pg` sums: the backends connected to the benchmark's own databases
// (their process title names the database) plus the server-wide processes that work for every
// database (postmaster, walwriter, checkpointer, background writer, autovacuum, WAL senders).
// Backends of other databases are left out. A backend that starts during a step counts from
// zero; one that exits during a step is lost (the bench's pools keep theirs open).
import { readFileSync, readdirSync } from "node:fs";

const TICK = 100;
const ticks = (pid) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // fields from 3 (state) on
    return Number(f[11]) + Number(f[12]); // utime (14), stime (15)
  } catch {
    return null; // gone
  }
};

// pid -> ticks of every postgres process that counts (see above).
function postgresTicks(dbs) {
  const out = {};
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    let comm, cmd;
    try {
      comm = readFileSync(`/proc/${d}/comm`, "utf8").trim();
      if (comm !== "postgres") continue;
      cmd = readFileSync(`/proc/${d}/cmdline`, "utf8").replace(/\0/g, " ");
    } catch {
      continue;
    }
    const isBackend = /\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]|::1\(\d+\)/.test(cmd);
    if (isBackend && !dbs.some((db) => cmd.includes(` ${db} `))) continue;
    const t = ticks(d);
    if (t !== null) out[d] = t;
  }
  return out;
}

// procs: {name: pid}; also samples `pg` (when dbs are given) and `nats` (when a pid is given).
export function cpuSample(procs, dbs) {
  const s = { procs: {}, pg: dbs.length ? postgresTicks(dbs) : null };
  for (const [name, pid] of Object.entries(procs)) s.procs[name] = ticks(pid);
  return s;
}

// -> {secs: {name: cpu seconds}, pct: {name: % of one core over `wallSecs`}}
export function cpuDelta(a, b, wallSecs) {
  const secs = {};
  for (const name of Object.keys(a.procs)) {
    if (a.procs[name] !== null && b.procs[name] !== null) secs[name] = (b.procs[name] - a.procs[name]) / TICK;
  }
  if (a.pg && b.pg) {
    let t = 0;
    for (const [pid, v] of Object.entries(b.pg)) t += v - (a.pg[pid] ?? 0);
    secs.pg = t / TICK;
  }
  const pct = Object.fromEntries(Object.entries(secs).map(([n, v]) => [n, (100 * v) / wallSecs]));
  return { secs, pct };
}
