//! Membership: leaving (an owner who leaves hands ownership to the longest-standing admin, or
//! else the longest-standing member), and admins adding and removing participants and admins.
//! Admins add and remove members and promote or demote admins; only the owner removes an
//! admin from the conversation; nobody removes or demotes the owner.

use allo_common::error::ErrorCode;
use allo_common::event::EventType;
use allo_common::ids::{ConversationId, UserId};
use allo_common::ops::participants::{AddParticipants, LeaveConversation, ParticipantChange};
use serde_json::json;

use super::{Role, refuse, require_participant};
use crate::error::ApplyError;
use crate::unit::Unit;

/// The active role of `user`, if they are in the conversation.
async fn role_of(
    unit: &mut Unit<'_>,
    c: allo_common::ids::ConversationId,
    user: &UserId,
) -> Result<Option<Role>, ApplyError> {
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM participants WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL",
    )
    .bind(c)
    .bind(user.as_str())
    .fetch_optional(&mut *unit.tx)
    .await?;
    Ok(role.as_deref().map(Role::parse))
}

async fn require_admin(
    unit: &mut Unit<'_>,
    c: allo_common::ids::ConversationId,
) -> Result<(Role, String), ApplyError> {
    let actor = unit.envelope.actor.clone();
    let (role, kind) = require_participant(unit, c, &actor).await?;
    if !role.is_admin() {
        return Err(refuse(
            ErrorCode::Forbidden,
            "only the owner or an admin may do this",
        ));
    }
    Ok((role, kind))
}

pub async fn leave(
    unit: &mut Unit<'_>,
    c: &LeaveConversation,
) -> Result<serde_json::Value, ApplyError> {
    let actor = unit.envelope.actor.clone();
    let (role, _) = require_participant(unit, c.conversation_id, &actor).await?;
    sqlx::query("UPDATE participants SET left_at = now(), role = 'member' WHERE conversation_id = $1 AND user_id = $2")
        .bind(c.conversation_id)
        .bind(actor.as_str())
        .execute(&mut *unit.tx)
        .await?;
    let mut new_owner: Option<String> = None;
    if role == Role::Owner {
        new_owner = sqlx::query_scalar(
            "SELECT user_id FROM participants WHERE conversation_id = $1 AND left_at IS NULL
             ORDER BY (role = 'admin') DESC, joined_at, user_id LIMIT 1",
        )
        .bind(c.conversation_id)
        .fetch_optional(&mut *unit.tx)
        .await?;
        if let Some(heir) = &new_owner {
            sqlx::query("UPDATE participants SET role = 'owner' WHERE conversation_id = $1 AND user_id = $2")
                .bind(c.conversation_id)
                .bind(heir)
                .execute(&mut *unit.tx)
                .await?;
            sqlx::query("UPDATE conversations SET owner_id = $2 WHERE id = $1")
                .bind(c.conversation_id)
                .bind(heir)
                .execute(&mut *unit.tx)
                .await?;
        }
    }
    let data = json!({"conversationID": c.conversation_id, "userID": actor, "newOwner": new_owner});
    let seq = unit
        .emit(c.conversation_id, EventType::ParticipantLeft, data.clone())
        .await?;
    let mut result = data;
    result["seq"] = seq.into();
    Ok(result)
}

pub async fn add(
    unit: &mut Unit<'_>,
    c: &AddParticipants,
) -> Result<serde_json::Value, ApplyError> {
    let (_, kind) = require_admin(unit, c.conversation_id).await?;
    if kind == "direct" {
        return Err(refuse(
            ErrorCode::Invalid,
            "a direct conversation has exactly two participants",
        ));
    }
    let actor = unit.envelope.actor.clone();
    let (mut added, mut already) = (Vec::new(), Vec::new());
    let members = super::member_count(unit, c.conversation_id).await?;
    for user in &c.participants {
        if role_of(unit, c.conversation_id, user).await?.is_some() {
            already.push(user.clone());
            continue;
        }
        // All or nothing: the refusal rolls back the ones added before it.
        super::within_total(
            members + added.len() as i64,
            unit.limits.conversation_members_max,
            "members of a conversation",
        )?;
        sqlx::query(
            "INSERT INTO participants (conversation_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3)
             ON CONFLICT (conversation_id, user_id)
             DO UPDATE SET left_at = NULL, removed_by = NULL, role = 'member', joined_at = $3",
        )
        .bind(c.conversation_id)
        .bind(user.as_str())
        .bind(unit.envelope.at)
        .execute(&mut *unit.tx)
        .await?;
        let data = json!({"conversationID": c.conversation_id, "userID": user, "role": "member", "addedBy": actor, "joinedAt": unit.envelope.at});
        let seq = unit
            .emit(c.conversation_id, EventType::ParticipantJoined, data)
            .await?;
        record_join(unit, c.conversation_id, user, seq).await?;
        added.push(user.clone());
    }
    Ok(json!({"conversationID": c.conversation_id, "added": added, "alreadyParticipants": already}))
}

