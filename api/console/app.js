// Allo's web console: sign in, the conversation list with unread counts, and a live chat pane
// driven by the fan-out's Socket.IO events. No build step: ES modules served by the API.
//
// State flows one way: HTTP reads and socket events update `state`, then the affected part of
// the page is re-rendered. Commands go over HTTP (202 at once); their effect arrives as events.
import { Api, ApiError, claimsOf, devToken } from "./api.js";
import { Live } from "./live.js";
import { ask } from "./dialogs.js";
import * as view from "./view.js";

const $ = (id) => document.getElementById(id);
const SESSION = "allo.console.session";
const PAGE = 30;
const REASONS = ["spam", "harassment", "hate", "violence", "sexual", "self_harm", "misinformation", "other"];

const config = await fetch("config.json").then((r) => r.json());
const state = {
  me: null, // {id, roles, token, dev}
  api: null,
  live: null,
  convs: new Map(), // id -> conversation (list row, plus details once opened)
  active: null, // open conversation id
  stores: new Map(), // id -> {byId: Map, next, loading, pending: []}
  typing: new Map(), // id -> Map(user -> timer)
  online: new Map(), // id -> Set(user)
  presenceWhileAsking: new Map(), // id -> presence events seen during a presence request
  reads: new Map(), // id -> Map(user -> readSeq)
  commands: new Map(), // commandId -> messageId of a pending send
};
// For the browser test: delivery log, connection state.
window.alloConsole = {
  state,
  deliveries: () => Object.fromEntries(state.live?.deliveries ?? []),
  joins: () => state.live?.joins ?? [],
};

// ---------- sign-in ----------

function showSignin(error = "") {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("dev-form").hidden = $("or").hidden = !config.devSignIn;
  $("signin-error").textContent = error;
}

$("dev-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  try {
    const token = await devToken(form.userId.value.trim(), form.moderator.checked);
    await start({ token, dev: true, moderator: form.moderator.checked });
  } catch (err) {
    showSignin(err.message);
  }
});

$("token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await start({ token: e.target.token.value.trim(), dev: false });
  } catch (err) {
    showSignin(err.message);
  }
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(SESSION);
  location.reload();
});

async function start(session) {
  const claims = claimsOf(session.token);
  const api = new Api(session.token);
  const list = await api.get("/api/conversations?limit=100"); // proves the token before we keep it
  sessionStorage.setItem(SESSION, JSON.stringify(session));
  state.me = { id: claims.sub, roles: claims.roles || [], token: session.token, dev: session.dev, moderator: session.moderator };
  state.api = api;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me-avatar").replaceWith(Object.assign(view.avatar(claims.sub), { id: "me-avatar" }));
  $("me-name").textContent = claims.sub;
  $("me-role").textContent = isModerator() ? "moderator" : "member";
  $("open-reports").hidden = !isModerator();
  for (const conv of list) state.convs.set(conv.conversationID, conv);
  state.live = new Live(config.fanoutUrl, session.token, { onEvent, onStatus, onBehind });
  for (const conv of list) state.live.track(conv.conversationID, conv.lastSeq);
  renderSidebar();
  if (isModerator()) refreshReports();
}

const isModerator = () => state.me?.roles.includes("moderator");

// ---------- sidebar ----------

function renderSidebar() {
  const convs = [...state.convs.values()].sort((a, b) => activity(b).localeCompare(activity(a)));
  $("conversations").replaceChildren(
    ...convs.map((c) => view.conversationItem(c, c.conversationID === state.active, () => open(c.conversationID))),
  );
}
const activity = (c) => c.lastMessage?.createdAt ?? c.createdAt ?? "";

function onStatus(status, detail) {
  const conn = $("conn");
  if (status === "warning") return view.toast(detail, "error");
  conn.dataset.state = status;
  conn.textContent = status === "online" ? "live" : "reconnecting…";
  conn.title = detail || "";
}

$("new-group").addEventListener("click", async () => {
  const values = await ask({
    title: "New group",
    submit: "Create",
    fields: [
      { name: "topic", label: "Name", required: true, placeholder: "Lunch plans" },
      { name: "participants", label: "Members (user ids, comma-separated)", required: true, placeholder: "bob, carol" },
    ],
  });
  if (!values) return;
  const participants = values.participants.split(/[\s,]+/).filter(Boolean);
  const reply = await run("createConversation", { participants, type: "group", topic: values.topic });
  if (!reply) return;
  // The conversationCreated event may come before this reply does: open it now or on arrival.
  if (state.convs.has(reply.conversationID)) open(reply.conversationID);
  else state.pendingOpen = reply.conversationID;
});

