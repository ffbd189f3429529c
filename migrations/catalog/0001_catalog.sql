-- The catalogue of the product service (schema `catalog`): categories, products, and the
-- stock reserved for orders.

CREATE TABLE categories (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    parent_id  UUID REFERENCES categories (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Sibling categories have different names (whatever their case): 409 conflict.
CREATE UNIQUE INDEX categories_name_key
    ON categories (coalesce(parent_id, '00000000-0000-0000-0000-000000000000'), lower(name));

CREATE TABLE products (
    id          UUID PRIMARY KEY,
    sku         TEXT NOT NULL CHECK (char_length(sku) BETWEEN 1 AND 64),
    name        TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description TEXT NOT NULL DEFAULT '',
    price       NUMERIC(12, 2) NOT NULL CHECK (price > 0),
    currency    TEXT NOT NULL DEFAULT 'USD' CHECK (currency = 'USD'),
    -- What can still be ordered: reserved units are already taken off. The check is the
    -- last line against overselling; every decrement also guards on it.
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    category_id UUID NOT NULL REFERENCES categories (id),
    -- Full-text search: the name weighs more than the description.
    search      TSVECTOR GENERATED ALWAYS AS (
                    setweight(to_tsvector('english', name), 'A') ||
                    setweight(to_tsvector('english', description), 'B')) STORED,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);

-- A SKU names one live product; a deleted product frees its SKU.
CREATE UNIQUE INDEX products_sku_key ON products (sku) WHERE deleted_at IS NULL;

-- One index per way of listing live products; keyset pagination walks them in order.
CREATE INDEX products_search_idx ON products USING GIN (search) WHERE deleted_at IS NULL;
CREATE INDEX products_newest_idx ON products (created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX products_price_idx ON products (price, id) WHERE deleted_at IS NULL;
CREATE INDEX products_category_newest_idx ON products (category_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX products_category_price_idx ON products (category_id, price, id) WHERE deleted_at IS NULL;
CREATE INDEX products_in_stock_newest_idx ON products (created_at DESC, id DESC) WHERE deleted_at IS NULL AND stock > 0;
CREATE INDEX products_in_stock_price_idx ON products (price, id) WHERE deleted_at IS NULL AND stock > 0;

-- Stock held for an order, all items or none, keyed by the order id so that a retried
-- reservation finds the first one. `reserved` until the order is paid (`committed`) or
-- cancelled or expired (`released`, units back in stock).
CREATE TABLE reservations (
    order_id   UUID PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('reserved', 'committed', 'released')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE reservation_items (
    order_id   UUID NOT NULL REFERENCES reservations (order_id),
    product_id UUID NOT NULL REFERENCES products (id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    unit_price NUMERIC(12, 2) NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
