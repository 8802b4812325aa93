//! Membership beyond joining: `leaveConversation {conversationID}`, and for admins
//! `addParticipants {conversationID, participants}`, `removeParticipant {conversationID,
//! participantID}`, `addAdmin` / `removeAdmin {conversationID, participantID}`. Who may do what
//! is the worker's call (roles live in Postgres).

use serde::{Deserialize, Serialize};

use super::{ParseContext, RequestError, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, UserId};

#[derive(Debug, Deserialize)]
pub struct LeaveConversationRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveConversation {
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
}

#[derive(Debug, Deserialize)]
pub struct AddParticipantsRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    pub participants: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddParticipants {
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    pub participants: Vec<UserId>,
}

#[derive(Debug, Deserialize)]
pub struct ParticipantRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "participantID")]
    pub participant_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantChange {
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    #[serde(rename = "participantID")]
    pub participant: UserId,
}

fn conversation(raw: &str) -> Result<ConversationId, RequestError> {
    parse_id("conversationID", raw, ConversationId::parse)
}

pub fn parse_leave(
    req: LeaveConversationRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::LeaveConversation(LeaveConversation {
        conversation_id: conversation(&req.conversation_id)?,
    }))
}

pub fn parse_add(
    req: AddParticipantsRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    if req.participants.is_empty() || req.participants.len() > ctx.limits.participants_max {
        return Err(RequestError::invalid(
            "participants",
            format!("must name 1-{} users", ctx.limits.participants_max),
        ));
    }
    let mut participants = Vec::with_capacity(req.participants.len());
    for (i, raw) in req.participants.iter().enumerate() {
        let user = UserId::parse(raw)
            .map_err(|m| RequestError::invalid(format!("participants[{i}]"), m))?;
        if !participants.contains(&user) {
            participants.push(user);
        }
    }
    Ok(Command::AddParticipants(AddParticipants {
        conversation_id: conversation(&req.conversation_id)?,
        participants,
    }))
}

fn change(req: ParticipantRequest) -> Result<ParticipantChange, RequestError> {
    Ok(ParticipantChange {
        conversation_id: conversation(&req.conversation_id)?,
        participant: UserId::parse(&req.participant_id)
            .map_err(|m| RequestError::invalid("participantID", m))?,
    })
}

pub fn parse_remove(
    req: ParticipantRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::RemoveParticipant(change(req)?))
}

pub fn parse_add_admin(
    req: ParticipantRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::AddAdmin(change(req)?))
}

pub fn parse_remove_admin(
    req: ParticipantRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::RemoveAdmin(change(req)?))
}
