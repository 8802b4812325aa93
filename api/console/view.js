// Rendering: small functions from data to DOM nodes. Text always goes in as text nodes
// (never innerHTML), so message content cannot inject markup.

/** `h("div", {class: "x", onclick}, child, "text")` */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const PALETTE = ["#4f5bd5", "#d5644f", "#2f9e74", "#b9488f", "#c28a1b", "#3a86c8", "#7a55c9"];

export function avatar(user, { small = false, online } = {}) {
  let hash = 0;
  for (const c of user) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  const node = h("span", { class: small ? "avatar small" : "avatar", "data-online": online ? "true" : null, title: user }, user.slice(0, 2));
  node.style.background = PALETTE[hash % PALETTE.length];
  return node;
}

export function time(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { month: "short", day: "numeric" });
}

export function preview(message) {
  if (!message) return "No messages yet";
  if (message.status === "deleted") return "Message deleted";
  if (message.poll) return `📊 ${message.poll.question ?? "Poll"}`;
  if (message.kind === "secure") return "🔒 Encrypted message";
  if (message.kind === "voice") return "🎤 Voice message";
  if (message.kind === "sticker") return "Sticker";
  return message.message ?? "";
}

export function conversationTitle(conv) {
  return conv.topic || (conv.type === "direct" ? "Direct chat" : "Untitled group");
}

/** A row of the sidebar. */
export function conversationItem(conv, active, onOpen) {
  const unread = conv.unreadCount || 0;
  return h(
    "li",
    {
      class: active ? "conversation active" : "conversation",
      "data-id": conv.conversationID,
      tabindex: 0,
      role: "button",
      onclick: onOpen,
      onkeydown: (e) => e.key === "Enter" && onOpen(),
    },
    avatar(conversationTitle(conv)),
    h(
      "div",
      { class: "text" },
      h("div", { class: "top" }, h("span", { class: "name" }, conversationTitle(conv)), h("time", {}, time(conv.lastMessage?.createdAt ?? conv.createdAt))),
      h(
        "div",
        { class: "top" },
        h("span", { class: "preview" }, preview(conv.lastMessage)),
        h("span", { class: "unread", "data-count": unread, "aria-label": `${unread} unread` }, unread || ""),
      ),
    ),
  );
}

export const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉", "😮"];

/**
 * One message. `ctx`: {me, canModerate, act(kind, msg, arg)} — `act` performs the user's
 * action (react, vote, edit, unsend, delete, report, closePoll).
 */
export function message(msg, ctx) {
  const mine = msg.userID === ctx.me;
  const deleted = msg.status === "deleted";
  const classes = ["msg", mine ? "mine" : "", msg.pending ? "pending" : "", msg.failed ? "failed" : ""];
  const body = deleted
    ? h("div", { class: "text tombstone" }, msg.deletedReason === "hidden" ? "Hidden after reports" : "Message deleted")
    : msg.poll
      ? poll(msg, ctx)
      : h("div", { class: "text" }, msg.message ?? "");
  const meta = h(
    "div",
    { class: "meta" },
    msg.scheduledAt ? h("span", { title: `scheduled for ${msg.scheduledAt}` }, "⏰ scheduled") : null,
    msg.editedAt && !deleted ? h("span", {}, "edited") : null,
    msg.pending ? h("span", {}, "sending…") : h("time", { datetime: msg.createdAt }, time(msg.createdAt)),
  );
  const reactions = (msg.reactions || []).filter((r) => r.count > 0);
  const reactionRow = reactions.length
    ? h(
        "div",
        { class: "reactions" },
        reactions.map((r) =>
          h(
            "button",
            { class: "reaction", "aria-pressed": r.reacted ? "true" : "false", title: `${r.count} reacted ${r.emoji}`, onclick: () => ctx.act("react", msg, r.emoji) },
            `${r.emoji} ${r.count}`,
          ),
        ),
      )
    : null;
  return h(
    "li",
    { class: classes.filter(Boolean).join(" "), "data-id": msg.messageId, "data-seq": msg.seq ?? "", "data-author": msg.userID },
    mine ? null : avatar(msg.userID, { small: true }),
    h("div", { class: "bubble" }, h("div", { class: "author" }, msg.userID), body, reactionRow, meta),
    deleted || msg.pending ? null : tools(msg, mine, ctx),
  );
}

function tools(msg, mine, ctx) {
  const button = (label, text, kind, arg) =>
    h("button", { type: "button", title: label, "aria-label": label, onclick: () => ctx.act(kind, msg, arg) }, text);
  return h(
    "div",
    { class: "tools" },
    QUICK_REACTIONS.map((emoji) => button(`React ${emoji}`, emoji, "react", emoji)),
    mine && !msg.poll ? button("Edit", "✏️", "edit") : null,
    mine ? button("Unsend", "↩️", "unsend") : null,
    mine || ctx.canDelete ? button("Delete", "🗑️", "delete") : null,
    mine ? null : button("Report", "⚑", "report"),
  );
}

function poll(msg, ctx) {
  const p = msg.poll;
  const votes = p.votes || [];
  const total = votes.reduce((a, b) => a + b, 0);
  const mineVotes = new Set(p.myVote || []);
  return h(
    "div",
    { class: "poll" },
    h("div", { class: "poll-question" }, p.question ?? "Poll"),
    (p.options || []).map((option, i) => {
      const n = votes[i] || 0;
      const bar = h("span", { class: "bar" });
      bar.style.width = total ? `${Math.round((100 * n) / total)}%` : "0";
      return h(
        "button",
        {
          type: "button",
          class: "poll-option",
          "aria-pressed": mineVotes.has(i) ? "true" : "false",
          "aria-label": `Vote ${option}`,
          "data-votes": n,
          disabled: p.closed,
          onclick: () => ctx.act("vote", msg, i),
        },
        bar,
        h("span", {}, option),
        h("span", { class: "count" }, String(n)),
      );
    }),
    h(
      "div",
      { class: "poll-foot" },
      h("span", {}, `${total} vote${total === 1 ? "" : "s"}${p.multipleChoice ? " · multiple choice" : ""}${p.closed ? " · closed" : ""}`),
      msg.userID === ctx.me && !p.closed ? h("button", { type: "button", class: "ghost small", onclick: () => ctx.act("closePoll", msg) }, "Close poll") : null,
    ),
  );
}

/** A report in the moderator's queue. */
export function report(r, onResolve) {
  const snapshot = r.messageAtReport;
  return h(
    "li",
    { class: "report", "data-id": r.reportId },
    h("div", { class: "row" }, h("span", { class: "pill" }, r.reason), h("span", { class: "muted" }, `reported by ${r.reporter} · ${time(r.reportedAt)}`), r.hidden ? h("span", { class: "pill" }, "hidden") : null),
    h("blockquote", {}, snapshot ? `${snapshot.userID ?? ""}: ${snapshot.message ?? preview(snapshot)}` : "(content no longer available)"),
    r.details ? h("div", {}, r.details) : null,
    h(
      "div",
      { class: "row" },
      h("button", { type: "button", onclick: () => onResolve(r, "dismiss") }, "Dismiss"),
      h("button", { type: "button", class: "danger", onclick: () => onResolve(r, "remove") }, "Remove message"),
    ),
  );
}

export function toast(text, kind = "") {
  const node = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  document.getElementById("toasts").append(node);
  setTimeout(() => node.remove(), 4000);
}
