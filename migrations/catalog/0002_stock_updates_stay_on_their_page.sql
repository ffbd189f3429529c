-- Every reservation, release and stock delta rewrites a product's row. Such an update can
-- stay on the row's page without touching any index (a heap-only update) when no indexed
-- column, and no column an index's predicate names, changes, and the page has room; and it
-- need not recompute the search vector, which only its name and description feed. Before
-- this migration a stock change did both: `stock` was in two indexes' predicates and the
-- generated `search` column was computed again on every update, so each rewrote all nine
-- indexes (the full-text one included) and ran the text search parser.

-- The search vector, kept by a trigger that fires only when the name or description is
-- written, instead of a generated column computed again on every update.
ALTER TABLE products ALTER COLUMN search DROP EXPRESSION;
CREATE FUNCTION products_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.search := setweight(to_tsvector('english', NEW.name), 'A')
               || setweight(to_tsvector('english', NEW.description), 'B');
    RETURN NEW;
END $$;
CREATE TRIGGER products_search BEFORE INSERT OR UPDATE OF name, description ON products
    FOR EACH ROW EXECUTE FUNCTION products_search();

-- In-stock listings use the plain indexes and skip what is sold out (a small share of a
-- catalogue), instead of indexes whose predicate every stock change could move a row in
-- or out of.
DROP INDEX products_in_stock_newest_idx;
DROP INDEX products_in_stock_price_idx;

-- Room on each page for the new versions of its rows (new pages; `VACUUM FULL` applies it
-- to the old ones).
ALTER TABLE products SET (fillfactor = 85);
