-- The spine: conversations, participants, messages, command outcomes and the event log.

CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('direct', 'group', 'channel')),
    topic       text,
    owner_id    text NOT NULL,
    -- Both participants of a direct conversation, sorted: at most one direct per pair.
    direct_key  text UNIQUE,
    -- The last seq handed out; bumped (row-locked) in the transaction that adds an event.
    last_seq    bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL
);

CREATE TABLE participants (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         text NOT NULL,
    role            text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at       timestamptz NOT NULL,
    -- Set when a member leaves or is removed; the row stays so a group can refuse a rejoin.
    left_at         timestamptz,
    -- The seq of the last message the user read; unread counts derive from it.
    last_read_seq   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX participants_by_user ON participants (user_id) WHERE left_at IS NULL;

CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- The seq of the event that created the message.
    seq             bigint NOT NULL,
    author_id       text NOT NULL,
    kind            text NOT NULL DEFAULT 'text',
    body            text,
    created_at      timestamptz NOT NULL,
    command_id      uuid NOT NULL,
    UNIQUE (conversation_id, seq)
);

-- One row per applied command: the key that makes redelivery harmless, and the status
-- clients read back. A command still in the stream has no row ("accepted").
CREATE TABLE commands (
    id            uuid PRIMARY KEY,
    actor_id      text NOT NULL,
    operation     text NOT NULL,
    status        text NOT NULL CHECK (status IN ('committed', 'rejected')),
    error_code    text,
    error_message text,
    result        jsonb,
    accepted_at   timestamptz NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'rejected') = (error_code IS NOT NULL))
);
CREATE INDEX commands_by_actor ON commands (actor_id, processed_at);

-- The event log: the record of every committed change, per conversation, gap-free by seq.
CREATE TABLE events (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    type            text NOT NULL,
    command_id      uuid,
    actor_id        text NOT NULL,
    at              timestamptz NOT NULL,
    data            jsonb NOT NULL,
    -- Null until the event is on the event stream; the outbox relay publishes what is left.
    published_at    timestamptz,
    committed_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, seq)
);
CREATE INDEX events_unpublished ON events (committed_at) WHERE published_at IS NULL;

-- Commands that failed on every delivery, kept with their last error for an operator.
CREATE TABLE dead_letters (
    command_id   uuid PRIMARY KEY,
    subject      text NOT NULL,
    payload      bytea NOT NULL,
    deliveries   bigint NOT NULL,
    error        text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
