-- Every message operation: kinds, attachments, secure fields, expiry, edit/delete/unsend/pin
-- state, forward origin, reactions; removal by admins.

ALTER TABLE messages
    ADD COLUMN attachments          jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN encrypted            boolean,
    ADD COLUMN encryption_algorithm text,
    ADD COLUMN signature            text,
    -- Ephemeral messages: hidden from reads from this instant on, swept later.
    ADD COLUMN expires_at           timestamptz,
    ADD COLUMN edited_at            timestamptz,
    -- A deleted message is a tombstone: content gone, id and seq kept.
    ADD COLUMN deleted_at           timestamptz,
    ADD COLUMN deleted_by           text,
    -- An unsent message disappears for everyone.
    ADD COLUMN unsent_at            timestamptz,
    ADD COLUMN pinned_at            timestamptz,
    ADD COLUMN pinned_by            text,
    -- {messageId, conversationID, userID} of the message this one copies.
    ADD COLUMN forwarded_from       jsonb,
    ADD CONSTRAINT messages_kind_check CHECK (kind IN ('text', 'secure', 'voice', 'sticker'));

CREATE INDEX messages_pinned ON messages (conversation_id, pinned_at) WHERE pinned_at IS NOT NULL;
CREATE INDEX messages_expiring ON messages (expires_at) WHERE expires_at IS NOT NULL AND deleted_at IS NULL;

-- One reaction per (user, message, emoji); sending it again removes it.
CREATE TABLE reactions (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    text NOT NULL,
    emoji      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id, emoji)
);

-- Who removed a participant; a removed participant may not rejoin by themselves.
ALTER TABLE participants ADD COLUMN removed_by text;

-- The one JSON shape of a message, for events (viewer NULL) and reads (viewer = the caller,
-- for `reacted`). Workers and the API both use it, so the two never disagree.
CREATE FUNCTION message_json(m messages, viewer text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'messageId', m.id,
        'conversationID', m.conversation_id,
        'seq', m.seq,
        'userID', m.author_id,
        'kind', m.kind,
        'message', m.body,
        'status', CASE WHEN m.deleted_at IS NOT NULL THEN 'deleted' ELSE 'sent' END,
        'attachments', m.attachments,
        'createdAt', m.created_at,
        'encrypted', m.encrypted,
        'encryptionAlgorithm', m.encryption_algorithm,
        'signature', m.signature,
        'ephemeralExpiresAt', m.expires_at,
        'editedAt', m.edited_at,
        'deletedAt', m.deleted_at,
        'deletedBy', m.deleted_by,
        'pinned', m.pinned_at IS NOT NULL,
        'pinnedAt', m.pinned_at,
        'pinnedBy', m.pinned_by,
        'forwardedFrom', m.forwarded_from,
        'reactions', COALESCE((
            SELECT jsonb_agg(jsonb_build_object('emoji', r.emoji, 'count', r.n, 'reacted', r.mine) ORDER BY r.first, r.emoji)
            FROM (SELECT emoji, count(*) AS n, COALESCE(bool_or(user_id = viewer), false) AS mine, min(created_at) AS first
                  FROM reactions WHERE message_id = m.id GROUP BY emoji) r), '[]'::jsonb)
    )
$$;

-- Whether a reader sees a message at all: unsent and expired messages are gone.
CREATE FUNCTION message_visible(m messages) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT m.unsent_at IS NULL AND (m.expires_at IS NULL OR m.expires_at > now())
$$;
