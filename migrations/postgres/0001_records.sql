-- acmeproxy's PostgreSQL store, version 1: every table of the Store seam in
-- one table. `key` is the key's UTF-8 bytes: bytea compares byte by byte,
-- which is the order the memory and sled stores scan in (whatever the
-- database's locale), and it holds any key, NUL included (text cannot).
CREATE TABLE records (
    tbl   text NOT NULL,
    key   bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);
