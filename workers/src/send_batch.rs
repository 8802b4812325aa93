//! The send family applied as a set: a run of consecutive sends in a batch costs three
//! statements, whatever its length, instead of about ten per command.
//!
//! 1. Lock the conversations the run touches (in id order, so two writers never deadlock).
//! 2. Read, after the lock, who is a participant and which commands were already applied.
//! 3. One statement reserves each conversation's seqs by count and writes the messages, their
//!    `message` events and every command's row (committed with its result, or rejected).
//!
//! With BEGIN and COMMIT that is five round trips and one WAL flush per run.
//!
//! Reading membership only once the conversation is locked matters: a removal commits under
//! the same lock, so a send is either before it in seq order or refused.

use std::collections::{HashMap, HashSet};

use allo_common::command::{Command, CommandEnvelope, CommandStatus, load_outcome};
use allo_common::error::DomainError;
use allo_common::event::{EventEnvelope, EventType};
use allo_common::ids::{CommandId, ConversationId, EventId, MessageId};
use allo_common::ops::message_send::SendMessage;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::apply::{Applied, outcome_of};
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

/// What the check found for one command of the run.
struct Check {
    conversation_exists: bool,
    participant: bool,
    applied_before: bool,
}

/// Applies a run of sends inside the caller's transaction; one result per envelope, in order.
/// `Err` means the run failed as a whole (the caller rolls back and falls back to one command
/// at a time). Every envelope must carry a send ([`as_send`]).
pub async fn apply(
    tx: &mut PgConnection,
    run: &[&CommandEnvelope],
) -> Result<Vec<Result<Applied, sqlx::Error>>, sqlx::Error> {
    let sends: Vec<&SendMessage> = run
        .iter()
        .map(|e| as_send(&e.command).ok_or_else(|| not_a_send(e)))
        .collect::<Result<_, _>>()?;
    let mut conversations: Vec<ConversationId> = sends.iter().map(|s| s.conversation_id).collect();
    conversations.sort();
    conversations.dedup();
    sqlx::query("SELECT id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&conversations)
        .execute(&mut *tx)
        .await?;
    let checks = check(tx, run, &sends).await?;

    let mut rows = Rows::default();
    let mut per_conversation: HashMap<ConversationId, i64> = HashMap::new();
    for ((envelope, send), check) in run.iter().zip(&sends).zip(&checks) {
        if check.applied_before {
            continue;
        }
        let refusal = (!check.participant).then(|| participant_refusal(check.conversation_exists));
        let accepted = refusal.is_none();
        rows.command(envelope, refusal);
        if accepted {
            let k = per_conversation.entry(send.conversation_id).or_default();
            *k += 1;
            rows.message(envelope, send, *k);
        }
    }
    let written = rows.write(tx, per_conversation).await?;

    let mut results = Vec::with_capacity(run.len());
    for ((envelope, send), check) in run.iter().zip(&sends).zip(&checks) {
        let applied = if check.applied_before {
            let stored = load_outcome(&mut *tx, envelope.command_id).await?;
            Applied::Duplicate {
                outcome: stored
                    .map(|(_, o)| o)
                    .unwrap_or_else(|| outcome_of(envelope, CommandStatus::Committed, None, None)),
            }
        } else if !check.participant {
            let reason = participant_refusal(check.conversation_exists);
            Applied::Rejected {
                outcome: outcome_of(envelope, CommandStatus::Rejected, Some(reason), None),
            }
        } else {
            let Some((event_id, at, seq, data)) = written.get(&envelope.command_id).cloned() else {
                return Err(sqlx::Error::Protocol(format!(
                    "command {} was checked but not written",
                    envelope.command_id
                )));
            };
            let event = EventEnvelope {
                event_id,
                kind: EventType::Message,
                conversation_id: send.conversation_id,
                seq,
                command_id: Some(envelope.command_id),
                actor: envelope.actor.clone(),
                at,
                data: data.clone(),
            };
            Applied::Committed {
                events: vec![event],
                notices: Vec::new(),
                outcome: outcome_of(envelope, CommandStatus::Committed, None, Some(data)),
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

/// Membership and "applied before" for every command of the run, read after the lock.
async fn check(
    tx: &mut PgConnection,
    run: &[&CommandEnvelope],
    sends: &[&SendMessage],
) -> Result<Vec<Check>, sqlx::Error> {
    let conversations: Vec<ConversationId> = sends.iter().map(|s| s.conversation_id).collect();
    let users: Vec<&str> = run.iter().map(|e| e.actor.as_str()).collect();
    let commands: Vec<CommandId> = run.iter().map(|e| e.command_id).collect();
    let rows: Vec<(i64, bool, bool, bool)> = sqlx::query_as(
        "SELECT u.i, c.id IS NOT NULL, p.user_id IS NOT NULL, d.id IS NOT NULL
         FROM unnest($1::uuid[], $2::text[], $3::uuid[]) WITH ORDINALITY AS u(conv, usr, cmd, i)
         LEFT JOIN conversations c ON c.id = u.conv
         LEFT JOIN participants p
                ON p.conversation_id = u.conv AND p.user_id = u.usr AND p.left_at IS NULL
         LEFT JOIN commands d ON d.id = u.cmd
         ORDER BY u.i",
    )
    .bind(&conversations)
    .bind(&users)
    .bind(&commands)
    .fetch_all(&mut *tx)
    .await?;
    if rows.len() != run.len() {
        return Err(sqlx::Error::Protocol("membership check lost rows".into()));
    }
    Ok(rows
        .into_iter()
        .map(|(_, exists, participant, applied_before)| Check {
            conversation_exists: exists,
            participant,
            applied_before,
        })
        .collect())
}

/// Column arrays for the one write statement (sqlx binds a `Vec` as a Postgres array).
#[derive(Default)]
struct Rows<'a> {
    // commands
    command_ids: Vec<CommandId>,
    actors: Vec<&'a str>,
    operations: Vec<&'static str>,
    error_codes: Vec<Option<&'static str>>,
    error_messages: Vec<Option<String>>,
    accepted_at: Vec<DateTime<Utc>>,
    // messages, each with its rank in its conversation's run and its event
    message_ids: Vec<MessageId>,
    message_conversations: Vec<ConversationId>,
    ranks: Vec<i64>,
    authors: Vec<&'a str>,
    kinds: Vec<&'static str>,
    bodies: Vec<Option<&'a str>>,
    attachments: Vec<String>,
    encrypted: Vec<Option<bool>>,
    algorithms: Vec<Option<&'a str>>,
    signatures: Vec<Option<&'a str>>,
    expires_at: Vec<Option<DateTime<Utc>>>,
    created_at: Vec<DateTime<Utc>>,
    message_commands: Vec<CommandId>,
    event_ids: Vec<EventId>,
    event_at: Vec<DateTime<Utc>>,
}

impl<'a> Rows<'a> {
    fn command(&mut self, envelope: &'a CommandEnvelope, refusal: Option<DomainError>) {
        self.command_ids.push(envelope.command_id);
        self.actors.push(envelope.actor.as_str());
        self.operations.push(envelope.command.operation().as_str());
        self.error_codes
            .push(refusal.as_ref().map(|r| r.code.as_str()));
        self.error_messages.push(refusal.map(|r| r.message));
        self.accepted_at.push(envelope.at);
    }

    fn message(&mut self, envelope: &'a CommandEnvelope, send: &'a SendMessage, rank: i64) {
        let columns = MessageColumns::of(&send.content, envelope.at);
        self.message_ids.push(send.message_id);
        self.message_conversations.push(send.conversation_id);
        self.ranks.push(rank);
        self.authors.push(envelope.actor.as_str());
        self.kinds.push(columns.kind);
        self.bodies.push(columns.body);
        self.attachments.push(columns.attachments.to_string());
        self.encrypted.push(columns.encrypted);
        self.algorithms.push(columns.encryption_algorithm);
        self.signatures.push(columns.signature);
        self.expires_at.push(columns.expires_at);
        self.created_at.push(envelope.at);
        self.message_commands.push(envelope.command_id);
        self.event_ids.push(EventId::generate());
        self.event_at.push(Utc::now());
    }

    /// Reserves the seqs (one UPDATE per run, by count), writes messages, events and command
    /// rows in one statement, and returns each written message's (event id, at, seq, json).
    async fn write(
        self,
        tx: &mut PgConnection,
        counts: HashMap<ConversationId, i64>,
    ) -> Result<HashMap<CommandId, (EventId, DateTime<Utc>, i64, serde_json::Value)>, sqlx::Error>
    {
        if self.command_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (count_ids, count_ns): (Vec<ConversationId>, Vec<i64>) = counts.into_iter().unzip();
        let rows: Vec<(CommandId, EventId, DateTime<Utc>, i64, serde_json::Value)> =
            sqlx::query_as(WRITE_RUN)
                .bind(&count_ids)
                .bind(&count_ns)
                .bind(&self.message_ids)
                .bind(&self.message_conversations)
                .bind(&self.ranks)
                .bind(&self.authors)
                .bind(&self.kinds)
                .bind(&self.bodies)
                .bind(&self.attachments)
                .bind(&self.encrypted)
                .bind(&self.algorithms)
                .bind(&self.signatures)
                .bind(&self.expires_at)
                .bind(&self.created_at)
                .bind(&self.message_commands)
                .bind(&self.event_ids)
                .bind(&self.event_at)
                .bind(&self.command_ids)
                .bind(&self.actors)
                .bind(&self.operations)
                .bind(&self.error_codes)
                .bind(&self.error_messages)
                .bind(&self.accepted_at)
                .fetch_all(&mut *tx)
                .await?;
        let expected: HashSet<CommandId> = self.message_commands.iter().copied().collect();
        if rows.len() != expected.len() {
            // A conversation vanished between the check and the write: refuse the run as a
            // whole; the one-by-one fallback sorts it out.
            return Err(sqlx::Error::Protocol(format!(
                "wrote {} of {} messages",
                rows.len(),
                expected.len()
            )));
        }
        Ok(rows
            .into_iter()
            .map(|(command, event, at, seq, data)| (command, (event, at, seq, data)))
            .collect())
    }
}

/// Seqs by count per conversation (`base + rank`), then messages, their events (the message as
/// reads show it, from `message_json`) and the command rows, in one round trip.
const WRITE_RUN: &str = "
WITH r AS (
    UPDATE conversations c SET last_seq = c.last_seq + n.cnt
    FROM unnest($1::uuid[], $2::int8[]) AS n(id, cnt)
    WHERE c.id = n.id
    RETURNING c.id, c.last_seq - n.cnt AS base
), m AS (
    INSERT INTO messages (id, conversation_id, seq, author_id, kind, body, attachments, encrypted,
                          encryption_algorithm, signature, expires_at, created_at, command_id)
    SELECT x.id, x.conv, r.base + x.rank, x.author, x.kind, x.body, x.attachments::jsonb,
           x.encrypted, x.algorithm, x.signature, x.expires_at, x.created_at, x.command_id
    FROM unnest($3::uuid[], $4::uuid[], $5::int8[], $6::text[], $7::text[], $8::text[],
                $9::text[], $10::bool[], $11::text[], $12::text[], $13::timestamptz[],
                $14::timestamptz[], $15::uuid[])
         AS x(id, conv, rank, author, kind, body, attachments, encrypted, algorithm, signature,
              expires_at, created_at, command_id)
    JOIN r ON r.id = x.conv
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
    SELECT y.event_id, m.conversation_id, m.seq, 'message', m.command_id, m.author_id, y.at, m.data
    FROM m JOIN unnest($15::uuid[], $16::uuid[], $17::timestamptz[]) AS y(command_id, event_id, at)
         ON y.command_id = m.command_id
    RETURNING command_id, id, at, seq, data
), c AS (
    INSERT INTO commands (id, actor_id, operation, status, error_code, error_message, result, accepted_at)
    SELECT z.id, z.actor, z.op, CASE WHEN z.code IS NULL THEN 'committed' ELSE 'rejected' END,
           z.code, z.message, e.data, z.accepted_at
    FROM unnest($18::uuid[], $19::text[], $20::text[], $21::text[], $22::text[], $23::timestamptz[])
         AS z(id, actor, op, code, message, accepted_at)
    LEFT JOIN e ON e.command_id = z.id
)
SELECT command_id, id, at, seq, data FROM e";
