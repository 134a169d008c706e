-- One row that `/readyz` rewrites while the store's commits fail (a full
-- disk, an I/O error): only a commit tells whether they work again.
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
) STRICT;
