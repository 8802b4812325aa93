-- Aborts the statement that calls it, with `reason` and SQLSTATE AL000. A set-based write
-- calls it when what it read from its snapshot no longer holds once it has its locks, so it
-- commits nothing and the worker tries again (workers/src/send_batch.rs).
CREATE FUNCTION allo_abort(reason text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'AL000', MESSAGE = reason;
END
$$;
