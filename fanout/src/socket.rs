//! Socket handlers: the handshake checks `auth: {token}`; `joinConversation` admits only
//! participants; `leaveConversation` leaves the room.

use std::sync::Arc;

use allo_common::auth::Caller;
use allo_common::ids::ConversationId;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, Extension, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use allo_common::ops::reports::MODERATOR_ROLE;

use crate::state::{Fanout, MODERATORS_ROOM, conversation_room, user_room};

#[derive(Debug, Deserialize)]
pub struct HandshakeAuth {
    token: String,
}

#[derive(Debug, thiserror::Error)]
#[error("unauthorized: {0}")]
pub struct Refused(String);

/// Connect middleware: a socket without a valid token never connects (`connect_error`).
pub async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<HandshakeAuth>,
    State(fanout): State<Arc<Fanout>>,
) -> Result<(), Refused> {
    let auth = auth.map_err(|_| Refused("the handshake must carry auth: {token}".into()))?;
    let caller = fanout
        .keys
        .verify(&auth.token)
        .map_err(|e| Refused(e.to_string()))?;
    socket.extensions.insert(caller);
    Ok(())
}

pub async fn on_connect(socket: SocketRef, Extension(caller): Extension<Caller>) {
    tracing::debug!(sid = %socket.id, user = %caller.user, "socket connected");
    socket.join(user_room(&caller.user));
    if caller.has_role(MODERATOR_ROLE) {
        socket.join(MODERATORS_ROOM);
    }
    socket.on("joinConversation", join_conversation);
    socket.on("leaveConversation", leave_conversation);
    socket.on_disconnect(on_disconnect);
}

/// `joinConversation` takes a conversation id, or `{conversationID}`.
fn conversation_of(payload: &Value) -> Option<ConversationId> {
    let raw = match payload {
        Value::String(s) => s.as_str(),
        Value::Object(map) => map.get("conversationID")?.as_str()?,
        _ => return None,
    };
    ConversationId::parse(raw).ok()
}

async fn join_conversation(
    socket: SocketRef,
    io: SocketIo,
    Data(payload): Data<Value>,
    ack: AckSender,
    Extension(caller): Extension<Caller>,
    State(fanout): State<Arc<Fanout>>,
) {
    match admit(&socket, &io, &payload, &caller, &fanout).await {
        Ok(conversation) => {
            let _ = ack.send(&json!({"joined": true, "conversationID": conversation}));
        }
        Err((code, message)) => {
            let _ = socket.emit(
                "error",
                &json!({"code": code, "message": message, "event": "joinConversation"}),
            );
            let _ = ack.send(&json!({"joined": false, "code": code, "message": message}));
        }
    }
}

/// Joins the socket to the conversation's room if the caller is a participant.
async fn admit(
    socket: &SocketRef,
    io: &SocketIo,
    payload: &Value,
    caller: &Caller,
    fanout: &Fanout,
) -> Result<ConversationId, (&'static str, &'static str)> {
    let conversation =
        conversation_of(payload).ok_or(("invalid", "conversationID must be a UUID"))?;
    match fanout.is_participant(conversation, &caller.user).await {
        Ok(true) => {}
        Ok(false) => {
            return Err((
                "not_participant",
                "you are not a participant of this conversation",
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "membership check failed");
            return Err(("unavailable", "could not check membership; try again"));
        }
    }
    fanout
        .subscribe_and(io, conversation, || {
            socket.join(conversation_room(conversation))
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "subscribe failed");
            ("unavailable", "could not subscribe; try again")
        })?;
    Ok(conversation)
}

async fn leave_conversation(
    socket: SocketRef,
    io: SocketIo,
    Data(payload): Data<Value>,
    ack: AckSender,
    State(fanout): State<Arc<Fanout>>,
) {
    let Some(conversation) = conversation_of(&payload) else {
        let _ = ack.send(&json!({"left": false, "code": "invalid"}));
        return;
    };
    socket.leave(conversation_room(conversation));
    fanout
        .unsubscribe_if_unused(&io, conversation, socket.id)
        .await;
    let _ = ack.send(&json!({"left": true, "conversationID": conversation}));
}

async fn on_disconnect(
    socket: SocketRef,
    io: SocketIo,
    reason: DisconnectReason,
    State(fanout): State<Arc<Fanout>>,
) {
    tracing::debug!(sid = %socket.id, ?reason, "socket disconnected");
    for room in socket.rooms() {
        if let Some(id) = room
            .strip_prefix("c:")
            .and_then(|r| ConversationId::parse(r).ok())
        {
            fanout.unsubscribe_if_unused(&io, id, socket.id).await;
        }
    }
}
