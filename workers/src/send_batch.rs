//! The send family applied as a set: a run of consecutive sends in a batch costs three
//! statements, whatever its length, instead of about ten per command.
//!
//! 1. Lock the conversations the run touches (in id order, so two writers never deadlock),
//!    marking the lane's already published events on the way.
//! 2. One statement reads, after the lock, who is a participant and which commands were
//!    already applied, reserves each conversation's seqs by count, and writes the messages,
//!    their `message` events and every new command's row (committed, or rejected with why).
//!
//! With BEGIN and COMMIT that is four round trips and one WAL flush per batch.
//!
//! Reading membership only once the conversation is locked matters: a removal commits under
//! the same lock, so a send is either before it in seq order or refused.

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

/// Applies a run of sends inside the caller's transaction; one result per envelope, in order.
/// `marks` (events of earlier batches now on the stream) are marked published in the same
/// round trip as the lock. `Err` means the run failed as a whole (the caller rolls back and
/// falls back to one command at a time). Every envelope must carry a send ([`as_send`]).
pub async fn apply(
    tx: &mut PgConnection,
    run: &[&CommandEnvelope],
    marks: &[PublishedMark],
) -> Result<Vec<Result<Applied, sqlx::Error>>, sqlx::Error> {
    let sends: Vec<&SendMessage> = run
        .iter()
        .map(|e| as_send(&e.command).ok_or_else(|| not_a_send(e)))
        .collect::<Result<_, _>>()?;
    let mut conversations: Vec<ConversationId> = sends.iter().map(|s| s.conversation_id).collect();
    conversations.sort();
    conversations.dedup();
    let (marked, stream_seqs) = split_marks(marks);
    sqlx::query(concat!(
        mark_published_ctes!(),
        " SELECT id FROM conversations WHERE id = ANY($3) ORDER BY id FOR UPDATE"
    ))
    .bind(marked)
    .bind(stream_seqs)
    .bind(&conversations)
    .execute(&mut *tx)
    .await?;

    let mut rows = Rows::default();
    for (envelope, send) in run.iter().zip(&sends) {
        rows.push(envelope, send);
    }
    let written = rows.write(tx).await?;
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
                let stored = load_outcome(&mut *tx, envelope.command_id).await?;
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

    async fn write(self, tx: &mut PgConnection) -> Result<Vec<Written>, sqlx::Error> {
        let not_found = participant_refusal(false);
        let not_participant = participant_refusal(true);
        let rows: Vec<WrittenRow> = sqlx::query(WRITE_RUN)
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
            .fetch_all(&mut *tx)
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

/// The check and the write of a run in one round trip, read after the conversations are
/// locked: membership and "applied before" per command; seqs reserved by count per
/// conversation (`base + rank` among its accepted sends, in run order); messages, their
/// events (the message as reads show it) and the rows of new commands. One answer row per
/// command, in run order.
const WRITE_RUN: &str = "
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::uuid[],
                         $6::uuid[], $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[],
                         $12::text[], $13::timestamptz[], $14::uuid[], $15::timestamptz[])
         WITH ORDINALITY AS u(cmd, actor, op, accepted_at, message_id, conv, kind, body,
                              attachments, encrypted, algorithm, signature, expires_at,
                              event_id, event_at, i)
), chk AS (
    -- One keyed lookup per command each (LATERAL ... LIMIT 1): the generic plan is made once
    -- per connection, and as a join it could pick a full scan of a table that was small then.
    SELECT u.*, c.ex IS NOT NULL AS ex, p.member IS NOT NULL AS member, d.dup IS NOT NULL AS dup
    FROM u
    LEFT JOIN LATERAL (SELECT true AS ex FROM conversations c WHERE c.id = u.conv LIMIT 1) c ON true
    LEFT JOIN LATERAL (SELECT true AS member FROM participants p
                       WHERE p.conversation_id = u.conv AND p.user_id = u.actor
                         AND p.left_at IS NULL LIMIT 1) p ON true
    LEFT JOIN LATERAL (SELECT true AS dup FROM commands d WHERE d.id = u.cmd LIMIT 1) d ON true
), ok AS (
    SELECT chk.*, row_number() OVER (PARTITION BY conv ORDER BY i) AS rank
    FROM chk WHERE member AND NOT dup
), r AS (
    UPDATE conversations c SET last_seq = c.last_seq + n.cnt
    FROM (SELECT conv, count(*) AS cnt FROM ok GROUP BY conv) AS n
    WHERE c.id = n.conv
    RETURNING c.id, c.last_seq - n.cnt AS base
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
           CASE WHEN chk.member THEN NULL WHEN chk.ex THEN $18 ELSE $16 END,
           CASE WHEN chk.member THEN NULL WHEN chk.ex THEN $19 ELSE $17 END,
           chk.accepted_at
    FROM chk
    WHERE NOT chk.dup
)
SELECT chk.ex, chk.member, chk.dup, e.id, e.at, e.seq, e.data
FROM chk LEFT JOIN e ON e.command_id = chk.cmd
ORDER BY chk.i";
