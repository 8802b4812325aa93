//! Domain errors: what a worker finds when a valid command cannot be applied. Recorded on the
//! command, sent to the actor's sockets and mapped to an HTTP status once, in the API.

use serde::{Deserialize, Serialize};

/// Why a command was rejected. Stable strings: clients match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The conversation (or message) does not exist.
    NotFound,
    /// The actor is not a participant of the conversation.
    NotParticipant,
    /// The actor is a participant but may not do this (e.g. rejoin a group by themselves).
    Forbidden,
    /// The change conflicts with existing state (e.g. a duplicate direct conversation).
    Conflict,
    /// The command is valid in form but not in this state.
    Invalid,
    /// The command failed on every delivery and was set aside.
    DeadLettered,
    /// A total the configuration bounds (members, pending scheduled messages, reactions) is
    /// reached.
    LimitReached,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::NotParticipant => "not_participant",
            Self::Forbidden => "forbidden",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::DeadLettered => "dead_lettered",
            Self::LimitReached => "limit_reached",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(raw.to_string())).ok()
    }

    /// The one mapping from domain error to HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::NotParticipant | Self::Forbidden => 403,
            Self::Conflict => 409,
            Self::Invalid | Self::LimitReached => 422,
            Self::DeadLettered => 500,
        }
    }
}

/// A rejection with a reason a person can read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DomainError {
    pub code: ErrorCode,
    pub message: String,
}

impl DomainError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_as_strings() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::NotParticipant,
            ErrorCode::Forbidden,
            ErrorCode::Conflict,
            ErrorCode::Invalid,
            ErrorCode::DeadLettered,
        ] {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
    }
}
