//! The send family applied as a set: a run of consecutive sends in a batch is one statement,
//! whatever its length, instead of about ten per command.
//!
//! The statement marks the lane's already published events, reads who is a participant and
//! which commands were already applied, locks the conversations the run touches (in id order,
//! so two writers never deadlock), reserves each conversation's seqs by count, and writes the
//! messages, their `message` events and every new command's row (committed, or rejected with
//! why). A batch of sends only is that one statement on its own, with no BEGIN and COMMIT
//! around it: one round trip and one WAL flush per batch ([`crate::apply`]).
//!
//! Membership is read from the statement's snapshot, taken before it waits for a
//! conversation's lock. Normally nothing can change it meanwhile: every command that changes
//! a conversation's members is routed, like its sends, to the one lane that applies the
//! conversation's commands (crate::pool), one batch after another. But a partition may
//! briefly be served twice (crate::membership), and the other pools lock conversations too,
//! so the statement checks, once it holds the locks, that no conversation took an event
//! since the snapshot (every membership change is one); if one did, it aborts, commits
//! nothing, and is tried again on a new snapshot ([`apply_alone`]), so a send is either before
//! a removal in seq order or refused.

use allo_common::command::{Command, CommandEnvelope, CommandStatus, load_outcome};
use allo_common::event::{Actor, EventEnvelope, EventType};
use allo_common::ids::{CommandId, ConversationId, EventId, MessageId};
use allo_common::ops::message_send::SendMessage;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::apply::{Applied, PublishedMark, mark_published_ctes, outcome_of, split_marks};
use crate::messages::message_send::MessageColumns;
use crate::messages::participant_refusal;

/// The send a command carries, if it is one of the send family.
pub fn as_send(command: &Command) -> Option<&SendMessage> {
    match command {
        Command::SendMessage(c)
        | Command::SendSecureMessage(c)
        | Command::SendVoiceMessage(c)
        | Command::SendSticker(c)
        | Command::SendEphemeralMessage(c) => Some(c),
        _ => None,
    }
}

/// SQLSTATE of `allo_abort`: the statement committed nothing (see `fence` in [`WRITE_RUN`]).
const ABORTED: &str = "AL000";

/// Times a batch of sends is tried again after its statement aborted before it is applied one
/// command at a time. Each try takes a new snapshot, so only another change while it waits
/// for a lock aborts it again.
const ABORTED_TRIES: u32 = 3;

/// Applies a batch of sends only, the statement being its own transaction ([`apply`]); a try
/// that aborted because a conversation changed while it waited for the lock is made again.
pub async fn apply_alone(
    db: &mut PgConnection,
    run: &[&CommandEnvelope],
    marks: &[PublishedMark],
) -> Result<Vec<Result<Applied, sqlx::Error>>, sqlx::Error> {
    let mut tries = 1;
    loop {
        match apply(db, run, marks).await {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some(ABORTED) && tries < ABORTED_TRIES =>
            {
                tries += 1;
                metrics::counter!("allo_batch_aborts_total").increment(1);
            }
            other => return other,
        }
    }
}

