// The web console in a real browser (Debian's chromium driven by playwright-core): two
// browser contexts sign in as alice (a moderator) and bob, chat, react, vote, see typing,
// presence, read markers, edits, deletes and unsends, schedule a message and go through the
// report queue; then the fan-out is stopped and restarted, and both must show every message
// exactly once and have received every seq once, in order.
//
//   node console.mjs <api-url> <artifacts-dir>        (CHROMIUM=/usr/bin/chromium)
//
// The fan-out is restarted by the caller (tests/tests/console.rs): this script prints
// STOP_FANOUT / START_FANOUT on stdout and waits for a line on stdin before going on.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";

const [base, artifacts] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const TIMEOUT = 15000;
const problems = []; // page errors and CSP violations: any fails the run

async function ask(request) {
  console.log(request);
  const { value } = await stdin.next();
  return value;
}
const step = (what) => console.error(`console.mjs: ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const pages = [];
const shot = (page, name) => page.screenshot({ path: `${artifacts}/${name}.png` });

async function fail(why) {
  console.error(`console.mjs: FAIL: ${why}`);
  for (const page of pages) {
    const joins = await page.evaluate(() => window.alloConsole.joins()).catch(() => "?");
    const deliveries = await page.evaluate(() => window.alloConsole.deliveries()).catch(() => "?");
    console.error(`console.mjs: ${page.user}: joins ${JSON.stringify(joins)}; deliveries ${JSON.stringify(deliveries)}`);
  }
  for (const page of pages) await shot(page, `failure-${page.user}`).catch(() => {});
  await browser.close().catch(() => {});
  process.exit(1);
}
setTimeout(() => fail("timed out after 110 s"), 110_000).unref();

async function signIn(user, moderator) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.user = user;
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (e) => problems.push(`${user}: page error: ${e.message}`));
  // Refused connections while the fan-out is down are expected; any other error is not.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("ERR_CONNECTION_REFUSED")) problems.push(`${user}: console: ${m.text()}`);
  });
  page.on("response", (r) => r.status() === 404 && problems.push(`${user}: 404 for ${r.url()}`));
  pages.push(page);
  await page.goto(`${base}/console/`);
  await page.fill("#dev-form input[name=userId]", user);
  if (moderator) await page.check("#dev-form input[name=moderator]");
  await page.click("#dev-form button[type=submit]");
  await page.waitForSelector("#conn[data-state=online]");
  return page;
}

const msg = (page, text) => page.locator("#message-list .msg", { hasText: text });
async function send(page, text) {
  await page.fill("#composer-input", text);
  await page.press("#composer-input", "Enter");
}
async function tool(page, text, label) {
  const m = msg(page, text).first();
  await m.hover();
  await m.getByRole("button", { name: label, exact: true }).click();
}
async function dialog(page, fill, submit) {
  await page.waitForSelector("dialog[open]");
  for (const [selector, value] of Object.entries(fill)) await page.fill(`dialog ${selector}`, value);
  await page.locator("dialog").getByRole("button", { name: submit, exact: true }).click();
}
const see = (page, selector, what, state = "visible") =>
  page.waitForSelector(selector, { state }).catch((e) => fail(`${page.user} never saw ${what}: ${e.message.split("\n")[0]}`));
const seeText = (page, text) => msg(page, text).first().waitFor().catch(() => fail(`${page.user} never saw "${text}"`));

try {
  const alice = await signIn("alice", true);
  const bob = await signIn("bob", false);

  step("create a group; bob sees it appear, with an unread count");
  await alice.click("#new-group");
  await dialog(alice, { "input[name=topic]": "Launch", "input[name=participants]": "bob" }, "Create");
  await see(alice, "#chat-title:text('Launch')", "the new group open");
  await see(bob, ".conversation:has-text('Launch')", "the group in the sidebar");
  await send(alice, "first!");
  await see(bob, ".conversation:has-text('Launch') .unread[data-count='1']", "1 unread");
  await shot(bob, "bob-unread");

  step("bob opens it: the unread count clears and alice sees the read marker and bob online");
  await bob.click(".conversation:has-text('Launch')");
  await seeText(bob, "first!");
  await see(bob, ".conversation:has-text('Launch') .unread[data-count='0']", "the unread count cleared", "attached");
  await see(alice, ".seen:text('Seen by bob')", "bob's read marker");
  await see(alice, ".member[data-user=bob][data-online=true]", "bob online");

  step("typing indicator, then messages both ways");
  await alice.type("#composer-input", "hello b", { delay: 30 });
  await see(bob, "#typing:text('alice is typing')", "alice typing");
  await alice.type("#composer-input", "ob");
  await alice.press("#composer-input", "Enter");
  await seeText(bob, "hello bob");
  await see(bob, "#typing:empty", "the typing indicator cleared");
  await send(bob, "hi alice");
  await seeText(alice, "hi alice");

  step("reaction, edit");
  await tool(bob, "hello bob", "React 👍");
  await see(alice, "#message-list .msg:has-text('hello bob') .reaction:text('👍 1')", "bob's reaction");
  await tool(alice, "hello bob", "Edit");
  await dialog(alice, { "textarea[name=text]": "hello bob, welcome!" }, "Save");
  await see(bob, "#message-list .msg:has-text('hello bob, welcome!') .meta:has-text('edited')", "the edit");

  step("poll: create, vote, live tallies");
  await alice.click("#poll-button");
  await dialog(alice, { "input[name=question]": "Lunch?", "textarea[name=options]": "Pizza\nSushi" }, "Create poll");
  await see(bob, ".poll-question:text('Lunch?')", "the poll");
  await bob.getByRole("button", { name: "Vote Sushi" }).click();
  await see(alice, "button[aria-label='Vote Sushi'][data-votes='1']", "bob's vote in the tally");
  await alice.getByRole("button", { name: "Vote Sushi" }).click();
  await see(bob, "button[aria-label='Vote Sushi'][data-votes='2']", "alice's vote in the tally");

  step("scheduled message (due now) arrives marked as scheduled");
  await alice.click("#schedule-button");
  // A time in the past means "now" for the scheduler.
  await dialog(alice, { "textarea[name=message]": "scheduled hello", "input[name=when]": "2020-01-01T00:00" }, "Schedule");
  await see(bob, "#message-list .msg:has-text('scheduled hello') .meta:has-text('scheduled')", "the scheduled message");

  step("delete and unsend");
  await send(bob, "typo here");
  await seeText(alice, "typo here");
  await tool(bob, "typo here", "Delete");
  await see(alice, "#message-list .msg .tombstone:text('Message deleted')", "the tombstone");
  await send(alice, "oops wrong chat");
  await seeText(bob, "oops wrong chat");
  await tool(alice, "oops wrong chat", "Unsend");
  await msg(bob, "oops wrong chat").waitFor({ state: "detached" }).catch(() => fail("bob still sees the unsent message"));

  step("report, and the moderator's queue");
  await tool(bob, "first!", "Report");
  await dialog(bob, { "textarea[name=details]": "testing the queue" }, "Report");
  await see(alice, "#reports-badge:text('1')", "the report badge");
  await alice.click("#open-reports");
  await see(alice, ".report:has-text('testing the queue')", "the report in the queue");
  await shot(alice, "alice-report-queue");
  await alice.click(".report:has-text('testing the queue') button:text('Dismiss')");
  await see(alice, "#report-list:has-text('No open reports')", "the queue emptied");
  await alice.click(".conversation:has-text('Launch')");
  await seeText(alice, "scheduled hello");
  await shot(alice, "alice-chat");
  await shot(bob, "bob-chat");

  step("the fan-out stops: both go offline; messages sent meanwhile are committed, not delivered");
  await ask("STOP_FANOUT");
  await see(alice, "#conn[data-state=offline]", "the connection drop");
  await see(bob, "#conn[data-state=offline]", "the connection drop");
  const whileDown = ["while down 1", "while down 2", "while down 3"];
  for (const text of whileDown) await send(alice, text);
  await send(bob, "bob while down");
  await alice.waitForTimeout(1500); // the workers commit them while nobody can be told
  await shot(bob, "bob-offline");

  step("the fan-out restarts: both resume from their last seq");
  await ask("START_FANOUT");
  await see(alice, "#conn[data-state=online]", "the reconnection");
  await see(bob, "#conn[data-state=online]", "the reconnection");
  await send(alice, "after restart");
  const expected = ["first!", "hello bob, welcome!", "hi alice", "scheduled hello", ...whileDown, "bob while down", "after restart"];
  for (const page of [alice, bob]) {
    for (const text of expected) await seeText(page, text);
    await page.waitForSelector("#message-list .msg.pending", { state: "detached" }).catch(() => fail(`${page.user}: a message stayed pending`));
    // Nothing doubled on screen: each text exactly once, the outage's messages in order.
    const texts = await page.locator("#message-list .msg .text:not(.tombstone)").allTextContents();
    for (const text of expected) {
      const n = texts.filter((t) => t === text).length;
      if (n !== 1) await fail(`${page.user} shows "${text}" ${n} times: ${JSON.stringify(texts)}`);
    }
    // In seq order on screen; alice's own outage messages in the order she sent them (bob's
    // may fall between them: each send is a request of its own), the live one last.
    const seqs = await page.locator("#message-list .msg").evaluateAll((nodes) => nodes.map((n) => Number(n.dataset.seq)));
    if (seqs.some((seq, i) => !(seq > 0) || (i > 0 && seq <= seqs[i - 1]))) await fail(`${page.user}: messages out of seq order: ${JSON.stringify(seqs)}`);
    const order = texts.filter((t) => whileDown.includes(t) || t === "after restart");
    if (JSON.stringify(order) !== JSON.stringify([...whileDown, "after restart"])) {
      await fail(`${page.user}: wrong order after the restart: ${JSON.stringify(texts)}`);
    }
    // Nothing missing or doubled on the wire: every seq after the first join, once, in order.
    const deliveries = await page.evaluate(() => window.alloConsole.deliveries());
    for (const [id, { start, seqs }] of Object.entries(deliveries)) {
      const want = seqs.map((_, i) => start + 1 + i);
      if (JSON.stringify(seqs) !== JSON.stringify(want)) {
        await fail(`${page.user}: conversation ${id} got seqs ${JSON.stringify(seqs)} after ${start}, want ${JSON.stringify(want)}`);
      }
    }
    console.error(`console.mjs: ${page.user} saw seqs ${JSON.stringify(Object.values(deliveries).map((d) => [d.start, d.seqs.length]))}`);
  }
  await shot(alice, "alice-after-restart");
  await shot(bob, "bob-after-restart");

  step("narrow screen: the conversation pane alone");
  await bob.setViewportSize({ width: 390, height: 844 });
  await shot(bob, "bob-mobile");

  const csp = problems.filter((p) => /Content Security Policy/i.test(p));
  if (problems.length) await fail(`errors in the pages${csp.length ? " (CSP violations)" : ""}: ${problems.join("; ")}`);
  await browser.close();
  console.log("PASS");
  process.exit(0);
} catch (e) {
  await fail(e.stack || String(e));
}