// ---------- conversation pane ----------

async function open(id) {
  state.active = id;
  $("app").classList.add("show-pane");
  $("empty").hidden = $("reports").hidden = true;
  $("chat").hidden = false;
  renderSidebar();
  const conv = state.convs.get(id);
  $("chat-title").textContent = view.conversationTitle(conv);
  $("message-list").replaceChildren();
  renderTyping();
  const store = { byId: new Map(), next: null, loading: true, pending: [] };
  state.stores.set(id, store);
  const [details, page] = await Promise.all([
    state.api.get(`/api/conversations/${id}`),
    state.api.get(`/api/conversations/${id}/messages?limit=${PAGE}`),
  ]);
  Object.assign(conv, details);
  state.reads.set(id, new Map(details.participants.map((p) => [p.userID, p.lastReadSeq ?? 0])));
  addPage(store, page);
  store.loading = false;
  for (const [event, data] of store.pending.splice(0)) apply(event, data);
  if (state.active !== id) return;
  renderMessages(id);
  scrollToEnd();
  markRead(id);
  // Presence events that arrive while the snapshot is being gathered (the fan-out asks every
  // replica) are newer than it: replay them over the snapshot instead of losing them.
  const newer = [];
  state.presenceWhileAsking.set(id, newer);
  const presence = await state.live.emit("presence", { conversationID: id });
  state.presenceWhileAsking.delete(id);
  const online = new Set(presence?.online ?? []);
  for (const e of newer) e.online ? online.add(e.userID) : online.delete(e.userID);
  state.online.set(id, online);
  renderMembers(id);
}

function addPage(store, page) {
  for (const m of page.messages) if (!store.byId.has(m.messageId)) store.byId.set(m.messageId, m);
  store.next = page.next?.before ?? null;
  $("load-earlier").hidden = store.next === null;
}

$("load-earlier").addEventListener("click", async () => {
  const id = state.active;
  const store = state.stores.get(id);
  if (!store?.next) return;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  addPage(store, await state.api.get(`/api/conversations/${id}/messages?limit=${PAGE}&before=${store.next}`));
  renderMessages(id);
  box.scrollTop = box.scrollHeight - fromBottom; // keep what the reader was looking at in place
});

$("back").addEventListener("click", () => {
  state.active = null;
  $("app").classList.remove("show-pane");
  $("chat").hidden = $("reports").hidden = true;
  $("empty").hidden = false;
  renderSidebar();
});

function renderMembers(id) {
  const conv = state.convs.get(id);
  const online = state.online.get(id) ?? new Set();
  $("chat-members").replaceChildren(
    ...(conv.participants ?? []).map((p) =>
      view.h("span", { class: "member", "data-user": p.userID, "data-online": online.has(p.userID) ? "true" : "false" }, view.h("span", { class: "dot" }), p.userID),
    ),
  );
}

function ctxFor(id) {
  const conv = state.convs.get(id);
  return { me: state.me.id, canDelete: ["owner", "admin"].includes(conv?.role), act: (kind, msg, arg) => act(kind, msg, arg) };
}

function renderMessages(id) {
  const store = state.stores.get(id);
  const ctx = ctxFor(id);
  const messages = [...store.byId.values()].sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity));
  $("message-list").replaceChildren(...messages.map((m) => view.message(m, ctx)));
  renderSeen(id);
}

/** Re-renders one message in place (or inserts it in seq order). */
function renderMessage(id, msg) {
  if (state.active !== id) return;
  const list = $("message-list");
  const node = view.message(msg, ctxFor(id));
  const old = list.querySelector(`[data-id="${CSS.escape(msg.messageId)}"]`);
  if (old && old.dataset.seq === String(msg.seq ?? "")) return old.replaceWith(node), renderSeen(id);
  old?.remove(); // a pending message that got its seq moves to its place in the order
  // Before the first later message, or before the pending ones (no seq yet, shown last).
  const after =
    msg.seq === undefined
      ? null
      : [...list.querySelectorAll(":scope > .msg")].find((li) => li.dataset.seq === "" || Number(li.dataset.seq) > msg.seq);
  list.insertBefore(node, after ?? null);
  renderSeen(id);
}

