-- Sign-in: an email (optional, unique when given) and the password's argon2id hash ('' for none).
ALTER TABLE drivers ADD COLUMN email TEXT NOT NULL DEFAULT '';
ALTER TABLE drivers ADD COLUMN password_hash TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX drivers_by_email ON drivers (email COLLATE NOCASE) WHERE email != '';
\ir ../../runtime/migrations/sessions.sql
