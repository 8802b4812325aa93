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

/// Ciphertext of a secure message: standard base64, kept and relayed byte-for-byte (the server
/// never decrypts it); bounded by its decoded size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ciphertext(String);

impl Ciphertext {
    pub fn parse(raw: &str, max_bytes: usize) -> Result<Self, String> {
        use base64::Engine;
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| "must be base64 (RFC 4648, with padding)".to_string())?;
        if decoded.len() > max_bytes {
            return Err(format!(
                "ciphertext must be at most {max_bytes} bytes (got {})",
                decoded.len()
            ));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short printable token (an algorithm name, a signature): no whitespace, bounded.
pub fn parse_token(raw: &str, max_chars: usize) -> Result<String, String> {
    if raw.is_empty() || raw.chars().count() > max_chars {
        return Err(format!("must be 1-{max_chars} characters"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(raw.to_string())
}

/// An absolute http(s) URL with a host, bounded in length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Self, String> {
        if raw.len() > max_chars {
            return Err(format!("must be at most {max_chars} characters"));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("must be an absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("must be an http or https URL with a host".into());
        }
        Ok(Self(url.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reaction: one emoji, possibly a sequence (skin tone, ZWJ family, flag, keycap), never
/// arbitrary text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Emoji(String);

/// Most code points an emoji sequence uses (the longest ZWJ families take 7-10).
const EMOJI_MAX_CHARS: usize = 16;

fn is_pictographic(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2300..=0x23FF | 0x2B00..=0x2BFF | 0x2190..=0x21FF
        | 0x25A0..=0x25FF | 0x2900..=0x297F | 0x3030 | 0x303D | 0x3297 | 0x3299 | 0x00A9 | 0x00AE
        | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x24C2)
}

fn is_emoji_joiner(c: char) -> bool {
    matches!(c as u32,
        0x200D | 0xFE0F | 0xFE0E | 0x20E3 | 0x1F3FB..=0x1F3FF | 0x1F1E6..=0x1F1FF | 0xE0020..=0xE007F)
        || matches!(c, '0'..='9' | '#' | '*')
}

impl Emoji {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let chars: Vec<char> = raw.chars().collect();
        let err = || "must be a single emoji".to_string();
        if chars.is_empty() || chars.len() > EMOJI_MAX_CHARS {
            return Err(err());
        }
        if !chars
            .iter()
            .all(|&c| is_pictographic(c) || is_emoji_joiner(c))
        {
            return Err(err());
        }
        // At least one pictograph, flag letter or keycap mark: "12" or "#" alone is text.
        let has_picture = chars
            .iter()
            .any(|&c| is_pictographic(c) || matches!(c as u32, 0x1F1E6..=0x1F1FF | 0x20E3));
        if !has_picture {
            return Err(err());
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn emoji_are_emoji() {
        for ok in ["👍", "❤️", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "1️⃣", "🏳️‍🌈"]
        {
            assert!(Emoji::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "lol",
            "👍 ",
            "12",
            "#",
            "👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍",
            "<script>",
        ] {
            assert!(Emoji::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_and_ciphertext() {
        assert!(HttpUrl::parse("https://cdn.example.com/v/1.ogg", 100).is_ok());
        for bad in [
            "/relative",
            "ftp://x/y",
            "javascript:alert(1)",
            "https://",
            "not a url",
        ] {
            assert!(HttpUrl::parse(bad, 100).is_err(), "{bad}");
        }
        assert!(HttpUrl::parse(&format!("https://x.io/{}", "a".repeat(100)), 100).is_err());
        assert!(Ciphertext::parse("aGVsbG8=", 10).is_ok());
        assert!(Ciphertext::parse("not base64!", 10).is_err());
        assert!(Ciphertext::parse("aGVsbG8gd29ybGQ=", 5).is_err());
    }
}
