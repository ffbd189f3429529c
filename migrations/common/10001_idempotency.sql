-- Idempotency-Key records (API.md, "Conventions"), in every schema whose service has
-- idempotent endpoints. A record is written in the same transaction as the effect it
-- replays, so a key never points at an effect that did not happen.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  BYTEA NOT NULL,
    status       SMALLINT NOT NULL,
    body         BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