/// Applies a run of sends on `db` (a transaction, or a connection for a batch of sends only,
/// where the statement is its own transaction); one result per envelope, in order. `marks`
/// (events of earlier batches now on the stream) are marked published by the same statement.
/// `Err` means the run failed as a whole (the caller rolls back and falls back to one command
/// at a time). Every envelope must carry a send ([`as_send`]).
pub async fn apply(
    db: &mut PgConnection,
    run: &[&CommandEnvelope],
    marks: &[PublishedMark],
) -> Result<Vec<Result<Applied, sqlx::Error>>, sqlx::Error> {
    let sends: Vec<&SendMessage> = run
        .iter()
        .map(|e| as_send(&e.command).ok_or_else(|| not_a_send(e)))
        .collect::<Result<_, _>>()?;
    let mut rows = Rows::default();
    for (envelope, send) in run.iter().zip(&sends) {
        rows.push(envelope, send);
    }
    let written = rows.write(&mut *db, marks).await?;
    if written.len() != run.len() {
        return Err(sqlx::Error::Protocol(format!(
            "the run's statement answered for {} of {} commands",
            written.len(),
            run.len()
        )));
    }
    let mut results = Vec::with_capacity(run.len());
    for ((envelope, send), row) in run.iter().zip(&sends).zip(written) {
        let applied = match row {
            Written {
                applied_before: true,
                ..
            } => {
                let stored = load_outcome(&mut *db, envelope.command_id).await?;
                Applied::Duplicate {
                    outcome: stored.map(|(_, o)| o).unwrap_or_else(|| {
                        outcome_of(envelope, CommandStatus::Committed, None, None)
                    }),
                }
            }
            Written {
                event: Some((event_id, at, seq, data)),
                ..
            } => {
                let event = EventEnvelope {
                    event_id,
                    kind: EventType::Message,
                    conversation_id: send.conversation_id,
                    seq,
                    command_id: Some(envelope.command_id),
                    actor: Actor::User(envelope.actor.clone()),
                    at,
                    data: data.clone(),
                };
                Applied::Committed {
                    events: vec![event],
                    notices: Vec::new(),
                    outcome: outcome_of(envelope, CommandStatus::Committed, None, Some(data)),
                }
            }
            Written {
                participant: false,
                conversation_exists,
                ..
            } => {
                let reason = participant_refusal(conversation_exists);
                Applied::Rejected {
                    outcome: outcome_of(envelope, CommandStatus::Rejected, Some(reason), None),
                }
            }
            Written { .. } => {
                return Err(sqlx::Error::Protocol(format!(
                    "command {} was accepted but not written",
                    envelope.command_id
                )));
            }
        };
        results.push(Ok(applied));
    }
    Ok(results)
}

fn not_a_send(envelope: &CommandEnvelope) -> sqlx::Error {
    sqlx::Error::Protocol(format!(
        "{} is not a send",
        envelope.command.operation().as_str()
    ))
}

/// What the run's statement found and did for one command.
struct Written {
    conversation_exists: bool,
    participant: bool,
    applied_before: bool,
    /// The `message` event written: (id, at, seq, data).
    event: Option<(EventId, DateTime<Utc>, i64, serde_json::Value)>,
}

type WrittenRow = (
    bool,
    bool,
    bool,
    Option<EventId>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<serde_json::Value>,
);

/// Column arrays for the run's statement, one entry per command (sqlx binds a `Vec` as a
/// Postgres array).
#[derive(Default)]
struct Rows<'a> {
    command_ids: Vec<CommandId>,
    actors: Vec<&'a str>,
    operations: Vec<&'static str>,
    accepted_at: Vec<DateTime<Utc>>,
    message_ids: Vec<MessageId>,
    conversations: Vec<ConversationId>,
    kinds: Vec<&'static str>,
    bodies: Vec<Option<&'a str>>,
    attachments: Vec<String>,
    encrypted: Vec<Option<bool>>,
    algorithms: Vec<Option<&'a str>>,
    signatures: Vec<Option<&'a str>>,
    expires_at: Vec<Option<DateTime<Utc>>>,
    event_ids: Vec<EventId>,
    event_at: Vec<DateTime<Utc>>,
}

impl<'a> Rows<'a> {
    fn push(&mut self, envelope: &'a CommandEnvelope, send: &'a SendMessage) {
        let columns = MessageColumns::of(&send.content, envelope.at);
        self.command_ids.push(envelope.command_id);
        self.actors.push(envelope.actor.as_str());
        self.operations.push(envelope.command.operation().as_str());
        self.accepted_at.push(envelope.at);
        self.message_ids.push(send.message_id);
        self.conversations.push(send.conversation_id);
        self.kinds.push(columns.kind);
        self.bodies.push(columns.body);
        self.attachments.push(columns.attachments.to_string());
        self.encrypted.push(columns.encrypted);
        self.algorithms.push(columns.encryption_algorithm);
        self.signatures.push(columns.signature);
        self.expires_at.push(columns.expires_at);
        self.event_ids.push(EventId::generate());
        self.event_at.push(Utc::now());
    }

