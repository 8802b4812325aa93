// The Node baselines bench/openloop.sh measures Allo against, with the same HTTP and socket
// shape so one load generator drives both:
//   POST /api/chat/createConversation {participants, type}   -> 201 {conversationID}
//   POST /api/chat/sendMessage {conversationID, message}      -> 202 {messageId, conversationID}
//   socket (handshake auth: {token}) emits joinConversation {conversationID}, ack {joined}
// Every route checks the Bearer JWT (HS256, `sub`, `exp`) with jsonwebtoken, as an ordinary
// Express app would.
//
//   MODE=nostore  sendMessage emits `message` to the conversation's room, then answers 202
//                 (the "emits what it receives" server: no durability at all)
//   MODE=pg       the same, but first awaits an INSERT of the message into Postgres
//                 (pg Pool, one row per request, synchronous_commit as the server has it)
//   MODE=trivial  no Socket.IO: sendMessage parses the body, checks the JWT and answers 202
//                 with a small JSON (the "trivial Express handler" of the ingress comparison)
//
//   MODE=nostore PORT=5100 JWT_SECRET=s [DATABASE_URL=postgres://…] node server.mjs
// Conversations and membership live in memory: the baseline is what a quick Node chat server
// does, which is the point of the comparison.
import express from "express";
import jwt from "jsonwebtoken";
import { createServer } from "node:http";
import { randomUUID, createSecretKey } from "node:crypto";

const MODE = process.env.MODE ?? "nostore";
const PORT = Number(process.env.PORT ?? 5100);
const SECRET = process.env.JWT_SECRET;
if (!SECRET) throw new Error("JWT_SECRET is required");
// A KeyObject made once: given a string, jsonwebtoken 9 first tries to parse it as a public key
// on every call (≈ 0.45 ms here, 20x the verification itself), which would make the baseline
// look slower than a competent Express app is.
const KEY = createSecretKey(Buffer.from(SECRET));
if (!["nostore", "pg", "trivial"].includes(MODE)) throw new Error(`unknown MODE ${MODE}`);

let pool = null;
if (MODE === "pg") {
  const { default: pg } = await import("pg");
  pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.PG_POOL ?? 10) });
  await pool.query(`CREATE TABLE IF NOT EXISTS messages (
    id uuid PRIMARY KEY, conversation_id uuid NOT NULL, user_id text NOT NULL,
    body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`);
}

const verify = (header) => {
  if (!header?.startsWith("Bearer ")) return null;
  try {
    const claims = jwt.verify(header.slice(7), KEY, { algorithms: ["HS256"] });
    return typeof claims.sub === "string" && claims.exp ? claims.sub : null;
  } catch {
    return null;
  }
};

const app = express();
app.use(express.json({ limit: "64kb" }));
app.get("/readyz", (_req, res) => res.json({ ready: true })); // before the JWT check: no token
app.use((req, res, next) => {
  const user = verify(req.headers.authorization);
  if (!user) return res.status(401).json({ code: "unauthorized" });
  req.user = user;
  next();
});

const server = createServer(app);
const conversations = new Map(); // conversationID -> Set(userID)
let io = null;

if (MODE === "trivial") {
  app.post("/api/chat/sendMessage", (req, res) => {
    const { conversationID, message } = req.body ?? {};
    if (typeof conversationID !== "string" || typeof message !== "string") return res.status(422).json({ code: "invalid" });
    res.status(202).json({ commandId: randomUUID(), messageId: randomUUID(), conversationID, status: "accepted" });
  });
} else {
  const { Server } = await import("socket.io");
  io = new Server(server, { serveClient: false });
  io.use((socket, next) => {
    const user = verify(`Bearer ${socket.handshake.auth?.token}`);
    if (!user) return next(new Error("unauthorized"));
    socket.data.user = user;
    next();
  });
  io.on("connection", (socket) => {
    socket.on("joinConversation", (arg, ack) => {
      const id = typeof arg === "string" ? arg : arg?.conversationID;
      const joined = conversations.get(id)?.has(socket.data.user) ?? false;
      if (joined) socket.join(id);
      if (typeof ack === "function") ack({ joined });
    });
  });

  app.post("/api/chat/createConversation", (req, res) => {
    const { participants, type } = req.body ?? {};
    if (!Array.isArray(participants) || typeof type !== "string") return res.status(422).json({ code: "invalid" });
    const conversationID = randomUUID();
    conversations.set(conversationID, new Set([req.user, ...participants]));
    res.status(201).json({ conversationID, status: "committed" });
  });

  app.post("/api/chat/sendMessage", async (req, res) => {
    const { conversationID, message } = req.body ?? {};
    if (typeof conversationID !== "string" || typeof message !== "string" || message.length === 0) {
      return res.status(422).json({ code: "invalid" });
    }
    if (!conversations.get(conversationID)?.has(req.user)) return res.status(403).json({ code: "not_participant" });
    const msg = { messageId: randomUUID(), conversationID, userID: req.user, message, createdAt: new Date().toISOString(), status: "sent" };
    try {
      if (pool) {
        await pool.query("INSERT INTO messages (id, conversation_id, user_id, body, created_at) VALUES ($1, $2, $3, $4, $5)", [
          msg.messageId, conversationID, req.user, message, msg.createdAt,
        ]);
      }
    } catch (e) {
      return res.status(503).json({ code: "unavailable", detail: String(e) });
    }
    io.to(conversationID).emit("message", msg);
    res.status(202).json({ commandId: msg.messageId, messageId: msg.messageId, conversationID, status: "accepted" });
  });
}

// bench/connections.sh reads RSS after a full collection (it starts this with --expose-gc and
// sends SIGUSR2): otherwise RSS counts the set-up's garbage, not what the sockets hold.
if (global.gc) process.on("SIGUSR2", () => global.gc());

server.keepAliveTimeout = 65_000;
server.listen(PORT, "127.0.0.1", () => console.log(`node baseline (${MODE}) on 127.0.0.1:${PORT}`));
const stop = () => {
  io?.close();
  server.close(async () => {
    await pool?.end().catch(() => {});
    process.exit(0);
  });
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000); // whatever still holds the loop, stop anyway
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
