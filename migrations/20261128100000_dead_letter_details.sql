-- Dead letters operators can act on (issue 14).
--
-- Why a command failed, kept between its deliveries: the worker writes the last error of a
-- command it nak'ed, the dead letter takes it over (and the row goes), and a later commit
-- removes it. Only commands that failed have a row, so this costs nothing on the hot path.
-- `error` is the Display of our own error types (no message bodies: see workers/src/failures.rs).
CREATE TABLE command_failures (
    command_id      uuid PRIMARY KEY,
    error           text NOT NULL,
    -- The delivery that failed last.
    deliveries      bigint NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now()
);

-- When the command first failed (null: no failure was recorded, e.g. the worker stopped or
-- outlived ack_wait on every delivery). `at` stays the time it was dead-lettered.
ALTER TABLE dead_letters ADD COLUMN first_failed_at timestamptz;

-- A replayed dead letter is published again under a new command id (DESIGN.md); the old
-- command stays rejected (`dead_lettered`) and both ids' status reads show the link. One row
-- per old id: a second replay finds it and publishes nothing new.
CREATE TABLE command_replays (
    old_id      uuid PRIMARY KEY,
    new_id      uuid NOT NULL UNIQUE,
    replayed_at timestamptz NOT NULL DEFAULT now()
);
