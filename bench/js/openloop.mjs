// Open-loop load generator of bench/openloop.sh (issue 9). The load shape: 200 npm
// socket.io-client sockets (websocket transport, in worker threads) in 20 group conversations
// of 10; each conversation's first member POSTs sendMessage over keep-alive HTTP. Per step the
// total POST rate is fixed and POSTs are scheduled by the wall clock (request i of a step is
// due at start + i/rate), never waiting for a response before sending the next: a slow server
// gets more requests in flight, not fewer (a closed loop would hide the latency cliff).
// Latency = the POST's scheduled start -> the `message` event at each member's socket (so time a
// request spent queued in the client, e.g. waiting for a free connection, is charged too).
//
//   node openloop.mjs --label allo --api URL --fanout URL --secret S --rates 50,100
//        [--step-secs 10] [--grace-secs 5] [--drain-max-secs 30] [--wait-header]
//        [--procs api=PID,workers=PID,…] [--pg-dbs db1,db2] [--system api,workers,…]
//        [--out results.json] [--wrk-pairs file] [--socket-threads 2]
import { Worker } from "node:worker_threads";
import { createHmac } from "node:crypto";
import http from "node:http";
import { writeFileSync } from "node:fs";
import { cpuSample, cpuDelta } from "./cpu.mjs";

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]?.startsWith("--") || all[i + 1] === undefined ? "true" : all[i + 1]]);
  return acc;
}, []));
const label = args.label ?? "system";
const rates = (args.rates ?? "50,100").split(",").map(Number);
const stepSecs = Number(args["step-secs"] ?? 10);
const graceSecs = Number(args["grace-secs"] ?? 5);
const drainMaxSecs = Number(args["drain-max-secs"] ?? 30);
const TARGET_P99 = Number(args["target-p99"] ?? 50);
const procs = Object.fromEntries((args.procs ?? "").split(",").filter(Boolean).map((kv) => kv.split("=")).map(([k, v]) => [k, Number(v)]));
procs.loadgen = process.pid;
const pgDbs = (args["pg-dbs"] ?? "").split(",").filter(Boolean);
const systemNames = (args.system ?? Object.keys(procs).filter((n) => n !== "loadgen").join(",")).split(",");
const CONVERSATIONS = 20, MEMBERS = 10;

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const token = (sub) => {
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 6 * 3600 })}`;
  return `${body}.${createHmac("sha256", args.secret).update(body).digest("base64url")}`;
};
// Keep-alive connections, enough that a slow server never makes the client the queue.
const agent = new http.Agent({ keepAlive: true, maxSockets: 512, maxFreeSockets: 512 });

// One POST; resolves (never rejects) with {status, retryAfter, end}.
const post = (path, tok, body, extraHeaders = {}) => new Promise((resolve) => {
  const payload = Buffer.from(JSON.stringify(body));
  const req = http.request(`${args.api}${path}`, {
    method: "POST", agent, timeout: 15000,
    headers: { authorization: `Bearer ${tok}`, "content-type": "application/json", "content-length": payload.length, ...extraHeaders },
  }, (res) => {
    const chunks = [];
    res.on("data", (c) => chunks.push(c));
    res.on("end", () => resolve({ status: res.statusCode, retryAfter: res.headers["retry-after"] !== undefined, body: Buffer.concat(chunks).toString(), end: now() }));
    res.on("error", () => resolve({ status: 0, end: now() }));
  });
  req.on("timeout", () => req.destroy(new Error("timeout")));
  req.on("error", () => resolve({ status: 0, end: now() }));
  req.end(payload);
});

// --- set-up: conversations, then sockets joined to them -------------------------------------
const run = `ol${Date.now().toString(36)}`;
const convs = [];
for (let c = 0; c < CONVERSATIONS; c++) {
  const users = Array.from({ length: MEMBERS }, (_, k) => `${run}-c${c}u${k}`);
  const tokens = users.map(token);
  // Allo answers the committed conversation with Prefer: wait; the Node baseline ignores it.
  const res = await post("/api/chat/createConversation", tokens[0], { participants: users.slice(1), type: "group", topic: `bench ${c}` }, { prefer: "wait=10" });
  const id = res.status < 300 ? JSON.parse(res.body).conversationID : null;
  if (!id) { console.error(`${label}: createConversation answered ${res.status} ${res.body}`); process.exit(2); }
  convs.push({ id, users, tokens });
}
// The senders, for the ingress-only run of wrk (bench/wrk/sendmessage.lua).
if (args["wrk-pairs"]) writeFileSync(args["wrk-pairs"], convs.map((c) => `${c.tokens[0]} ${c.id}\n`).join(""));
// Sockets are spread over --socket-threads worker threads (default 2, one per core here) so
// that no single event loop of the generator becomes the bottleneck at high delivery rates.
const members = convs.flatMap((c) => c.tokens.map((t) => ({ token: t, conversationID: c.id })));
const nThreads = Math.max(1, Number(args["socket-threads"] ?? 2));
let disconnects = 0;
const threads = Array.from({ length: nThreads }, (_, k) => {
  const from = Math.floor((k * members.length) / nThreads), to = Math.floor(((k + 1) * members.length) / nThreads);
  const worker = new Worker(new URL("./sockets.mjs", import.meta.url), { workerData: { url: args.fanout, members: members.slice(from, to), base: from } });
  const waiters = [];
  worker.on("message", (m) => {
    if (m.type === "disconnect") { disconnects++; return; }
    const i = waiters.findIndex((w) => w.type === m.type || (w.type === "ready" && m.type === "failed"));
    if (i >= 0) waiters.splice(i, 1)[0].resolve(m);
  });
  worker.on("error", (e) => { console.error(`${label}: socket thread failed: ${e.stack ?? e}`); process.exit(2); });
  const ask = (type, reply = type) => new Promise((resolve) => { waiters.push({ type: reply, resolve }); if (type) worker.postMessage({ type }); });
  return { worker, ask };
});
const askAll = (type, reply) => Promise.all(threads.map((t) => t.ask(type, reply)));
const failed = (await askAll(null, "ready")).find((m) => m.type === "failed");
if (failed) { console.error(`${label}: ${failed.error}`); process.exit(2); }
const countArrivals = async () => (await askAll("count")).reduce((n, m) => n + m.count, 0);
const takeArrivals = async () => {
  const parts = await askAll("take", "arrivals");
  return { tags: parts.flatMap((p) => p.tags), socks: parts.flatMap((p) => p.socks), times: parts.flatMap((p) => p.times) };
};

// --- one step ---------------------------------------------------------------------------------
const pct = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN);

async function step(rate, secs, tagPrefix) {
  await takeArrivals(); // forget stragglers of earlier steps
  const sent = new Map(); // tag -> {t0, accepted}
  const st = { ok: 0, r429: 0, r503: 0, other: 0, errors: 0, retryAfter: 0, latencies: [], lags: [] };
  const inflight = [];
  const cpu0 = cpuSample(procs, pgDbs);
  const start = now();
  const total = Math.round(rate * secs);
  let i = 0;
  // Every millisecond (or as soon as the event loop lets us), send every request now due.
  while (i < total) {
    const due = Math.min(total, Math.floor(((now() - start) / 1000) * rate) + 1);
    for (; i < due; i++) {
      const conv = convs[i % CONVERSATIONS];
      const tag = `${tagPrefix}.${i}`;
      const t0 = start + (i / rate) * 1000;
      const actual = now();
      const rec = { t0, accepted: false };
      sent.set(tag, rec);
      st.lags.push(actual - t0);
      inflight.push(post("/api/chat/sendMessage", conv.tokens[0], { conversationID: conv.id, message: tag }).then((r) => {
        st.latencies.push(r.end - actual);
        if (r.retryAfter) st.retryAfter++;
        if (r.status >= 200 && r.status < 300) { st.ok++; rec.accepted = true; }
        else if (r.status === 429) st.r429++;
        else if (r.status === 503) st.r503++;
        else if (r.status === 0) st.errors++;
        else st.other++;
      }));
    }
    await sleep(1);
  }
  const sendEnd = now();
  await Promise.all(inflight);
  const expected = st.ok * MEMBERS;
  // Grace: wait until every accepted message reached every member, at most graceSecs.
  const graceEnd = sendEnd + graceSecs * 1000;
  let arrived = await countArrivals();
  while (arrived < expected && now() < graceEnd) { await sleep(50); arrived = await countArrivals(); }
  const cpuEnd = now();
  const cpu1 = cpuSample(procs, pgDbs);
  // Past the grace, keep waiting (not counting) to see how long the backlog takes to drain.
  let lastProgress = now();
  while (arrived < expected && now() - sendEnd < (graceSecs + drainMaxSecs) * 1000 && now() - lastProgress < 5000) {
    await sleep(100);
    const n = await countArrivals();
    if (n > arrived) { arrived = n; lastProgress = now(); }
  }
  const { tags, socks, times } = await takeArrivals();

  const seen = new Set();
  const lat = [];
  let duplicates = 0, late = 0, lastArrival = sendEnd, strays = 0;
  for (let k = 0; k < tags.length; k++) {
    const rec = sent.get(tags[k]);
    if (!rec) { strays++; continue; }
    lastArrival = Math.max(lastArrival, times[k]);
    const key = `${tags[k]}|${socks[k]}`;
    if (seen.has(key)) { duplicates++; continue; }
    seen.add(key);
    if (!rec.accepted) continue; // delivered although the POST failed: not expected, not counted
    if (times[k] > graceEnd) { late++; continue; }
    lat.push(times[k] - rec.t0);
  }
  lat.sort((a, b) => a - b);
  st.latencies.sort((a, b) => a - b);
  st.lags.sort((a, b) => a - b);
  const cpu = cpuDelta(cpu0, cpu1, (cpuEnd - start) / 1000);
  const systemCpuSecs = systemNames.reduce((s, n) => s + (cpu.secs[n] ?? 0), 0);
  const completeAll = expected > 0 && lat.length + late >= expected;
  return {
    rate, secs, posts: total, achievedRate: total / ((sendEnd - start) / 1000), ...st, latencies: undefined, lags: undefined,
    expected, delivered: lat.length, late, duplicates, strays,
    deliveriesPerSec: lat.length / ((Math.min(lastArrival, graceEnd) - start) / 1000),
    completeness: expected ? lat.length / expected : 0,
    p50: pct(lat, 50), p99: pct(lat, 99), max: lat.at(-1) ?? NaN,
    httpP99: pct(st.latencies, 99), lagP99: pct(st.lags, 99),
    tailMs: lastArrival - sendEnd, drained: completeAll, cpuPct: cpu.pct, systemCpuSecs,
    systemCpuMsPer1k: lat.length ? (systemCpuSecs * 1e6) / lat.length : NaN,
  };
}

// --- the run ----------------------------------------------------------------------------------
const passes = (r) => r.p99 < TARGET_P99 && r.completeness === 1 && r.duplicates === 0 && r.r429 + r.r503 + r.errors + r.other === 0 && r.achievedRate >= 0.95 * r.rate;
const f = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : "-");
console.log(`\n== ${label}: ${convs.length} conversations x ${MEMBERS} sockets, open loop, ${stepSecs} s per step, grace ${graceSecs} s`);
await step(Math.min(rates[0], 50), 2, `${run}.warm`); // warm-up (JIT, connections); not reported
const results = [];
// A step that only misses the p99 still says where the system saturates, so only a system that
// fell over (deliveries missing within the grace, or POSTs refused) twice in a row is spared
// the higher rates.
const fellOver = (r) => r.completeness < 1 || r.r429 + r.r503 + r.errors + r.other > 0;
let failedInARow = 0;
for (const [s, rate] of rates.entries()) {
  if (failedInARow >= 2) { results.push({ rate, skipped: true }); continue; }
  const r = await step(rate, stepSecs, `${run}.${s}`);
  r.pass = passes(r);
  failedInARow = fellOver(r) ? failedInARow + 1 : 0;
  results.push(r);
  process.stderr.write(`${label}: step ${rate}/s done (p99 ${f(r.p99, 1)} ms, ${f(r.completeness * 100, 2)} % delivered)\n`);
}
threads.forEach((t) => t.worker.postMessage({ type: "close" }));

const cpuNames = Object.keys(results.find((r) => r.cpuPct)?.cpuPct ?? {});
const pad = (cols, widths) => cols.map((c, k) => String(c).padStart(widths[k])).join(" ");
const W1 = [6, 7, 7, 5, 5, 5, 8, 9, 4, 7, 7, 7, 7, 7, 8, 4];
console.log(pad(["rate", "sent/s", "2xx", "429", "503", "err", "deliv/s", "complete", "dup", "p50ms", "p99ms", "maxms", "http99", "lag99", "drainms", "ok"], W1));
for (const r of results) {
  if (r.skipped) { console.log(pad([r.rate, "skipped (fell over on the two steps before)"], [6, 40])); continue; }
  const drain = r.drained ? f(r.tailMs) : `>${f(r.tailMs)}`; // send end -> last delivery of the step
  console.log(pad([r.rate, f(r.achievedRate), r.ok, r.r429, r.r503, r.errors + r.other, f(r.deliveriesPerSec), `${f(r.completeness * 100, 2)}%`, r.duplicates,
    f(r.p50, 1), f(r.p99, 1), f(r.max, 1), f(r.httpP99, 1), f(r.lagP99, 1), drain, r.pass ? "yes" : "no"], W1));
}
console.log(`CPU, % of one core, over each step (send + until delivered, at most the grace); system = ${systemNames.join("+")}`);
const W2 = [6, ...cpuNames.map((n) => Math.max(7, n.length)), 10, 14];
console.log(pad(["rate", ...cpuNames, "system", "sys ms/1k dlv"], W2));
for (const r of results.filter((x) => !x.skipped)) {
  console.log(pad([r.rate, ...cpuNames.map((n) => f(r.cpuPct[n])), f(systemNames.reduce((s, n) => s + (r.cpuPct[n] ?? 0), 0)), f(r.systemCpuMsPer1k, 1)], W2));
}
const best = results.filter((r) => r.pass).reduce((m, r) => Math.max(m, r.rate), 0);
console.log(`${label}: highest rate with p99 < ${TARGET_P99} ms and 100 % delivered: ${best ? `${best} msgs/s` : "none of the rates"}` +
  (disconnects ? ` (${disconnects} socket disconnects)` : ""));
if (args.out) writeFileSync(args.out, JSON.stringify({ label, system: systemNames, best, steps: results, disconnects }, null, 1));
process.exit(0);
