// Worker thread of openloop.mjs: holds its share of the npm socket.io-client socket (websocket transport)
// and records each `message` event as (tag, socket, arrival time). It runs apart from the
// thread that schedules the POSTs so that 20k socket events/s cannot delay the open-loop
// schedule (and vice versa). Times are epoch milliseconds (performance.timeOrigin + now()), the
// same clock the main thread uses for send times.
import { parentPort, workerData } from "node:worker_threads";
import { io } from "socket.io-client";

const { url, members, base } = workerData; // members: [{token, conversationID}]; base: index of the first
const now = () => performance.timeOrigin + performance.now();

// Arrivals of the current step, flat (cheap to append, one transfer at the end of the step).
let tags = [], socks = [], times = [];
let count = 0;

const sockets = [];
const joinAll = () => Promise.all(members.map((m, i) => new Promise((resolve, reject) => {
  const s = io(url, { auth: { token: m.token }, transports: ["websocket"], reconnection: false });
  const timer = setTimeout(() => reject(new Error(`socket ${i}: no join within 20 s`)), 20000);
  s.on("connect_error", (e) => reject(new Error(`socket ${i}: connect_error ${e.message}`)));
  s.on("disconnect", (reason) => parentPort.postMessage({ type: "disconnect", socket: i, reason }));
  s.on("message", (msg) => {
    tags.push(msg?.message);
    socks.push(base + i);
    times.push(now());
    count++;
  });
  s.on("connect", () => s.emit("joinConversation", { conversationID: m.conversationID }, (ack) => {
    clearTimeout(timer);
    ack?.joined ? resolve() : reject(new Error(`socket ${i}: join refused ${JSON.stringify(ack)}`));
  }));
  sockets.push(s);
})));

parentPort.on("message", (cmd) => {
  if (cmd.type === "count") parentPort.postMessage({ type: "count", count });
  else if (cmd.type === "take") {
    parentPort.postMessage({ type: "arrivals", tags, socks, times });
    tags = []; socks = []; times = []; count = 0;
  } else if (cmd.type === "close") {
    sockets.forEach((s) => s.close());
    parentPort.postMessage({ type: "closed" });
  }
});

joinAll().then(
  () => parentPort.postMessage({ type: "ready", sockets: sockets.length }),
  (e) => parentPort.postMessage({ type: "failed", error: String(e.message ?? e) }),
);
