-- A version per document, raised by every write: a unit reads a document without locking it
-- and, when it commits, locks the documents it read or writes in one sorted pass and checks
-- that none changed since it read them (see unit_of_work/documents.rs).
ALTER TABLE __SCHEMA__.documents ADD COLUMN version bigint NOT NULL DEFAULT 0;
