-- acmeproxy's PostgreSQL store, version 2: a batch of the Store seam in one
-- round trip. acmeproxy_commit locks the rows of every key in (tbl, key)
-- order, checks each op's precondition in batch order, and writes, all in
-- the calling statement's transaction. It returns 0 when the batch is
-- written, or the 1-based index of the first op whose precondition failed
-- (nothing written). The keys of one call are distinct.
--
-- kinds: 0 none (Expect::Any), 1 absent, 2 present, 3 holds `expected`.
-- vals: the value to write, NULL to delete.
-- A key that had to be absent is written with a plain INSERT, so that a
-- batch inserting it meanwhile makes this one fail with a unique violation
-- (the caller runs it again, when the row exists to be locked and checked).
CREATE FUNCTION acmeproxy_commit(
    tbls text[], keys bytea[], vals bytea[], kinds smallint[], expected bytea[]
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(tbls, 1), 0);
    i integer;
    cur bytea;
    existed boolean[] := '{}';
BEGIN
    PERFORM 1 FROM records r
     WHERE (r.tbl, r.key) IN (SELECT * FROM unnest(tbls, keys))
     ORDER BY r.tbl, r.key
       FOR UPDATE;
    FOR i IN 1 .. n LOOP
        SELECT r.value INTO cur FROM records r WHERE r.tbl = tbls[i] AND r.key = keys[i];
        existed[i] := FOUND;
        IF (kinds[i] = 1 AND FOUND)
           OR (kinds[i] = 2 AND NOT FOUND)
           OR (kinds[i] = 3 AND (NOT FOUND OR cur IS DISTINCT FROM expected[i])) THEN
            RETURN i;
        END IF;
    END LOOP;
    -- The writes in (tbl, key) order, as every writer locks.
    FOR i IN SELECT s.i FROM unnest(tbls, keys) WITH ORDINALITY AS s(t, k, i) ORDER BY s.t, s.k LOOP
        IF vals[i] IS NULL THEN
            -- A key that was not there when the batch locked its rows stays
            -- away: deleting one a racing batch inserted since would undo a
            -- write that came after ours.
            IF existed[i] THEN
                DELETE FROM records WHERE tbl = tbls[i] AND key = keys[i];
            END IF;
        ELSIF existed[i] THEN
            UPDATE records SET value = vals[i] WHERE tbl = tbls[i] AND key = keys[i];
        ELSIF kinds[i] = 1 THEN
            INSERT INTO records (tbl, key, value) VALUES (tbls[i], keys[i], vals[i]);
        ELSE
            INSERT INTO records (tbl, key, value) VALUES (tbls[i], keys[i], vals[i])
                ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value;
        END IF;
    END LOOP;
    RETURN 0;
END
$$;
