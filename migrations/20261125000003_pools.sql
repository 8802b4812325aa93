-- Scheduler, polls and reports pools.

-- Scheduled messages live here until they are sent; the dispatcher takes due rows with
-- FOR UPDATE SKIP LOCKED and sends each in the same transaction that marks it sent.
CREATE TABLE scheduled_messages (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    author_id       text NOT NULL,
    body            text NOT NULL,
    -- What the sender asked for, and when it is due (a time in the past means "now").
    requested_at    timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'sent', 'cancelled', 'rejected')),
    message_id      uuid,
    sent_at         timestamptz,
    error_code      text,
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    command_id      uuid NOT NULL
);
CREATE INDEX scheduled_due ON scheduled_messages (due_at) WHERE status = 'pending';
CREATE INDEX scheduled_by_author ON scheduled_messages (author_id, due_at);

ALTER TABLE messages
    ADD COLUMN scheduled_at timestamptz,
    -- Hidden pending review after enough distinct reports; a moderator may restore it.
    ADD COLUMN hidden_at    timestamptz,
    ADD COLUMN deleted_reason text;
ALTER TABLE messages DROP CONSTRAINT messages_kind_check;
ALTER TABLE messages ADD CONSTRAINT messages_kind_check CHECK (kind IN ('text', 'secure', 'voice', 'sticker', 'poll'));

CREATE TABLE polls (
    message_id      uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    question        text NOT NULL,
    options         jsonb NOT NULL,
    multiple_choice boolean NOT NULL DEFAULT false,
    closes_at       timestamptz,
    closed_at       timestamptz,
    closed_by       text
);

-- One row per (user, option); a single-choice poll keeps at most one row per user (enforced
-- by the worker under the poll's row lock).
CREATE TABLE poll_votes (
    message_id   uuid NOT NULL REFERENCES polls (message_id) ON DELETE CASCADE,
    user_id      text NOT NULL,
    option_index int NOT NULL,
    voted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id, option_index)
);

CREATE TABLE reports (
    id              uuid PRIMARY KEY,
    message_id      uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    conversation_id uuid NOT NULL,
    reporter_id     text NOT NULL,
    reason          text NOT NULL,
    details         text,
    -- The message as it was when reported (it may be edited or deleted later).
    snapshot        jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'dismissed', 'removed')),
    resolved_by     text,
    resolved_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, reporter_id)
);
CREATE INDEX reports_open ON reports (created_at) WHERE status = 'open';

CREATE OR REPLACE FUNCTION message_visible(m messages) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT m.unsent_at IS NULL AND m.hidden_at IS NULL AND (m.expires_at IS NULL OR m.expires_at > now())
$$;

-- A poll as clients see it: exact tallies from the vote rows, and the viewer's own vote.
CREATE FUNCTION poll_json(p polls, viewer text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'question', p.question,
        'options', p.options,
        'votes', (SELECT jsonb_agg((SELECT count(*) FROM poll_votes v WHERE v.message_id = p.message_id AND v.option_index = i - 1) ORDER BY i)
                  FROM generate_series(1, jsonb_array_length(p.options)) AS i),
        'voters', (SELECT count(DISTINCT user_id) FROM poll_votes v WHERE v.message_id = p.message_id),
        'multipleChoice', p.multiple_choice,
        'closesAt', p.closes_at,
        'closed', p.closed_at IS NOT NULL OR (p.closes_at IS NOT NULL AND p.closes_at <= now()),
        'closedAt', COALESCE(p.closed_at, CASE WHEN p.closes_at <= now() THEN p.closes_at END),
        'myVote', (SELECT jsonb_agg(option_index ORDER BY option_index) FROM poll_votes v
                   WHERE v.message_id = p.message_id AND v.user_id = viewer)
    )
$$;

-- message_json, now with the poll, scheduling and deletion reason.
CREATE OR REPLACE FUNCTION message_json(m messages, viewer text) RETURNS jsonb
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
        'scheduledAt', m.scheduled_at,
        'editedAt', m.edited_at,
        'deletedAt', m.deleted_at,
        'deletedBy', m.deleted_by,
        'deletedReason', m.deleted_reason,
        'pinned', m.pinned_at IS NOT NULL,
        'pinnedAt', m.pinned_at,
        'pinnedBy', m.pinned_by,
        'forwardedFrom', m.forwarded_from,
        'poll', (SELECT poll_json(p, viewer) FROM polls p WHERE p.message_id = m.id),
        'reactions', COALESCE((
            SELECT jsonb_agg(jsonb_build_object('emoji', r.emoji, 'count', r.n, 'reacted', r.mine) ORDER BY r.first, r.emoji)
            FROM (SELECT emoji, count(*) AS n, COALESCE(bool_or(user_id = viewer), false) AS mine, min(created_at) AS first
                  FROM reactions WHERE message_id = m.id GROUP BY emoji) r), '[]'::jsonb)
    )
$$;
