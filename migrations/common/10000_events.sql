-- The events backbone, applied to every service's schema (crates/common/src/db.rs merges
-- this folder into each service's migrations).

-- Events written in the same transaction as the change they describe, published
-- afterwards by the relay (at least once, in order per aggregate).
CREATE TABLE outbox (
    id           UUID PRIMARY KEY,
    seq          BIGINT GENERATED ALWAYS AS IDENTITY,
    topic        TEXT NOT NULL,
    aggregate_id UUID NOT NULL,
    event_type   TEXT NOT NULL,
    envelope     JSONB NOT NULL,
    traceparent  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);

-- What the relay scans: the unpublished rows, oldest first, and per aggregate.
CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_unpublished_aggregate_idx ON outbox (aggregate_id, seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Ids of the events this service has applied, written in the same transaction as the
-- effect, so a redelivered event changes nothing.
CREATE TABLE inbox (
    event_id   UUID PRIMARY KEY,
    topic      TEXT NOT NULL,
    event_type TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
