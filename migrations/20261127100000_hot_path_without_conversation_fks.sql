-- The write path's inserts into messages and events no longer pay a foreign-key trigger per
-- row (issue 9: the two triggers took about an eighth of the send batch statement's execution
-- time). What the keys guarded still holds by construction: every writer of these tables first
-- reserves the row's seq with `UPDATE conversations ... WHERE id = $conversation` (or locks the
-- conversation FOR UPDATE), so the conversation exists and stays locked until the row commits,
-- and no code path deletes conversations. participants, polls, reactions and reports keep
-- their keys (they are not on the hot path).
ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_conversation_id_fkey;
