// The README's walkthrough as a script: joins a conversation with a real socket.io-client,
// sends a message over HTTP, and waits for the `message` event. Exit 0 when it arrives.
//
//   node smoke.mjs <api-url> <fanout-url> <token-alice> <token-bob>
import { io } from "socket.io-client";

const [api, fanout, alice, bob] = process.argv.slice(2);
const post = async (token, op, body) => {
  const res = await fetch(`${api}/api/chat/${op}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", prefer: "wait=10" },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${op}: ${res.status} ${JSON.stringify(json)}`);
  return json;
};
const fail = (why) => { console.error(`smoke: ${why}`); process.exit(1); };
setTimeout(() => fail("timed out"), 20000);

const created = await post(alice, "createConversation", { participants: ["bob"], type: "group", topic: "smoke" });
const conversationID = created.conversationID;
const socket = io(fanout, { auth: { token: bob } });
socket.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
socket.on("message", (m) => {
  if (m.conversationID !== conversationID || m.message !== "hello from the smoke test") return;
  console.log(`smoke: bob received seq ${m.seq}: "${m.message}" from ${m.userID}`);
  socket.close();
  process.exit(0);
});
socket.on("connect", () => {
  socket.emit("joinConversation", { conversationID }, async (ack) => {
    if (!ack?.joined) fail(`join refused: ${JSON.stringify(ack)}`);
    await post(alice, "sendMessage", { conversationID, message: "hello from the smoke test" });
  });
});
