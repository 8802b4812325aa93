// Summary of one bench/openloop.sh run: reads the raw results in <dir> and prints the figures
// issue 9's targets are judged by, each next to its baseline from the same run, as a ratio.
//   node summary.mjs <dir>
import { readFileSync, existsSync } from "node:fs";

const dir = process.argv[2];
const load = (name) => (existsSync(`${dir}/${name}`) && readFileSync(`${dir}/${name}`, "utf8").trim() ? JSON.parse(readFileSync(`${dir}/${name}`, "utf8")) : null);
const f = (x, d = 0) => (Number.isFinite(x) ? x.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }) : "-");
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}x` : "-");
const verdict = (ok) => (ok === null ? "" : ok ? "  [target met]" : "  [target NOT met]");

const sys = Object.fromEntries(["allo", "node", "node-pg"].map((s) => [s, load(`${s}.json`)]).filter(([, v]) => v));
console.log("\n== Summary");
console.log(`Highest rate with p99 POST->socket < 50 ms and 100 % delivered (the rates tried: ${(Object.values(sys)[0]?.steps ?? []).map((s) => s.rate).join(", ")} msgs/s):`);
for (const [name, r] of Object.entries(sys)) console.log(`  ${name.padEnd(8)} ${r.best ? `${f(r.best)} msgs/s` : "none"}`);
if (sys.allo && sys.node) {
  const ok = sys.node.best > 0 ? sys.allo.best >= 1.5 * sys.node.best : null;
  console.log(`  allo / node (no store) = ${sys.node.best ? ratio(sys.allo.best, sys.node.best) : "- (node passed no rate)"}, target >= 1.5x${verdict(ok)}`);
}
if (sys.allo && sys["node-pg"]) console.log(`  allo / node-pg = ${sys["node-pg"].best ? ratio(sys.allo.best, sys["node-pg"].best) : "- (node-pg passed no rate)"}`);

// CPU per delivered message at each rate every system ran; the headline ratio at the highest
// rate where both allo and node delivered everything (a collapsed step's CPU/delivery says
// little).
const names = Object.keys(sys);
if (names.length) {
  console.log("\nCPU per delivered message, ms of CPU per 1000 deliveries (allo = api+workers+fanout+nats-server+its Postgres backends; node = the node process; node-pg = node + its Postgres backends):");
  console.log(["   rate", ...names.map((n) => n.padStart(9)), "  allo/node"].join(" "));
  const rates = [...new Set(names.flatMap((n) => sys[n].steps.filter((s) => !s.skipped).map((s) => s.rate)))].sort((a, b) => a - b);
  let headline = null;
  for (const rate of rates) {
    const at = Object.fromEntries(names.map((n) => [n, sys[n].steps.find((s) => s.rate === rate && !s.skipped)]));
    console.log([String(rate).padStart(7), ...names.map((n) => f(at[n]?.systemCpuMsPer1k, 1).padStart(9)), ratio(at.allo?.systemCpuMsPer1k, at.node?.systemCpuMsPer1k).padStart(11)].join(" "));
    if (at.allo?.completeness === 1 && at.node?.completeness === 1) headline = { rate, a: at.allo.systemCpuMsPer1k, n: at.node.systemCpuMsPer1k };
  }
  if (headline) {
    console.log(`  at ${headline.rate} msgs/s (highest rate both delivered fully): allo ${f(headline.a, 1)} vs node ${f(headline.n, 1)} ms/1k deliveries = ${ratio(headline.a, headline.n)}, target <= 1x${verdict(headline.a <= headline.n)}`);
  }
}

if (sys.allo) {
  console.log("\nOverload behaviour of allo (per step: POSTs refused with 429/503, of them with Retry-After; send end -> last delivery):");
  for (const s of sys.allo.steps.filter((x) => !x.skipped)) {
    console.log(`  ${String(s.rate).padStart(6)} msgs/s: 429 ${s.r429}, 503 ${s.r503}, Retry-After on ${s.retryAfter}, errors ${s.errors + s.other}; ` +
      `${s.drained ? "drained" : "NOT drained"} ${f(s.tailMs / 1000, 2)} s after the step (${f(s.completeness * 100, 2)} % within the grace)`);
  }
  // Overloaded = missed the latency target or the grace; there ingress should refuse, not queue.
  const over = sys.allo.steps.filter((x) => !x.skipped && (!(x.p99 < 50) || x.completeness < 1));
  if (over.length && over.every((s) => s.r429 + s.r503 === 0)) {
    console.log(`  on the ${over.length} step(s) past the target (${over.map((s) => s.rate).join(", ")} msgs/s) no POST was refused: the backlog was queued  [target NOT met]`);
  }
}

const ia = load("ingress-allo.json"), ie = load("ingress-express.json");
if (ia || ie) {
  const rate = (w, code) => (w ? (w.status[code] ?? 0) / w.secs : NaN);
  console.log("\nIngress alone (wrk -t2 -c64, sendMessage with a valid token; allo-api with workers stopped):");
  if (ia) console.log(`  allo-api            ${f(rate(ia, "202"))} accepted (202)/s, p50 ${ia.p50ms} ms, p99 ${ia.p99ms} ms; answers ${JSON.stringify(ia.status)}, socket errors ${ia.socketErrors}`);
  if (ie) console.log(`  trivial Express     ${f(rate(ie, "202"))} 202/s, p50 ${ie.p50ms} ms, p99 ${ie.p99ms} ms; answers ${JSON.stringify(ie.status)}, socket errors ${ie.socketErrors}`);
  if (ia && ie) console.log(`  allo / Express = ${ratio(rate(ia, "202"), rate(ie, "202"))}, target >= 2x${verdict(rate(ia, "202") >= 2 * rate(ie, "202"))}`);
}

const cn = load("ceiling-nats.json"), cp = load("ceiling-pg.json");
if (cn || cp) {
  console.log("\nBare ceilings on this machine (the physical limits):");
  if (cn) console.log(`  JetStream (file storage, one Node client): ${f(cn.pipelinedPerSec)} acked publishes/s pipelined (at most ${cn.window} unacknowledged, ${cn.refused} refused), ${f(cn.serialPerSec)}/s awaiting each ack`);
  if (cp) console.log(`  Postgres (pgbench, 4 clients, synchronous_commit as configured): ${f(cp.rows100Tps * 100)} rows/s in 100-row transactions, ${f(cp.rows1Tps)} rows/s at one row per transaction`);
  const pc = (a, b) => (b > 0 ? `${((100 * a) / b).toFixed(2)} %` : "-");
  if (sys.allo?.best && cn) console.log(`  allo's best rate (${f(sys.allo.best)} msgs/s, ${f(sys.allo.best * 10)} deliveries/s) is ${pc(sys.allo.best, cn.pipelinedPerSec)} of the JetStream ceiling and ${cp ? pc(sys.allo.best, cp.rows100Tps * 100) : "-"} of the Postgres rows ceiling`);
}
