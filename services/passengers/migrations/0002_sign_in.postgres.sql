-- Sign-in: the password's argon2id hash ('' for none: no sign-in), sessions, failed attempts.
ALTER TABLE passengers ADD COLUMN password_hash TEXT NOT NULL DEFAULT '';
\ir ../../runtime/migrations/sessions.postgres.sql
