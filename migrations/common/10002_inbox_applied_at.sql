-- What the hourly inbox prune (common::events::prune_inbox) looks rows up by: the oldest
-- applied first, a batch at a time, without reading the whole table.
CREATE INDEX inbox_applied_at_idx ON inbox (applied_at);
