-- Failed sign-ins per email and client address: one address no longer locks an email out.
\ir ../../runtime/migrations/sign_in_by_client.postgres.sql
