// The live side: one Socket.IO connection to the fan-out, joined to every conversation in the
// sidebar. Each conversation remembers the last `seq` applied; after a dropped connection the
// socket rejoins with `{conversationID, lastSeq}` and the fan-out replays what was missed
// before live events resume, so nothing is lost or shown twice. A seq already applied is
// dropped here as well (and counted, so the browser test can prove there were none).
import { io } from "./vendor/socket.io.esm.min.js";

export class Live {
  /**
   * @param {string} url the fan-out's Socket.IO URL
   * @param {string} token bearer token (handshake `auth: {token}`)
   * @param {{onEvent: Function, onStatus: Function, onBehind: Function}} handlers
   */
  constructor(url, token, handlers) {
    this.handlers = handlers;
    /** conversationID -> last seq applied */
    this.lastSeq = new Map();
    /** conversationID -> {start, seqs}: every seq delivered, in arrival order (for tests). */
    this.deliveries = new Map();
    this.reconnects = 0;
    /** Every join and its ack (for tests and for debugging a resume). */
    this.joins = [];
    this.socket = io(url, {
      auth: { token },
      // WebSocket only: no long-polling, so no cross-origin XHR and no sticky sessions.
      transports: ["websocket"],
      reconnectionDelay: 300,
      reconnectionDelayMax: 2000,
    });
    this.socket.on("connect", () => {
      handlers.onStatus("online");
      for (const id of this.lastSeq.keys()) this.join(id);
    });
    this.socket.on("disconnect", (reason) => {
      handlers.onStatus("offline", reason);
      // "io server disconnect" (the server dropped us, e.g. a full buffer): reconnect anyway.
      if (reason === "io server disconnect" && !this.expired) this.socket.connect();
    });
    this.socket.io.on("reconnect", () => (this.reconnects += 1));
    this.socket.on("connect_error", (err) => handlers.onStatus("offline", err.message));
    this.socket.onAny((event, data) => this.dispatch(event, data));
  }

  /** Follows a conversation from `lastSeq` on (events after it are replayed). */
  track(id, lastSeq = 0) {
    if (this.lastSeq.has(id)) return;
    this.lastSeq.set(id, lastSeq);
    this.deliveries.set(id, { start: lastSeq, seqs: [] });
    if (this.socket.connected) this.join(id);
  }

  join(id) {
    const lastSeq = this.lastSeq.get(id);
    this.socket.timeout(10000).emit("joinConversation", { conversationID: id, lastSeq }, (err, ack) => {
      this.joins.push({ id, lastSeq, ack: err ? String(err) : ack });
      if (err || ack?.code === "unavailable" || ack?.code === "rate_limited") {
        // A fan-out that has just started may not reach NATS or Postgres yet: try again
        // (with the same lastSeq, so the replay still starts where we stopped).
        setTimeout(() => this.socket.connected && this.join(id), 1000);
      } else if (!ack?.joined) {
        this.handlers.onStatus("warning", `could not join a conversation: ${ack?.code}`);
      } else if (ack.recovered === false) {
        // Too far behind for a replay: the history API is the way back.
        this.lastSeq.set(id, ack.lastSeq);
        this.handlers.onBehind(id);
      }
    });
  }

  dispatch(event, data) {
    if (event === "tokenExpired") this.expired = true;
    const id = data?.conversationID;
    if (id && typeof data.seq === "number" && this.lastSeq.has(id)) {
      this.deliveries.get(id).seqs.push(data.seq);
      if (data.seq <= this.lastSeq.get(id)) return;
      this.lastSeq.set(id, data.seq);
    }
    this.handlers.onEvent(event, data);
  }

  emit(event, data) {
    return new Promise((resolve) => {
      if (!this.socket.connected) return resolve(null);
      this.socket.timeout(5000).emit(event, data, (err, ack) => resolve(err ? null : ack));
    });
  }

  close() {
    this.socket.close();
  }
}
