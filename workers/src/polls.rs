//! The polls pool. Votes are rows keyed by (poll, user, option), written under the poll's row
//! lock, and tallies are counted from those rows in the same transaction: exact under any
//! concurrency, and each `pollVoted` event carries the tallies as of its own commit. Polls are
//! anonymous: `pollVoted` is a system event (no actor, no command id) with the tallies only, and
//! reads give each caller only their own vote.

use allo_common::error::ErrorCode;
use allo_common::event::EventType;
use allo_common::ops::message_ref::MessageRef;
use allo_common::ops::polls::{CreatePoll, VotePoll};
use serde_json::json;

use crate::error::ApplyError;
use crate::messages::{message_json, participant_and_message, refuse_with, require_participant};
use crate::unit::Unit;

pub async fn create(unit: &mut Unit<'_>, c: &CreatePoll) -> Result<serde_json::Value, ApplyError> {
    let author = unit.envelope.actor.clone();
    require_participant(unit, c.conversation_id, &author).await?;
    let seq = unit.reserve_seq(c.conversation_id).await?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, author_id, kind, body, created_at, command_id)
         VALUES ($1, $2, $3, $4, 'poll', $5, $6, $7)",
    )
    .bind(c.message_id)
    .bind(c.conversation_id)
    .bind(seq)
    .bind(author.as_str())
    .bind(c.question.as_str())
    .bind(unit.envelope.at)
    .bind(unit.envelope.command_id)
    .execute(&mut *unit.tx)
    .await?;
    sqlx::query("INSERT INTO polls (message_id, question, options, multiple_choice, closes_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(c.message_id)
        .bind(c.question.as_str())
        .bind(json!(c.options))
        .bind(c.multiple_choice)
        .bind(c.closes_at)
        .execute(&mut *unit.tx)
        .await?;
    let message = message_json(unit, c.message_id).await?;
    unit.record(c.conversation_id, seq, EventType::Message, message.clone())
        .await?;
    Ok(message)
}

/// Locks the poll and returns (number of options, multiple choice, closed, author).
async fn lock_poll(
    unit: &mut Unit<'_>,
    target: MessageRef,
) -> Result<(usize, bool, bool, String), ApplyError> {
    let (_, _, message) = participant_and_message(unit, target).await?;
    let row: Option<(i32, bool, bool)> = sqlx::query_as(
        "SELECT jsonb_array_length(options), multiple_choice,
                closed_at IS NOT NULL OR (closes_at IS NOT NULL AND closes_at <= now())
         FROM polls WHERE message_id = $1 FOR UPDATE",
    )
    .bind(target.message_id)
    .fetch_optional(&mut *unit.tx)
    .await?;
    let (options, multiple, closed) =
        row.ok_or_else(|| refuse_with(ErrorCode::NotFound, "that message is not a poll"))?;
    if message.deleted {
        return Err(refuse_with(ErrorCode::Conflict, "the poll was deleted"));
    }
    Ok((options as usize, multiple, closed, message.author_id))
}

async fn tallies(
    unit: &mut Unit<'_>,
    poll: allo_common::ids::MessageId,
) -> Result<serde_json::Value, ApplyError> {
    Ok(
        sqlx::query_scalar("SELECT poll_json(p, NULL)->'votes' FROM polls p WHERE message_id = $1")
            .bind(poll)
            .fetch_one(&mut *unit.tx)
            .await?,
    )
}

pub async fn vote(unit: &mut Unit<'_>, c: &VotePoll) -> Result<serde_json::Value, ApplyError> {
    let (options, multiple, closed, _) = lock_poll(unit, c.target).await?;
    if closed {
        return Err(refuse_with(ErrorCode::Conflict, "the poll is closed"));
    }
    if c.option_index as usize >= options {
        return Err(refuse_with(
            ErrorCode::Invalid,
            format!("optionIndex must be between 0 and {}", options - 1),
        ));
    }
    let voter = unit.envelope.actor.clone();
    let poll = c.target.message_id;
    let option = c.option_index as i32;
    let mut action = "voted";
    if multiple {
        // Multiple choice: each option toggles.
        let removed = sqlx::query(
            "DELETE FROM poll_votes WHERE message_id = $1 AND user_id = $2 AND option_index = $3",
        )
        .bind(poll)
        .bind(voter.as_str())
        .bind(option)
        .execute(&mut *unit.tx)
        .await?
        .rows_affected();
        if removed == 1 {
            action = "unvoted";
        }
    } else {
        // Single choice: voting again moves the vote.
        sqlx::query("DELETE FROM poll_votes WHERE message_id = $1 AND user_id = $2")
            .bind(poll)
            .bind(voter.as_str())
            .execute(&mut *unit.tx)
            .await?;
    }
    if action == "voted" {
        sqlx::query(
            "INSERT INTO poll_votes (message_id, user_id, option_index) VALUES ($1, $2, $3)",
        )
        .bind(poll)
        .bind(voter.as_str())
        .bind(option)
        .execute(&mut *unit.tx)
        .await?;
    }
    let votes = tallies(unit, poll).await?;
    let data = json!({"messageId": poll, "votes": votes});
    let seq = unit
        .emit_system(c.target.conversation_id, EventType::PollVoted, data)
        .await?;
    // The result is the voter's own (only they read their command back).
    Ok(
        json!({"messageId": poll, "optionIndex": c.option_index, "votes": votes, "action": action, "seq": seq}),
    )
}

pub async fn close(unit: &mut Unit<'_>, c: &MessageRef) -> Result<serde_json::Value, ApplyError> {
    let (_, _, closed, author) = lock_poll(unit, *c).await?;
    if author != unit.envelope.actor.as_str() {
        return Err(refuse_with(
            ErrorCode::Forbidden,
            "only the poll's author closes it",
        ));
    }
    if closed {
        return Err(refuse_with(
            ErrorCode::Conflict,
            "the poll is already closed",
        ));
    }
    let closed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "UPDATE polls SET closed_at = now(), closed_by = $2 WHERE message_id = $1 RETURNING closed_at",
    )
    .bind(c.message_id)
    .bind(unit.envelope.actor.as_str())
    .fetch_one(&mut *unit.tx)
    .await?;
    let votes = tallies(unit, c.message_id).await?;
    let data = json!({"messageId": c.message_id, "votes": votes, "closedAt": closed_at});
    unit.emit(c.conversation_id, EventType::PollClosed, data.clone())
        .await?;
    Ok(data)
}
