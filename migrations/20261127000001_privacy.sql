-- Privacy (issue 10): system-originated events name nobody, erasure reaches every copy (the
-- event stream included), hidden messages are redacted when served, and late joiners see
-- history only as far as the conversation's setting allows.

-- An event done by the system (a vote, a hide by reports, a moderator's decision, an expiry)
-- names no user: actor NULL.
ALTER TABLE events ALTER COLUMN actor_id DROP NOT NULL;
-- The event's sequence in the event stream, recorded with its published mark: erasure deletes
-- the stream's copy by it.
ALTER TABLE events ADD COLUMN stream_seq bigint;

-- Stream copies still to delete: events whose content was erased (or hidden) after they may
-- have reached the event stream. The relay deletes each once its stream_seq is known (a copy
-- published after the erasure gets its mark, and so its deletion, like any other).
CREATE TABLE stream_erasures (
    event_id     uuid PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now()
);

-- A report keeps the message as it was only while it is open (for moderators).
ALTER TABLE reports ALTER COLUMN snapshot DROP NOT NULL;
-- A scheduled message's text goes with the message it became (or with its cancellation).
ALTER TABLE scheduled_messages ALTER COLUMN body DROP NOT NULL;

-- History visibility: `shared` (members see everything) or `joined` (members see from their
-- own join on). Conversations created before this migration keep what they had: shared.
ALTER TABLE conversations ADD COLUMN history_visibility text NOT NULL DEFAULT 'shared'
    CHECK (history_visibility IN ('shared', 'joined'));
-- The seq of the participant's latest join (0 for those who created the conversation).
ALTER TABLE participants ADD COLUMN joined_seq bigint NOT NULL DEFAULT 0;

-- The first seq `viewer` may read in `conv` (NULL: not an active participant).
CREATE FUNCTION history_floor(conv uuid, viewer text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN c.history_visibility = 'shared' THEN 0 ELSE p.joined_seq END
    FROM conversations c JOIN participants p ON p.conversation_id = c.id
    WHERE c.id = conv AND p.user_id = viewer AND p.left_at IS NULL
$$;

-- A JSON object with every content field (text, attachments, poll, secure fields) emptied:
-- what an erased or hidden message leaves in events and command results.
CREATE FUNCTION scrub_content(j jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(j) = 'object' THEN COALESCE((
        SELECT jsonb_object_agg(k, CASE
            WHEN k IN ('message', 'newMessage', 'signature', 'encryptionAlgorithm', 'poll',
                       'question', 'options') THEN 'null'::jsonb
            WHEN k = 'attachments' THEN '[]'::jsonb
            ELSE v END)
        FROM jsonb_each(j) AS x(k, v)), '{}'::jsonb)
    ELSE j END
$$;

-- Event types that carry a message's content.
CREATE FUNCTION event_has_content(kind text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT kind IN ('message', 'messageForwarded', 'messageEdited', 'messageRestored')
$$;

-- An event as every read and replay serves it: the envelope, with the content of a message
-- that is hidden pending review redacted (the row keeps it, so a moderator can restore it).
CREATE FUNCTION event_json(e events) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'eventId', e.id, 'type', e.type, 'conversationID', e.conversation_id, 'seq', e.seq,
        'commandId', e.command_id, 'actor', e.actor_id, 'at', e.at,
        'data', CASE
            WHEN event_has_content(e.type) AND EXISTS (
                SELECT 1 FROM messages m
                WHERE m.id = (e.data->>'messageId')::uuid AND m.hidden_at IS NOT NULL)
            THEN scrub_content(e.data) || '{"hidden": true}'::jsonb
            ELSE e.data END)
$$;
