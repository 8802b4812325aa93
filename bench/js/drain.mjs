// The pool-scaling benchmark's client (bench/drain.sh, issue 14). Three sub-commands:
//
//   node drain.mjs setup --api URL --secret S --conversations C --out convs.json
//     C group conversations of 3 members each (created with Prefer: wait, 16 at a time).
//   node drain.mjs fill --api URL --secret S --convs convs.json --count N
//     N sendMessage POSTs spread round-robin over the conversations (64 in flight); every
//     one must be accepted (202), since the workers that would apply them are stopped.
//   node drain.mjs watch --nats URL --stream NAME --pool messages --expect N
//        [--procs workers1=PID,…] [--pg-dbs db] [--timeout-secs 300] [--ready FILE]
//     Polls the pool's consumers (every consumer of the command stream whose name is the pool
//     or starts with `<pool>-`) until nothing is waiting or unacked, then prints the drain time
//     and rate (timed from the first command applied), and the CPU of the given processes and of
//     the database's Postgres backends. With --ready it writes FILE once it has read the
//     backlog, so the workers are started after that (procs are read from --procs-file then).
import { createHmac } from "node:crypto";
import http from "node:http";
import { readFileSync, writeFileSync } from "node:fs";
import { connect } from "nats";
import { cpuSample, cpuDelta } from "./cpu.mjs";

const [cmd, ...rest] = process.argv.slice(2);
const args = Object.fromEntries(rest.reduce((acc, a, i, all) => {
  if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const token = (sub) => {
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 6 * 3600 })}`;
  return `${body}.${createHmac("sha256", args.secret).update(body).digest("base64url")}`;
};
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const post = (path, tok, body, headers = {}) => new Promise((resolve) => {
  const payload = Buffer.from(JSON.stringify(body));
  const req = http.request(`${args.api}${path}`, {
    method: "POST", agent, timeout: 30000,
    headers: { authorization: `Bearer ${tok}`, "content-type": "application/json", "content-length": payload.length, ...headers },
  }, (res) => {
    const chunks = [];
    res.on("data", (c) => chunks.push(c));
    res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
  });
  req.on("timeout", () => req.destroy(new Error("timeout")));
  req.on("error", (e) => resolve({ status: 0, body: String(e) }));
  req.end(payload);
});
// Runs `task(i)` for i in 0..n with at most `width` at once.
async function pooled(n, width, task) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(width, n) }, async () => {
    while (next < n) await task(next++);
  }));
}

if (cmd === "setup") {
  const n = Number(args.conversations), run = `dr${Date.now().toString(36)}`;
  const convs = new Array(n);
  await pooled(n, 16, async (c) => {
    const users = [0, 1, 2].map((k) => `${run}-c${c}u${k}`);
    const res = await post("/api/chat/createConversation", token(users[0]), { participants: users.slice(1), type: "group", topic: `drain ${c}` }, { prefer: "wait=30" });
    const id = res.status < 300 ? JSON.parse(res.body).conversationID : null;
    if (!id) { console.error(`createConversation answered ${res.status} ${res.body}`); process.exit(2); }
    convs[c] = { id, sender: users[0] };
  });
  writeFileSync(args.out, JSON.stringify(convs));
} else if (cmd === "fill") {
  const convs = JSON.parse(readFileSync(args.convs, "utf8")).map((c) => ({ ...c, token: token(c.sender) }));
  const n = Number(args.count);
  const refused = [], tag = Date.now().toString(36);
  await pooled(n, 64, async (i) => {
    const c = convs[i % convs.length];
    const res = await post("/api/chat/sendMessage", c.token, { conversationID: c.id, message: `drain ${tag} ${i}` });
    if (res.status !== 202) refused.push(`${res.status} ${res.body}`);
  });
  if (refused.length) { console.error(`${refused.length} of ${n} sends refused, e.g. ${refused[0]}`); process.exit(2); }
} else if (cmd === "watch") {
  const auth = process.env.ALLO_NATS_ADMIN_PASSWORD ? { user: "allo-admin", pass: process.env.ALLO_NATS_ADMIN_PASSWORD } : {};
  const nc = await connect({ servers: args.nats.split(","), ...auth });
  const jsm = await nc.jetstreamManager();
  const procsText = () => {
    try { return args["procs-file"] ? readFileSync(args["procs-file"], "utf8").trim() : (args.procs ?? ""); } catch { return ""; }
  };
  let procs = Object.fromEntries((args.procs ?? "").split(",").filter(Boolean).map((kv) => kv.split("=")).map(([k, v]) => [k, Number(v)]));
  const dbs = (args["pg-dbs"] ?? "").split(",").filter(Boolean);
  const pool = args.pool ?? "messages", expect = Number(args.expect);
  const outstanding = async () => {
    let n = 0, consumers = 0;
    for await (const ci of jsm.consumers.list(args.stream)) {
      if (ci.name !== pool && !ci.name.startsWith(`${pool}-`)) continue;
      consumers++;
      n += ci.num_pending + ci.num_ack_pending;
    }
    return { n, consumers };
  };
  const first = await outstanding();
  if (first.n < expect) { console.error(`only ${first.n} of ${expect} commands waiting at the start`); process.exit(2); }
  if (args.ready) writeFileSync(args.ready, "ready\n"); // the script starts the workers now
  // The clock starts at the first command applied: the workers' start-up is not drain time.
  let left = first.n;
  const deadline = performance.now() + Number(args["timeout-secs"] ?? 300) * 1000;
  while (left === first.n && performance.now() < deadline) {
    await sleep(10);
    left = (await outstanding()).n;
  }
  procs = Object.fromEntries(procsText().split(",").filter(Boolean).map((kv) => kv.split("=")).map(([k, v]) => [k, Number(v)]));
  const t0 = performance.now(), cpu0 = cpuSample(procs, dbs);
  // Also the steady rate: from 80 % of the backlog left to 20 % left, which leaves out the
  // processes' start (they do not all start serving at the same moment) and the tail.
  let t80 = null, t20 = null;
  while (left > 0 && performance.now() < deadline) {
    await sleep(20);
    left = (await outstanding()).n;
    if (t80 === null && left <= 0.8 * first.n) t80 = performance.now();
    if (t20 === null && left <= 0.2 * first.n) t20 = performance.now();
  }
  const secs = (performance.now() - t0) / 1000;
  const steady = t80 !== null && t20 !== null && t20 > t80 ? (0.6 * first.n) / ((t20 - t80) / 1000) : null;
  const cpu = cpuDelta(cpu0, cpuSample(procs, dbs), secs);
  console.log(JSON.stringify({ consumers: first.consumers, commands: first.n, left, secs, rate: (first.n - left) / secs, steadyRate: steady, cpuPct: cpu.pct }));
  await nc.close();
} else {
  console.error("usage: drain.mjs setup|fill|watch …");
  process.exit(2);
}
process.exit(0);
