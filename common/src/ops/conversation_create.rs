//! `createConversation`: `{participants, type, topic, owner, historyVisibility}`. The caller
//! becomes the owner and a participant; a `direct` conversation has exactly two participants.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ParseContext, RequestError, check_is_caller, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, UserId};
use crate::text::Topic;

#[derive(Debug, Deserialize)]
pub struct CreateConversationRequest {
    pub participants: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default, rename = "historyVisibility")]
    pub history_visibility: Option<String>,
}

/// What a member added later reads of what happened before they joined: everything
/// (`shared`) or nothing (`joined`). Set at creation; the default depends on the kind (a
/// group is private: `joined`; a channel is public: `shared`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryVisibility {
    Shared,
    Joined,
}

impl HistoryVisibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Joined => "joined",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "shared" => Some(Self::Shared),
            "joined" => Some(Self::Joined),
            _ => None,
        }
    }

    /// The default for a kind of conversation.
    pub fn default_for(kind: ConversationKind) -> Self {
        match kind {
            ConversationKind::Channel => Self::Shared,
            ConversationKind::Direct | ConversationKind::Group => Self::Joined,
        }
    }
}

/// The three kinds of the original. Who may join depends on it (see `joinConversation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Direct,
    Group,
    Channel,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
            Self::Channel => "channel",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "direct" => Some(Self::Direct),
            "group" => Some(Self::Group),
            "channel" => Some(Self::Channel),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConversation {
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    #[serde(rename = "type")]
    pub kind: ConversationKind,
    /// Everyone in the conversation, the owner included; sorted and without duplicates.
    pub participants: Vec<UserId>,
    pub topic: Option<Topic>,
    /// Absent in commands accepted before the setting existed: the kind's default.
    #[serde(
        default,
        rename = "historyVisibility",
        skip_serializing_if = "Option::is_none"
    )]
    pub history_visibility: Option<HistoryVisibility>,
}

impl CreateConversation {
    pub fn history_visibility(&self) -> HistoryVisibility {
        self.history_visibility
            .unwrap_or_else(|| HistoryVisibility::default_for(self.kind))
    }
}

/// `setHistoryVisibility {conversationID, historyVisibility}`: admins change the setting
/// (the worker checks the role).
#[derive(Debug, Deserialize)]
pub struct SetHistoryVisibilityRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "historyVisibility")]
    pub history_visibility: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetHistoryVisibility {
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    #[serde(rename = "historyVisibility")]
    pub history_visibility: HistoryVisibility,
}

fn visibility(raw: &str) -> Result<HistoryVisibility, RequestError> {
    HistoryVisibility::parse(raw)
        .ok_or_else(|| RequestError::invalid("historyVisibility", "must be shared or joined"))
}

pub fn parse_history(
    req: SetHistoryVisibilityRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::SetHistoryVisibility(SetHistoryVisibility {
        conversation_id: parse_id(
            "conversationID",
            &req.conversation_id,
            ConversationId::parse,
        )?,
        history_visibility: visibility(&req.history_visibility)?,
    }))
}

pub fn parse(
    req: CreateConversationRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    check_is_caller("owner", req.owner.as_deref(), ctx.caller)?;
    let kind = ConversationKind::parse(&req.kind)
        .ok_or_else(|| RequestError::invalid("type", "must be one of direct, group, channel"))?;
    if req.participants.len() > ctx.limits.participants_max {
        return Err(RequestError::invalid(
            "participants",
            format!("at most {} participants", ctx.limits.participants_max),
        ));
    }
    let mut participants = BTreeSet::new();
    for (i, raw) in req.participants.iter().enumerate() {
        let user = UserId::parse(raw)
            .map_err(|m| RequestError::invalid(format!("participants[{i}]"), m))?;
        participants.insert(user);
    }
    participants.insert(ctx.caller.user.clone());
    if kind == ConversationKind::Direct && participants.len() != 2 {
        return Err(RequestError::invalid(
            "participants",
            "a direct conversation has exactly two participants: the caller and one other user",
        ));
    }
    let topic = req
        .topic
        .as_deref()
        .map(|t| Topic::parse(t, ctx.limits.topic_max_chars))
        .transpose()
        .map_err(|m| RequestError::invalid("topic", m))?;
    let history_visibility = req
        .history_visibility
        .as_deref()
        .map(visibility)
        .transpose()?;
    Ok(Command::CreateConversation(CreateConversation {
        conversation_id: ctx.command_id.conversation_id(),
        kind,
        participants: participants.into_iter().collect(),
        topic,
        history_visibility: Some(
            history_visibility.unwrap_or_else(|| HistoryVisibility::default_for(kind)),
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::command::Command;
    use serde_json::json;

    #[test]
    fn the_caller_is_always_a_participant() {
        let Ok(Command::CreateConversation(c)) = parse(
            "createConversation",
            json!({"participants": ["bob", "bob"], "type": "group"}),
            "alice",
        ) else {
            panic!("expected a valid command");
        };
        let names: Vec<_> = c.participants.iter().map(|u| u.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
    }

    #[test]
    fn rules_name_their_field() {
        let body = |v| parse("createConversation", v, "alice");
        assert_eq!(
            field_of(body(json!({"participants": ["bob"], "type": "party"}))),
            "type"
        );
        assert_eq!(
            field_of(body(
                json!({"participants": ["bob", "carol"], "type": "direct"})
            )),
            "participants"
        );
        assert_eq!(
            field_of(body(json!({"participants": ["alice"], "type": "direct"}))),
            "participants"
        );
        assert_eq!(
            field_of(body(json!({"participants": ["bob", ""], "type": "group"}))),
            "participants[1]"
        );
        assert_eq!(
            field_of(body(
                json!({"participants": ["bob"], "type": "group", "topic": "x".repeat(201)})
            )),
            "topic"
        );
        assert_eq!(
            field_of(body(
                json!({"participants": ["bob"], "type": "group", "owner": "mallory"})
            )),
            "owner"
        );
        assert_eq!(
            field_of(body(
                json!({"participants": ["bob"], "type": "group", "historyVisibility": "all"})
            )),
            "historyVisibility"
        );
        assert!(body(json!({"participants": ["bob"], "type": "group", "owner": "alice"})).is_ok());
    }
}