/** "Seen by …" under the newest own message another member has read. */
function renderSeen(id) {
  document.querySelectorAll(".seen").forEach((n) => n.remove());
  const reads = state.reads.get(id);
  if (!reads) return;
  const mine = [...document.querySelectorAll(`#message-list .msg.mine[data-seq]`)].filter((n) => n.dataset.seq);
  for (const node of mine.reverse()) {
    const seq = Number(node.dataset.seq);
    const readers = [...reads].filter(([user, readSeq]) => user !== state.me.id && readSeq >= seq).map(([user]) => user);
    if (readers.length) {
      node.after(view.h("li", { class: "seen", "aria-label": "read marker" }, `Seen by ${readers.join(", ")}`));
      return;
    }
  }
}

function scrollToEnd() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

// ---------- composer: send, typing, polls, scheduling ----------

const input = $("composer-input");
let typingSent = 0;
let typingIdle = null;
input.addEventListener("input", () => {
  const id = state.active;
  if (!id) return;
  if (Date.now() - typingSent > 2000) {
    typingSent = Date.now();
    state.live.emit("typing", { conversationID: id, typing: true });
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(() => stopTyping(id), 3000);
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
function stopTyping(id) {
  clearTimeout(typingIdle);
  if (typingSent) state.live.emit("typing", { conversationID: id, typing: false });
  typingSent = 0;
}

$("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = state.active;
  const text = input.value.trim();
  if (!id || !text) return;
  input.value = "";
  stopTyping(id);
  const reply = await run("sendMessage", { conversationID: id, message: text });
  if (!reply) return (input.value = text);
  const store = state.stores.get(id);
  if (store && !store.byId.has(reply.messageId)) {
    const pending = { messageId: reply.messageId, userID: state.me.id, message: text, pending: true, reactions: [] };
    store.byId.set(reply.messageId, pending);
    state.commands.set(reply.commandId, { id, messageId: reply.messageId });
    renderMessage(id, pending);
    scrollToEnd();
  }
});

$("poll-button").addEventListener("click", async () => {
  const id = state.active;
  const values = await ask({
    title: "New poll",
    submit: "Create poll",
    fields: [
      { name: "question", label: "Question", required: true },
      { name: "options", label: "Options (one per line)", type: "textarea", rows: 4, required: true },
      { name: "multipleChoice", label: "Allow several answers", type: "checkbox" },
    ],
  });
  if (!values) return;
  const options = values.options.split("\n").map((o) => o.trim()).filter(Boolean);
  await run("createPoll", { conversationID: id, question: values.question, options, multipleChoice: values.multipleChoice });
});

$("schedule-button").addEventListener("click", async () => {
  const id = state.active;
  const soon = new Date(Date.now() + 60_000 - new Date().getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
  const values = await ask({
    title: "Schedule a message",
    submit: "Schedule",
    fields: [
      { name: "message", label: "Message", type: "textarea", required: true, value: input.value },
      { name: "when", label: "Send at", type: "datetime-local", required: true, value: soon },
    ],
  });
  if (!values) return;
  const when = new Date(values.when);
  const reply = await run("scheduleMessage", { conversationID: id, message: values.message, scheduledTime: when.toISOString() });
  if (reply) view.toast(`Scheduled for ${when.toLocaleString()}`);
});

$("show-scheduled").addEventListener("click", async () => {
  const items = await state.api.get("/api/scheduled?status=pending").catch(() => []);
  const rows = items
    .filter((s) => s.conversationID === state.active)
    .map((s) =>
      view.h(
        "div",
        { class: "scheduled-item" },
        view.h("span", {}, `${new Date(s.dueAt).toLocaleString()} — ${s.message}`),
        view.h("button", { type: "button", class: "small danger", onclick: async (e) => { e.target.disabled = true; await run("cancelScheduledMessage", { scheduledMessageId: s.scheduledMessageId }); } }, "Cancel"),
      ),
    );
  await ask({ title: "Scheduled messages", submit: null, fields: [{ type: "info", content: rows.length ? view.h("div", {}, rows) : "Nothing scheduled here." }] });
});

// ---------- message actions ----------

async function act(kind, msg, arg) {
  const conversationID = msg.conversationID ?? state.active;
  const messageId = msg.messageId;
  if (kind === "react") return run("reactionMessage", { conversationID, messageId, emoji: arg });
  if (kind === "vote") {
    const p = msg.poll;
    const mine = new Set(p.myVote || []);
    if (p.multipleChoice && mine.has(arg)) mine.delete(arg);
    else if (p.multipleChoice) mine.add(arg);
    else mine.clear(), mine.add(arg);
    p.myVote = [...mine];
    renderMessage(conversationID, msg);
    return run("votePoll", { conversationID, messageId, optionIndex: arg });
  }
  if (kind === "closePoll") return run("closePoll", { conversationID, messageId });
  if (kind === "unsend") return run("unsendMessage", { conversationID, messageId });
  if (kind === "delete") return run("deleteMessage", { conversationID, messageId });
  if (kind === "edit") {
    const values = await ask({ title: "Edit message", submit: "Save", fields: [{ name: "text", label: "Message", type: "textarea", required: true, value: msg.message }] });
    if (values) return run("editMessage", { conversationID, messageId, newMessage: values.text });
  }
  if (kind === "report") {
    const values = await ask({
      title: "Report message",
      submit: "Report",
      fields: [
        { name: "reason", label: "Reason", type: "select", options: REASONS.map((r) => [r, r.replace("_", " ")]) },
        { name: "details", label: "Details (optional)", type: "textarea" },
      ],
    });
    if (!values) return;
    const body = { conversationID, messageId, reason: values.reason };
    if (values.details) body.details = values.details;
    if (await run("reportMessage", body)) view.toast("Reported. Thank you.");
  }
}

/** Runs a command; a refusal at ingress is shown and resolves null. */
async function run(operation, body) {
  try {
    return await state.api.command(operation, body);
  } catch (err) {
    view.toast(err instanceof ApiError ? `${operation}: ${err.message}` : String(err), "error");
    return null;
  }
}

let readTimer = null;
function markRead(id) {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    const store = state.stores.get(id);
    const conv = state.convs.get(id);
    if (!store || state.active !== id || document.hidden) return;
    const latest = [...store.byId.values()].filter((m) => m.userID !== state.me.id && m.seq && m.status !== "deleted").sort((a, b) => b.seq - a.seq)[0];
    if (latest && latest.seq > (conv.lastReadSeq ?? 0)) {
      conv.lastReadSeq = latest.seq;
      run("messageRead", { conversationID: id, messageId: latest.messageId });
    }
    if (conv.unreadCount) {
      conv.unreadCount = 0;
      renderSidebar();
    }
  }, 300);
}
document.addEventListener("visibilitychange", () => state.active && markRead(state.active));

// ---------- live events ----------

function onBehind(id) {
  if (state.active === id) open(id); // reload the history: the gap was too long to replay
}

function onEvent(event, data) {
  const id = data?.conversationID;
  if (event === "conversationCreated") return conversationCreated(data);
  if (event === "typing") return typing(id, data.userID, data.typing);
  if (event === "presence") {
    state.presenceWhileAsking.get(id)?.push({ userID: data.userID, online: data.online });
    const set = state.online.get(id) ?? new Set();
    data.online ? set.add(data.userID) : set.delete(data.userID);
    state.online.set(id, set);
    return state.active === id && renderMembers(id);
  }
  if (event === "messageReported" || event === "reportResolved") return isModerator() && refreshReports();
  if (event === "error") return commandFailed(data);
  if (event === "tokenExpiring") return refreshToken();
  if (event === "tokenExpired") return showSignin("Your session ended. Sign in again.");
  if (["participantJoined", "participantLeft", "participantRemoved", "participantRoleChanged"].includes(event)) {
    if (state.active === id) state.api.get(`/api/conversations/${id}`).then((d) => (Object.assign(state.convs.get(id), d), renderMembers(id)));
    return;
  }
  const store = state.stores.get(id);
  if (store?.loading) return store.pending.push([event, data]);
  apply(event, data);
}

/** Applies a conversation event to the sidebar and, if loaded, the conversation's messages. */
function apply(event, data) {
  const id = data.conversationID;
  const conv = state.convs.get(id);
  const store = state.stores.get(id);
  const msg = store?.byId.get(data.messageId);
  if (event === "message" || event === "messageForwarded" || event === "messageRestored") {
    const fresh = { ...data, reactions: data.reactions ?? [] };
    if (store) store.byId.set(data.messageId, fresh);
    if (conv && event !== "messageRestored") {
      conv.lastMessage = fresh;
      if (data.userID !== state.me.id && state.active !== id) conv.unreadCount = (conv.unreadCount || 0) + 1;
    }
    typing(id, data.userID, false);
    renderSidebar();
    if (store) {
      renderMessage(id, fresh);
      scrollToEnd();
      markRead(id);
    }
    return;
  }
  if (event === "messageStatusUpdate") {
    const reads = state.reads.get(id);
    if (reads) reads.set(data.readBy ?? data.userID, data.readSeq ?? 0);
    return state.active === id && renderSeen(id);
  }
  if ((event === "messageDeleted" || event === "messageUnsent") && conv?.lastMessage?.messageId === data.messageId) {
    conv.lastMessage = { ...conv.lastMessage, status: "deleted", message: null };
    renderSidebar();
  }
  if (!msg) return;
  if (event === "messageEdited") Object.assign(msg, { message: data.newMessage, editedAt: data.editedAt });
  else if (event === "messageDeleted") Object.assign(msg, { status: "deleted", message: null, poll: null, deletedReason: data.reason });
  else if (event === "messageUnsent") {
    store.byId.delete(data.messageId);
    document.querySelector(`#message-list [data-id="${CSS.escape(data.messageId)}"]`)?.remove();
    return;
  } else if (event === "messageReaction") {
    const reactions = (msg.reactions ||= []);
    let r = reactions.find((x) => x.emoji === data.emoji);
    if (!r) reactions.push((r = { emoji: data.emoji, count: 0, reacted: false }));
    r.count = data.count;
    if (data.userID === state.me.id) r.reacted = data.action === "added";
  } else if ((event === "pollVoted" || event === "pollClosed") && msg.poll) {
    msg.poll.votes = data.votes;
    if (event === "pollClosed") msg.poll.closed = true;
  } else if (event === "messagePinned") Object.assign(msg, { pinned: data.pinned });
  else return;
  renderMessage(id, msg);
}

function conversationCreated(data) {
  const id = data.conversationID;
  if (!state.convs.has(id)) state.convs.set(id, { ...data, role: data.owner === state.me.id ? "owner" : "member", unreadCount: 0, lastSeq: data.seq });
  state.live.track(id, data.seq ?? 0);
  renderSidebar();
  if (state.pendingOpen === id) {
    state.pendingOpen = null;
    open(id);
  }
}

function typing(id, user, on) {
  if (!id || user === state.me.id) return;
  const users = state.typing.get(id) ?? new Map();
  state.typing.set(id, users);
  clearTimeout(users.get(user));
  if (on) users.set(user, setTimeout(() => typing(id, user, false), 5000));
  else users.delete(user);
  if (state.active === id) renderTyping();
}

function renderTyping() {
  const users = [...(state.typing.get(state.active)?.keys() ?? [])];
  $("typing").textContent = users.length ? `${users.join(", ")} ${users.length === 1 ? "is" : "are"} typing…` : "";
}

function commandFailed(data) {
  if (data.event === "joinConversation") return; // Live retries or reports a failed join
  view.toast(`${data.operation ?? "command"} refused: ${data.message} (${data.code ?? "error"})`, "error");
  const pending = state.commands.get(data.commandId);
  const msg = pending && state.stores.get(pending.id)?.byId.get(pending.messageId);
  if (msg?.pending) {
    msg.failed = true;
    renderMessage(pending.id, msg);
  }
}

async function refreshToken() {
  if (!state.me.dev) return view.toast("Your token expires soon: sign in again to continue.");
  const token = await devToken(state.me.id, !!state.me.moderator);
  const ack = await state.live.emit("refreshToken", { token });
  if (ack?.refreshed) {
    state.api.token = state.me.token = token;
    state.live.socket.auth.token = token; // reconnects use the new token too
    sessionStorage.setItem(SESSION, JSON.stringify({ ...JSON.parse(sessionStorage.getItem(SESSION)), token }));
  }
}

// ---------- moderation ----------

async function refreshReports() {
  const reports = await state.api.get("/api/moderation/reports?status=open").catch(() => []);
  $("reports-badge").textContent = reports.length || "";
  $("report-list").replaceChildren(
    ...(reports.length ? reports.map((r) => view.report(r, resolve)) : [view.h("li", { class: "muted" }, "No open reports. 🎉")]),
  );
}

async function resolve(report, action) {
  if (await run("resolveReport", { reportId: report.reportId, action })) {
    view.toast(action === "remove" ? "Message removed" : "Report dismissed");
    setTimeout(refreshReports, 500);
  }
}

$("open-reports").addEventListener("click", () => {
  state.active = null;
  renderSidebar();
  $("app").classList.add("show-pane");
  $("empty").hidden = $("chat").hidden = true;
  $("reports").hidden = false;
  refreshReports();
});
$("reports-refresh").addEventListener("click", refreshReports);
$("reports-back").addEventListener("click", () => $("back").click());

// ---------- boot ----------

const saved = JSON.parse(sessionStorage.getItem(SESSION) || "null");
if (saved) start(saved).catch(() => showSignin("Your session ended. Sign in again."));
else showSignin();
