-- `seq` is never reused (keyset pages rely on it); times are nanoseconds; emails are unique whatever
-- their case (`nocase` is the runtime's, 0000_runtime.postgres.sql). Unique constraints are named
-- <table>_<column>_key by default, which is how a violation names its column.
CREATE TABLE passengers (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    email        TEXT COLLATE nocase NOT NULL UNIQUE,
    phone        TEXT NOT NULL,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
)
