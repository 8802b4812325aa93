//! Validated text values. Length limits are config, so they are checked by `parse`; what any
//! stored text must satisfy (no NUL, which Postgres refuses) is checked on deserialization too.

use serde::{Deserialize, Serialize};

fn check_text(raw: &str, max_chars: usize, allow_newlines: bool) -> Result<(), String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let count = raw.chars().count();
    if count > max_chars {
        return Err(format!(
            "must be at most {max_chars} characters (got {count})"
        ));
    }
    let bad_control =
        |c: char| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t'));
    if raw.chars().any(bad_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// The text of a message: non-blank, at most the configured length, kept as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Self, String> {
        check_text(raw, max_chars, true).map(|()| Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MessageText {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        check_text(&raw, usize::MAX, true).map(|()| Self(raw))
    }
}

impl From<MessageText> for String {
    fn from(text: MessageText) -> Self {
        text.0
    }
}

/// A conversation topic: one line, non-blank, trimmed, at most the configured length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(String);

impl Topic {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Self, String> {
        let trimmed = raw.trim();
        check_text(trimmed, max_chars, false).map(|()| Self(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Topic {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        check_text(&raw, usize::MAX, false).map(|()| Self(raw))
    }
}

impl From<Topic> for String {
    fn from(topic: Topic) -> Self {
        topic.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_limits() {
        assert!(MessageText::parse("hi\nthere", 10).is_ok());
        assert!(MessageText::parse("   ", 10).is_err());
        assert!(MessageText::parse("", 10).is_err());
        assert!(MessageText::parse("a\0b", 10).is_err());
        assert!(MessageText::parse(&"é".repeat(10), 10).is_ok());
        assert!(MessageText::parse(&"é".repeat(11), 10).is_err());
    }

    #[test]
    fn topic_is_one_trimmed_line() {
        assert_eq!(Topic::parse("  Team  ", 10).unwrap().as_str(), "Team");
        assert!(Topic::parse("two\nlines", 20).is_err());
    }
}