    async fn write(
        self,
        db: &mut PgConnection,
        marks: &[PublishedMark],
    ) -> Result<Vec<Written>, sqlx::Error> {
        let not_found = participant_refusal(false);
        let not_participant = participant_refusal(true);
        let (marked, stream_seqs) = split_marks(marks);
        let rows: Vec<WrittenRow> = sqlx::query(WRITE_RUN)
            .bind(marked)
            .bind(stream_seqs)
            .bind(&self.command_ids)
            .bind(&self.actors)
            .bind(&self.operations)
            .bind(&self.accepted_at)
            .bind(&self.message_ids)
            .bind(&self.conversations)
            .bind(&self.kinds)
            .bind(&self.bodies)
            .bind(&self.attachments)
            .bind(&self.encrypted)
            .bind(&self.algorithms)
            .bind(&self.signatures)
            .bind(&self.expires_at)
            .bind(&self.event_ids)
            .bind(&self.event_at)
            .bind(not_found.code.as_str())
            .bind(&not_found.message)
            .bind(not_participant.code.as_str())
            .bind(&not_participant.message)
            .try_map(|row: sqlx::postgres::PgRow| {
                use sqlx::Row;
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    row.try_get(5)?,
                    row.try_get(6)?,
                ))
            })
            .fetch_all(&mut *db)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(exists, participant, applied_before, id, at, seq, data)| Written {
                    conversation_exists: exists,
                    participant,
                    applied_before,
                    event: match (id, at, seq, data) {
                        (Some(id), Some(at), Some(seq), Some(data)) => Some((id, at, seq, data)),
                        _ => None,
                    },
                },
            )
            .collect())
    }
}

