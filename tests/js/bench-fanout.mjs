// Fan-out benchmark: 200 sockets (npm socket.io-client) in 20 conversations of 10 users.
// Each round POSTs MESSAGES messages per conversation over HTTP (CONCURRENCY at a time) and
// measures, per delivery, the time from just before the POST to the socket event; it prints
// delivered events/s and POST-to-socket latency p50/p99 per round and the median of rounds.
//
//   node bench-fanout.mjs <api-url> <fanout-url> <jwt-secret> [rounds=3] [messages=25] [concurrency=16]
import { io } from "socket.io-client";
import { createHmac } from "node:crypto";

const [api, fanout, secret, rounds = "3", perConv = "25", conc = "16"] = process.argv.slice(2);
const CONVERSATIONS = 20, USERS = 10;
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const token = (sub) => {
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
};
const post = async (user, op, body, wait = false) => {
  const res = await fetch(`${api}/api/chat/${op}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token(user)}`, "content-type": "application/json", ...(wait ? { prefer: "wait=10" } : {}) },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (res.status >= 300) throw new Error(`${op} ${res.status} ${JSON.stringify(json)}`);
  return json;
};
const pct = (xs, p) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const run = `b${Date.now().toString(36)}`;
const convs = [];
for (let c = 0; c < CONVERSATIONS; c++) {
  const users = Array.from({ length: USERS }, (_, k) => `${run}-c${c}u${k}`);
  const created = await post(users[0], "createConversation", { participants: users.slice(1), type: "group" }, true);
  convs.push({ id: created.conversationID, users });
}
const arrivals = new Map(); // tag -> [arrival times]
let sockets = [];
await Promise.all(convs.flatMap((conv) => conv.users.map((user) => new Promise((resolve, reject) => {
  const s = io(fanout, { auth: { token: token(user) }, transports: ["websocket"] });
  s.on("connect_error", reject);
  s.on("message", (m) => {
    const at = performance.now();
    (arrivals.get(m.message) ?? arrivals.set(m.message, []).get(m.message)).push(at);
  });
  s.on("connect", () => s.emit("joinConversation", { conversationID: conv.id }, (ack) => (ack?.joined ? resolve() : reject(ack))));
  sockets.push(s);
}))));
console.log(`bench: ${sockets.length} sockets joined ${convs.length} conversations`);

const results = [];
for (let r = 1; r <= Number(rounds); r++) {
  arrivals.clear();
  const sent = new Map(); // tag -> t0
  const jobs = convs.flatMap((conv, c) => Array.from({ length: Number(perConv) }, (_, i) => ({ conv, tag: `${run}-r${r}-c${c}-${i}` })));
  const start = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: Number(conc) }, async () => {
    while (next < jobs.length) {
      const { conv, tag } = jobs[next++];
      sent.set(tag, performance.now());
      await post(conv.users[0], "sendMessage", { conversationID: conv.id, message: tag });
    }
  }));
  const expected = jobs.length * USERS;
  const deadline = performance.now() + 60000;
  const delivered = () => [...arrivals.values()].reduce((n, a) => n + a.length, 0);
  while (delivered() < expected && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const latencies = [];
  let last = start;
  for (const [tag, times] of arrivals) {
    const t0 = sent.get(tag);
    if (t0 === undefined) continue;
    for (const t of times) { latencies.push(t - t0); last = Math.max(last, t); }
  }
  latencies.sort((a, b) => a - b);
  const seconds = (last - start) / 1000;
  const row = { round: r, posts: jobs.length, delivered: latencies.length, expected, eventsPerSec: latencies.length / seconds, p50: pct(latencies, 50), p99: pct(latencies, 99) };
  results.push(row);
  console.log(`round ${r}: ${row.delivered}/${expected} deliveries of ${row.posts} messages in ${seconds.toFixed(2)} s = ${row.eventsPerSec.toFixed(0)} events/s; POST-to-socket p50 ${row.p50.toFixed(1)} ms, p99 ${row.p99.toFixed(1)} ms`);
}
// Unloaded latency: one message at a time, each waiting for all its deliveries.
const single = [];
for (let i = 0; i < 100; i++) {
  const conv = convs[i % convs.length];
  const tag = `${run}-single-${i}`;
  const t0 = performance.now();
  await post(conv.users[0], "sendMessage", { conversationID: conv.id, message: tag });
  const until = performance.now() + 5000;
  while ((arrivals.get(tag)?.length ?? 0) < USERS && performance.now() < until) await new Promise((r) => setTimeout(r, 1));
  for (const t of arrivals.get(tag) ?? []) single.push(t - t0);
}
single.sort((a, b) => a - b);
console.log(`unloaded (one message at a time, ${single.length} deliveries): POST-to-socket p50 ${pct(single, 50).toFixed(1)} ms, p99 ${pct(single, 99).toFixed(1)} ms`);
console.log(`median of ${results.length} rounds: ${median(results.map((r) => r.eventsPerSec)).toFixed(0)} events/s, p50 ${median(results.map((r) => r.p50)).toFixed(1)} ms, p99 ${median(results.map((r) => r.p99)).toFixed(1)} ms`);
sockets.forEach((s) => s.close());
process.exit(results.every((r) => r.delivered === r.expected) ? 0 : 1);
