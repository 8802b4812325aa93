//! The send family: `sendMessage`, `sendSecureMessage`, `sendVoiceMessage`, `sendSticker`,
//! `sendEphemeralMessage`. One module because they are one operation with five bodies: each
//! becomes a [`SendMessage`] whose [`MessageContent`] says which kind it is. Only participants
//! send (checked by the worker); the message id is derived from the command id.

use serde::{Deserialize, Serialize};

use super::{ParseContext, RequestError, check_is_caller, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, MessageId};
use crate::text::{Ciphertext, HttpUrl, MessageText, parse_token};

#[derive(Debug, Deserialize)]
pub struct SendMessageRequest {
    #[serde(rename = "userID", default)]
    pub user_id: Option<String>,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
pub struct SendSecureMessageRequest {
    #[serde(rename = "userID", default)]
    pub user_id: Option<String>,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    /// Base64 ciphertext.
    pub message: String,
    pub encrypted: bool,
    #[serde(rename = "encryptionAlgorithm")]
    pub encryption_algorithm: String,
    #[serde(default)]
    pub signature: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SendVoiceMessageRequest {
    #[serde(rename = "userID", default)]
    pub user_id: Option<String>,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    /// An optional caption.
    #[serde(default)]
    pub message: Option<String>,
    #[serde(rename = "voiceUrl")]
    pub voice_url: String,
}

#[derive(Debug, Deserialize)]
pub struct SendStickerRequest {
    #[serde(rename = "userID", default)]
    pub user_id: Option<String>,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "stickerUrl")]
    pub sticker_url: String,
}

#[derive(Debug, Deserialize)]
pub struct SendEphemeralMessageRequest {
    #[serde(rename = "userID", default)]
    pub user_id: Option<String>,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    pub message: String,
    /// Milliseconds from sending until the message is gone.
    #[serde(rename = "expiresIn")]
    pub expires_in: u64,
}

/// What a new message holds, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MessageContent {
    Text {
        message: MessageText,
    },
    /// Opaque to the server: stored and relayed byte-for-byte.
    Secure {
        ciphertext: Ciphertext,
        encrypted: bool,
        #[serde(rename = "encryptionAlgorithm")]
        encryption_algorithm: String,
        signature: Option<String>,
    },
    Voice {
        url: HttpUrl,
        caption: Option<MessageText>,
    },
    Sticker {
        url: HttpUrl,
    },
    /// Text that vanishes `expires_in_ms` after it is sent.
    Ephemeral {
        message: MessageText,
        #[serde(rename = "expiresInMs")]
        expires_in_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    #[serde(rename = "messageId")]
    pub message_id: MessageId,
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    pub content: MessageContent,
}

fn new_message(
    ctx: &ParseContext<'_>,
    user_id: Option<&str>,
    conversation_id: &str,
    content: impl FnOnce() -> Result<MessageContent, RequestError>,
) -> Result<SendMessage, RequestError> {
    check_is_caller("userID", user_id, ctx.caller)?;
    Ok(SendMessage {
        message_id: ctx.command_id.message_id(),
        conversation_id: parse_id("conversationID", conversation_id, ConversationId::parse)?,
        content: content()?,
    })
}

fn text(field: &str, raw: &str, ctx: &ParseContext<'_>) -> Result<MessageText, RequestError> {
    MessageText::parse(raw, ctx.limits.message_max_chars)
        .map_err(|m| RequestError::invalid(field, m))
}

fn url(field: &str, raw: &str, ctx: &ParseContext<'_>) -> Result<HttpUrl, RequestError> {
    HttpUrl::parse(raw, ctx.limits.url_max_chars).map_err(|m| RequestError::invalid(field, m))
}

pub fn parse(req: SendMessageRequest, ctx: &ParseContext<'_>) -> Result<Command, RequestError> {
    new_message(ctx, req.user_id.as_deref(), &req.conversation_id, || {
        Ok(MessageContent::Text {
            message: text("message", &req.message, ctx)?,
        })
    })
    .map(Command::SendMessage)
}

pub fn parse_secure(
    req: SendSecureMessageRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    let limits = ctx.limits;
    new_message(ctx, req.user_id.as_deref(), &req.conversation_id, || {
        Ok(MessageContent::Secure {
            ciphertext: Ciphertext::parse(&req.message, limits.ciphertext_max_bytes)
                .map_err(|m| RequestError::invalid("message", m))?,
            encrypted: req.encrypted,
            encryption_algorithm: parse_token(&req.encryption_algorithm, 64)
                .map_err(|m| RequestError::invalid("encryptionAlgorithm", m))?,
            signature: req
                .signature
                .as_deref()
                .map(|s| parse_token(s, limits.signature_max_chars))
                .transpose()
                .map_err(|m| RequestError::invalid("signature", m))?,
        })
    })
    .map(Command::SendSecureMessage)
}