/// A run's marks, checks and writes in one round trip. The lane's published marks are bound
/// as `$1` and `$2` (the CTEs of [`mark_published_ctes`]); then, read from the statement's
/// snapshot (see the module's note): membership and "applied before" per command; the
/// conversations locked in id order, and their seqs reserved by count (`base + rank` among
/// each one's accepted sends, in run order); messages, their events (the message as reads
/// show it) and the rows of new commands. One answer row per command, in run order.
const WRITE_RUN: &str = concat!(
    mark_published_ctes!(),
    ",",
    "
u AS (
    SELECT * FROM unnest($3::uuid[], $4::text[], $5::text[], $6::timestamptz[], $7::uuid[],
                         $8::uuid[], $9::text[], $10::text[], $11::text[], $12::bool[], $13::text[],
                         $14::text[], $15::timestamptz[], $16::uuid[], $17::timestamptz[])
         WITH ORDINALITY AS u(cmd, actor, op, accepted_at, message_id, conv, kind, body,
                              attachments, encrypted, algorithm, signature, expires_at,
                              event_id, event_at, i)
), chk AS (
    -- One keyed lookup per command each (LATERAL ... LIMIT 1): the generic plan is made once
    -- per connection, and as a join it could pick a full scan of a table that was small then.
    SELECT u.*, c.seen IS NOT NULL AS ex, c.seen, p.member IS NOT NULL AS member,
           d.dup IS NOT NULL AS dup
    FROM u
    LEFT JOIN LATERAL (SELECT c.last_seq AS seen FROM conversations c WHERE c.id = u.conv
                       LIMIT 1) c ON true
    LEFT JOIN LATERAL (SELECT true AS member FROM participants p
                       WHERE p.conversation_id = u.conv AND p.user_id = u.actor
                         AND p.left_at IS NULL LIMIT 1) p ON true
    LEFT JOIN LATERAL (SELECT true AS dup FROM commands d WHERE d.id = u.cmd LIMIT 1) d ON true
), ok AS (
    SELECT chk.*, row_number() OVER (PARTITION BY conv ORDER BY i) AS rank
    FROM chk WHERE member AND NOT dup
), lk AS (
    -- The conversations' locks, taken in id order: the UPDATE below touches only rows this
    -- has locked, so two writers never lock two conversations in opposite orders. FOR UPDATE
    -- answers the row as it is once locked, which may be newer than the snapshot.
    SELECT c.id, c.last_seq FROM conversations c WHERE c.id IN (SELECT conv FROM ok)
    ORDER BY c.id FOR UPDATE
), r AS (
    -- Only conversations unchanged since the snapshot: `seen` is their last_seq then.
    UPDATE conversations c SET last_seq = c.last_seq + n.cnt
    FROM (SELECT conv, count(*) AS cnt, min(seen) AS seen FROM ok GROUP BY conv) AS n
         JOIN lk ON lk.id = n.conv AND lk.last_seq = n.seen
    WHERE c.id = n.conv
    RETURNING c.id, c.last_seq - n.cnt AS base
), fence AS (
    -- A conversation that took an event while this waited for its lock (a membership change,
    -- from a second process serving the partition) voids what was read: nothing commits.
    SELECT allo_abort('a conversation changed while the run waited for its lock') AS aborted
    WHERE (SELECT count(*) FROM r) <> (SELECT count(DISTINCT conv) FROM ok)
), m AS (
    INSERT INTO messages (id, conversation_id, seq, author_id, kind, body, attachments, encrypted,
                          encryption_algorithm, signature, expires_at, created_at, command_id)
    SELECT ok.message_id, ok.conv, r.base + ok.rank, ok.actor, ok.kind, ok.body,
           ok.attachments::jsonb, ok.encrypted, ok.algorithm, ok.signature, ok.expires_at,
           ok.accepted_at, ok.cmd
    FROM ok JOIN r ON r.id = ok.conv
    -- message_json(messages, NULL) for a message nobody has touched yet, spelled out: a
    -- non-inlined SQL function is planned on every execution (about 0.35 ms a statement).
    -- tests/batching.rs checks that the two agree.
    RETURNING command_id, conversation_id, seq, author_id, jsonb_build_object(
        'messageId', id, 'conversationID', conversation_id, 'seq', seq, 'userID', author_id,
        'kind', kind, 'message', body, 'status', 'sent', 'attachments', attachments,
        'createdAt', created_at, 'encrypted', encrypted, 'encryptionAlgorithm', encryption_algorithm,
        'signature', signature, 'ephemeralExpiresAt', expires_at, 'scheduledAt', scheduled_at,
        'editedAt', NULL, 'deletedAt', NULL, 'deletedBy', NULL, 'deletedReason', NULL,
        'pinned', false, 'pinnedAt', NULL, 'pinnedBy', NULL, 'forwardedFrom', forwarded_from,
        'poll', NULL, 'reactions', '[]'::jsonb) AS data
), e AS (
    INSERT INTO events (id, conversation_id, seq, type, command_id, actor_id, at, data)
    SELECT ok.event_id, m.conversation_id, m.seq, 'message', m.command_id, m.author_id,
           ok.event_at, m.data
    FROM m JOIN ok ON ok.cmd = m.command_id
    RETURNING command_id, id, conversation_id, at, seq, data
), o AS (
    INSERT INTO event_outbox (event_id, conversation_id, seq) SELECT id, conversation_id, seq FROM e
), c AS (
    -- No result: a send's result is its message, which load_outcome reads back.
    INSERT INTO commands (id, actor_id, operation, status, error_code, error_message, accepted_at)
    SELECT chk.cmd, chk.actor, chk.op,
           CASE WHEN chk.member THEN 'committed' ELSE 'rejected' END,
           CASE WHEN chk.member THEN NULL WHEN chk.ex THEN $20 ELSE $18 END,
           CASE WHEN chk.member THEN NULL WHEN chk.ex THEN $21 ELSE $19 END,
           chk.accepted_at
    FROM chk
    WHERE NOT chk.dup
)
SELECT chk.ex, chk.member, chk.dup, e.id, e.at, e.seq, e.data
FROM chk LEFT JOIN e ON e.command_id = chk.cmd LEFT JOIN fence ON true
ORDER BY chk.i"
);
