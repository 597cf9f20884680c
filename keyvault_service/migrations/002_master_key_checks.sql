-- One check value per master key version ever used, so a vault started with a different
-- key under a known version number refuses to start instead of failing every decryption.
CREATE TABLE master_key_checks (
    version      integer     PRIMARY KEY,
    check_value  text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now()
);
