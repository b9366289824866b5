-- Sign-in: an email (optional, unique when given) and the password's argon2id hash ('' for none).
-- The index is named <table>_<column>_key, so a violation names its column.
ALTER TABLE drivers ADD COLUMN email TEXT NOT NULL DEFAULT '';
ALTER TABLE drivers ADD COLUMN password_hash TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX drivers_email_key ON drivers (email COLLATE nocase) WHERE email <> '';
\ir ../../runtime/migrations/sessions.postgres.sql
