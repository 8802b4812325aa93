#!/usr/bin/env python3
"""A backend subscriber of Allo's event stream: per-conversation message counts.

A durable JetStream pull consumer on `<P>_EVT` (filter `<p>.evt.>`, see docs/nats.md) that keeps,
for each conversation, how many of its messages are live: sent (`message`, also scheduled
ones and polls) or forwarded into it (`messageForwarded`), minus those deleted, unsent,
expired, removed or hidden (`messageDeleted`, `messageUnsent`), plus those restored
(`messageRestored`). That is what a search index or an analytics job needs to agree with Allo's
own reads.

Why it survives its own restart without missing or double-counting anything:
- the consumer is durable: NATS remembers what was acked, and a restart resumes after it;
- each batch is applied in ONE SQLite transaction, committed, and only then acked: a crash
  before the commit loses nothing (NATS redelivers), a crash between commit and ack causes a
  redelivery that changes nothing (below);
- state is kept per message, with the seq of the last event applied to it: an event at or below
  that seq (a redelivery, or an older event arriving late: the stream may carry seq 8 before 7)
  is skipped, and a `messageDeleted` seen before its `message` leaves a tombstone, so the
  `message` that comes later (or never: erasure takes it off the stream) is not counted.

Usage:
  python subscriber.py run      # consume until SIGTERM / Ctrl-C
  python subscriber.py counts   # print the counts in the state file as JSON

Environment: NATS_URL (nats://127.0.0.1:4222), NATS_USER / NATS_PASSWORD / NATS_INBOX_PREFIX
(none; with a user, the prefix defaults to _INBOX_<user>), ALLO_SUBJECT_PREFIX (allo), DURABLE
(message-counter), STATE_FILE (message-counts.sqlite), ACK_WAIT_SECS (30), BATCH (100).
CRASH_AT=before-commit|after-commit (tests only) exits at once after applying the first batch,
before or after its commit and before any ack: the two crash windows the design has to survive.
"""

import asyncio
import json
import os
import signal
import sqlite3
import sys

# The only states a message has here; only `live` is counted.
LIVE, HIDDEN, GONE = "live", "hidden", "gone"

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    message_id      TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    state           TEXT NOT NULL,
    seq             INTEGER NOT NULL  -- the seq of the last event applied to this message
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id);
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def open_state(path):
    db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we ack
    db.executescript(SCHEMA)
    return db


def bump(db, name, by=1):
    db.execute(
        "INSERT INTO stats VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
        (name, by, by),
    )


def transition(kind, data):
    """The state an event moves its message to (None: the event does not concern counts)."""
    if kind in ("message", "messageForwarded", "messageRestored"):
        return LIVE
    if kind == "messageUnsent":
        return GONE
    if kind == "messageDeleted":
        # `hidden` (reports) is reversible by `messageRestored`; every other reason is final.
        return HIDDEN if data.get("reason") == "hidden" else GONE
    return None


def apply(db, event):
    """Applies one event inside the caller's transaction; returns whether it changed state."""
    state = transition(event.get("type"), event.get("data") or {})
    message_id = (event.get("data") or {}).get("messageId")
    if state is None or not message_id:
        return False
    seq, conversation = int(event["seq"]), event["conversationID"]
    row = db.execute(
        "SELECT state, seq FROM messages WHERE message_id = ?", (message_id,)
    ).fetchone()
    if row is not None:
        old_state, old_seq = row
        if seq <= old_seq or old_state == GONE:
            bump(db, "stale_skipped")  # a redelivery, a late older event, or after the end
            return False
        db.execute(
            "UPDATE messages SET state = ?, seq = ? WHERE message_id = ?",
            (state, seq, message_id),
        )
        return True
    # First news of this message. A deletion seen first leaves a tombstone.
    db.execute(
        "INSERT INTO messages VALUES (?, ?, ?, ?)",
        (message_id, conversation, state, seq),
    )
    return True


def counts(db):
    rows = db.execute(
        "SELECT conversation_id, SUM(state = ?) FROM messages GROUP BY conversation_id "
        "ORDER BY conversation_id",
        (LIVE,),
    )
    return {conversation: int(n) for conversation, n in rows}


async def run():
    import nats
    from nats.errors import TimeoutError as FetchTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    prefix = os.environ.get("ALLO_SUBJECT_PREFIX", "allo")
    stream = prefix.upper().replace("-", "_") + "_EVT"
    durable = os.environ.get("DURABLE", "message-counter")
    batch = int(os.environ.get("BATCH", "100"))
    crash_at = os.environ.get("CRASH_AT")
    db = open_state(os.environ.get("STATE_FILE", "message-counts.sqlite"))

    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), **credentials())
    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=float(os.environ.get("ACK_WAIT_SECS", "30")),
        max_ack_pending=1000,
    )
    sub = await js.pull_subscribe(
        f"{prefix}.evt.>", durable=durable, stream=stream, config=config
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log(f"consuming {prefix}.evt.> on {stream} as durable {durable!r}")
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch, timeout=1)
        except FetchTimeout:
            continue
        db.execute("BEGIN IMMEDIATE")
        changed = 0
        for msg in msgs:
            try:
                event = json.loads(msg.data)
            except ValueError:
                log(f"undecodable event skipped: {msg.subject}")
                continue
            changed += apply(db, event)
        bump(db, "events_received", len(msgs))
        crash_if(crash_at == "before-commit", len(msgs))
        db.execute("COMMIT")
        crash_if(crash_at == "after-commit", len(msgs))
        for msg in msgs:
            await msg.ack()
        log(f"applied {len(msgs)} events ({changed} changed counts)")
    await nc.drain()
    db.close()


def credentials():
    """The read-only `allo-subscriber` user of nats.conf (or any other), with the inbox prefix
    its permissions allow: replies to a client without it never reach it."""
    user = os.environ.get("NATS_USER")
    if not user:
        return {}
    inbox = os.environ.get("NATS_INBOX_PREFIX", f"_INBOX_{user}")
    return {"user": user, "password": os.environ.get("NATS_PASSWORD", ""), "inbox_prefix": inbox.encode()}


def crash_if(now, events):
    """The test's crash points: exit at once, nothing acked (as SIGKILL would, but exactly there)."""
    if now and events:
        log(f"CRASH_AT={os.environ.get('CRASH_AT')}: exiting with {events} events unacked")
        os._exit(17)


def log(line):
    print(f"subscriber: {line}", file=sys.stderr, flush=True)


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "counts":
        db = open_state(os.environ.get("STATE_FILE", "message-counts.sqlite"))
        stats = dict(db.execute("SELECT name, value FROM stats"))
        print(json.dumps({"counts": counts(db), "stats": stats}))
    elif command == "run":
        asyncio.run(run())
    else:
        sys.exit(f"usage: {sys.argv[0]} run|counts")


if __name__ == "__main__":
    main()