pub fn parse_voice(
    req: SendVoiceMessageRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    new_message(ctx, req.user_id.as_deref(), &req.conversation_id, || {
        let caption = match req.message.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(text("message", raw, ctx)?),
        };
        Ok(MessageContent::Voice {
            url: url("voiceUrl", &req.voice_url, ctx)?,
            caption,
        })
    })
    .map(Command::SendVoiceMessage)
}

pub fn parse_sticker(
    req: SendStickerRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    new_message(ctx, req.user_id.as_deref(), &req.conversation_id, || {
        Ok(MessageContent::Sticker {
            url: url("stickerUrl", &req.sticker_url, ctx)?,
        })
    })
    .map(Command::SendSticker)
}

pub fn parse_ephemeral(
    req: SendEphemeralMessageRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    let (min, max) = (ctx.limits.ephemeral_min_ms, ctx.limits.ephemeral_max_ms);
    new_message(ctx, req.user_id.as_deref(), &req.conversation_id, || {
        if !(min..=max).contains(&req.expires_in) {
            return Err(RequestError::invalid(
                "expiresIn",
                format!("must be between {min} and {max} milliseconds"),
            ));
        }
        Ok(MessageContent::Ephemeral {
            message: text("message", &req.message, ctx)?,
            expires_in_ms: req.expires_in,
        })
    })
    .map(Command::SendEphemeralMessage)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use serde_json::json;

    #[test]
    fn message_rules() {
        let conv = uuid::Uuid::now_v7().to_string();
        let send = |v| parse("sendMessage", v, "alice");
        assert!(send(json!({"conversationID": conv, "message": "hi"})).is_ok());
        assert!(send(json!({"conversationID": conv, "message": "hi", "userID": "alice"})).is_ok());
        assert_eq!(
            field_of(send(
                json!({"conversationID": conv, "message": "hi", "userID": "bob"})
            )),
            "userID"
        );
        assert_eq!(
            field_of(send(json!({"conversationID": conv, "message": "  "}))),
            "message"
        );
        assert_eq!(
            field_of(send(
                json!({"conversationID": conv, "message": "x".repeat(4097)})
            )),
            "message"
        );
        assert_eq!(
            field_of(send(json!({"conversationID": "nope", "message": "hi"}))),
            "conversationID"
        );
    }

    #[test]
    fn kinds_have_their_own_rules() {
        let conv = uuid::Uuid::now_v7().to_string();
        let secure = |v| parse("sendSecureMessage", v, "alice");
        let ok = json!({"conversationID": conv, "message": "aGk=", "encrypted": true, "encryptionAlgorithm": "AES-256-GCM", "signature": "c2ln"});
        assert!(secure(ok.clone()).is_ok());
        // Plaintext limits do not apply to ciphertext; its own limit does.
        let mut long = ok.clone();
        long["message"] = json!("QUFB".repeat(2000));
        assert!(secure(long).is_ok());
        let mut huge = ok.clone();
        huge["message"] = json!("QUFB".repeat(6000));
        assert_eq!(field_of(secure(huge)), "message");
        let mut bad = ok;
        bad["encryptionAlgorithm"] = json!("two words");
        assert_eq!(field_of(secure(bad)), "encryptionAlgorithm");

        let voice = |u: &str| {
            parse(
                "sendVoiceMessage",
                json!({"conversationID": conv, "voiceUrl": u}),
                "alice",
            )
        };
        assert!(voice("https://cdn.example.com/a.ogg").is_ok());
        assert_eq!(field_of(voice("file:///etc/passwd")), "voiceUrl");
        let sticker = |u: &str| {
            parse(
                "sendSticker",
                json!({"conversationID": conv, "stickerUrl": u}),
                "alice",
            )
        };
        assert_eq!(field_of(sticker("/s.png")), "stickerUrl");

        let eph = |ms: i64| {
            parse(
                "sendEphemeralMessage",
                json!({"conversationID": conv, "message": "poof", "expiresIn": ms}),
                "alice",
            )
        };
        assert!(eph(1000).is_ok());
        assert!(eph(604_800_000).is_ok());
        for bad in [999, 604_800_001, -5] {
            assert_eq!(field_of(eph(bad)), "expiresIn", "{bad}");
        }
    }
}