pub async fn remove(
    unit: &mut Unit<'_>,
    c: &ParticipantChange,
) -> Result<serde_json::Value, ApplyError> {
    let (actor_role, _) = require_admin(unit, c.conversation_id).await?;
    let actor = unit.envelope.actor.clone();
    if c.participant == actor {
        return Err(refuse(ErrorCode::Invalid, "use leaveConversation to leave"));
    }
    match role_of(unit, c.conversation_id, &c.participant).await? {
        None => {
            return Err(refuse(
                ErrorCode::NotFound,
                "that user is not a participant",
            ));
        }
        Some(Role::Owner) => {
            return Err(refuse(ErrorCode::Forbidden, "the owner cannot be removed"));
        }
        Some(Role::Admin) if actor_role != Role::Owner => {
            return Err(refuse(
                ErrorCode::Forbidden,
                "only the owner removes an admin",
            ));
        }
        Some(_) => {}
    }
    sqlx::query(
        "UPDATE participants SET left_at = now(), removed_by = $3, role = 'member'
         WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(c.conversation_id)
    .bind(c.participant.as_str())
    .bind(actor.as_str())
    .execute(&mut *unit.tx)
    .await?;
    let data =
        json!({"conversationID": c.conversation_id, "userID": c.participant, "removedBy": actor});
    let seq = unit
        .emit(
            c.conversation_id,
            EventType::ParticipantRemoved,
            data.clone(),
        )
        .await?;
    let mut result = data;
    result["seq"] = seq.into();
    Ok(result)
}

pub async fn set_admin(
    unit: &mut Unit<'_>,
    c: &ParticipantChange,
    admin: bool,
) -> Result<serde_json::Value, ApplyError> {
    let (_, kind) = require_admin(unit, c.conversation_id).await?;
    if kind == "direct" {
        return Err(refuse(
            ErrorCode::Invalid,
            "a direct conversation has no admins",
        ));
    }
    let current = match role_of(unit, c.conversation_id, &c.participant).await? {
        None => {
            return Err(refuse(
                ErrorCode::NotFound,
                "that user is not a participant",
            ));
        }
        Some(Role::Owner) => {
            return Err(refuse(
                ErrorCode::Forbidden,
                "the owner's role cannot change",
            ));
        }
        Some(role) => role,
    };
    let role = if admin { "admin" } else { "member" };
    if (current == Role::Admin) == admin {
        return Ok(
            json!({"conversationID": c.conversation_id, "userID": c.participant, "role": role, "changed": false}),
        );
    }
    sqlx::query("UPDATE participants SET role = $3 WHERE conversation_id = $1 AND user_id = $2")
        .bind(c.conversation_id)
        .bind(c.participant.as_str())
        .bind(role)
        .execute(&mut *unit.tx)
        .await?;
    let actor = unit.envelope.actor.clone();
    let data = json!({"conversationID": c.conversation_id, "userID": c.participant, "role": role, "changedBy": actor});
    let seq = unit
        .emit(
            c.conversation_id,
            EventType::ParticipantRoleChanged,
            data.clone(),
        )
        .await?;
    let mut result = data;
    result["changed"] = true.into();
    result["seq"] = seq.into();
    Ok(result)
}

/// Records the seq of a participant's (re)join: where their history starts in a conversation
/// whose history visibility is `joined` (see `history_floor` in the migrations).
pub(super) async fn record_join(
    unit: &mut Unit<'_>,
    conversation: ConversationId,
    user: &UserId,
    seq: i64,
) -> Result<(), ApplyError> {
    sqlx::query(
        "UPDATE participants SET joined_seq = $3 WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(conversation)
    .bind(user.as_str())
    .bind(seq)
    .execute(&mut *unit.tx)
    .await?;
    Ok(())
}
