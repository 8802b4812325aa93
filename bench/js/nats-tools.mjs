// JetStream helpers of bench/openloop.sh (npm `nats`):
//
//   node nats-tools.mjs ceiling <nats-url> <stream-base> [seconds=3] [window=2000]
//     The bare ceiling: acked publishes/s into a file-storage stream of the bench's own (the
//     storage Allo's command stream uses), pipelined: up to `window` publishes unacknowledged,
//     then every ack awaited at the end. Also the same
//     with each publish awaiting its ack before the next (what a serialised ingress gets).
//     The stream is deleted afterwards. One Node client drives it, so on a small machine the
//     client's own CPU is part of the limit: the figure is a floor for the server's ceiling.
//
//   node nats-tools.mjs cleanup <nats-url> <stream-base>
//     Deletes every stream named <stream-base>_* (Allo's CMD, EVT, RATE of the bench's prefix).
import { connect, createInbox, StorageType, RetentionPolicy } from "nats";

const [cmd, url, base, secondsArg = "3", windowArg = "2000"] = process.argv.slice(2);
if (!cmd || !url || !base) { console.error("usage: nats-tools.mjs ceiling|cleanup <url> <stream-base>"); process.exit(2); }
// As nats.conf's operator user when the bench's NATS requires one (scripts/services.sh exports it).
const auth = process.env.ALLO_NATS_ADMIN_PASSWORD ? { user: "allo-admin", pass: process.env.ALLO_NATS_ADMIN_PASSWORD } : {};
const nc = await connect({ servers: url.split(","), ...auth });
const jsm = await nc.jetstreamManager();

if (cmd === "cleanup") {
  let n = 0;
  for await (const si of jsm.streams.list()) {
    if (si.config.name.startsWith(`${base}_`)) { await jsm.streams.delete(si.config.name); n++; }
  }
  console.log(`deleted ${n} stream(s) ${base}_*`);
} else if (cmd === "ceiling") {
  const name = `${base}_CEILING`;
  const subject = `${base.toLowerCase()}.ceiling.x`;
  await jsm.streams.add({ name, subjects: [`${base.toLowerCase()}.ceiling.>`], storage: StorageType.File, retention: RetentionPolicy.Limits, max_msgs: 2_000_000 });
  const js = nc.jetstream();
  const payload = new TextEncoder().encode(JSON.stringify({ conversationID: "0190f5a2-7d2c-7a6e-9b1e-3c4d5e6f7a8b", message: "x".repeat(60) }));
  const seconds = Number(secondsArg), window = Number(windowArg);
  try {
    // Pipelined: a JetStream publish is a core publish with a reply subject that gets the
    // PubAck. Publishing with our own reply subjects and counting acks in one subscription
    // keeps the client's per-message cost (promise + timer per js.publish) out of the figure;
    // at most `window` publishes are unacknowledged at any time.
    const inbox = createInbox();
    let sent = 0, acked = 0, refused = 0, wake = null;
    nc.subscribe(`${inbox}.*`, { callback: (_e, m) => {
      acked++;
      if (m.data.length > 9 && m.data[2] === 101 /* {"error":… */) refused++;
      if (wake && sent - acked < window / 2) { wake(); wake = null; }
    } });
    const t0 = performance.now();
    while (performance.now() - t0 < seconds * 1000) {
      for (let i = 0; i < 256; i++) nc.publish(subject, payload, { reply: `${inbox}.${sent++}` });
      if (sent - acked >= window) await new Promise((r) => { wake = r; });
    }
    while (acked < sent) await new Promise((r) => { wake = r; setTimeout(r, 50); });
    const pipelined = acked / ((performance.now() - t0) / 1000);
    // One at a time: each publish waits for its ack.
    let serial = 0;
    const t1 = performance.now();
    while (performance.now() - t1 < Math.min(seconds, 2) * 1000) { await js.publish(subject, payload); serial++; }
    const serialRate = serial / ((performance.now() - t1) / 1000);
    const stored = (await jsm.streams.info(name)).state.messages;
    console.log(JSON.stringify({ pipelinedPerSec: Math.round(pipelined), window, refused, stored, serialPerSec: Math.round(serialRate) }));
  } finally {
    await jsm.streams.delete(name).catch(() => {});
  }
} else {
  console.error(`unknown command ${cmd}`);
  process.exit(2);
}
await nc.drain();
