// A real socket.io-client (npm) driven over stdio by the Rust end-to-end tests.
//
//   node client.mjs <url> <token> [transports, e.g. websocket; default polling,websocket]
//
// Prints one JSON line per happening: {"kind":"connected"} | {"kind":"connect_error",message}
// | {"kind":"event",event,data} | {"kind":"ack",id,data} | {"kind":"ack",id,timeout:true,data}
// | {"kind":"disconnect",reason}.
// Reads one JSON line per request on stdin: {"id": n, "emit": "<event>", "data": ...}; the
// server's acknowledgement comes back as {"kind":"ack","id":n,...}.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const [url, token, transports] = process.argv.slice(2);
const out = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const socket = io(url, {
  auth: { token },
  reconnection: false,
  timeout: 10000,
  ...(transports ? { transports: transports.split(",") } : {}),
});
socket.on("connect", () => out({ kind: "connected", id: socket.id }));
socket.on("connect_error", (err) => {
  out({ kind: "connect_error", message: err.message });
  process.exit(0);
});
socket.on("disconnect", (reason) => out({ kind: "disconnect", reason }));
socket.onAny((event, data) => out({ kind: "event", event, data }));

createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const { id, emit, data } = JSON.parse(line);
  // A missing ack is flagged (`timeout: true`), so the test fails instead of reading an
  // ordinary-looking value.
  socket.timeout(10000).emit(emit, data, (err, reply) =>
    out(err ? { kind: "ack", id, timeout: true, data: String(err) } : { kind: "ack", id, data: reply }),
  );
}).on("close", () => {
  socket.close();
  process.exit(0);
});
