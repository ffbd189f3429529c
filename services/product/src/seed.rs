//! Fills the catalogue with generated products for demos and load tests: realistic
//! names, descriptions, prices and stock across categories, inserted in batches.
//!
//! Seeding is a bulk load: it writes no `product.created` events (a hundred thousand of
//! them would only flood the topic) and refreshes the planner's statistics at the end.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rand::seq::IndexedRandom;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

const BATCH: usize = 5_000;

/// Each category with the things sold in it.
const CATALOGUE: &[(&str, &[&str])] = &[
    ("Furniture", &["desk", "chair", "bookshelf", "sofa", "side table", "wardrobe", "bed frame", "stool"]),
    ("Kitchen", &["kettle", "chef's knife", "frying pan", "teapot", "cutting board", "mixing bowl", "coffee grinder"]),
    ("Electronics", &["headphones", "speaker", "keyboard", "monitor", "charger", "webcam", "e-reader", "router"]),
    ("Books", &["novel", "cookbook", "atlas", "field guide", "poetry collection", "biography", "sketchbook"]),
    ("Toys", &["puzzle", "kite", "building set", "plush bear", "board game", "train set", "yo-yo"]),
    ("Garden", &["watering can", "trowel", "planter", "hose", "bird feeder", "pruning shears", "lantern"]),
    ("Sports", &["yoga mat", "tennis racket", "football", "water bottle", "jump rope", "dumbbell", "backpack"]),
    ("Clothing", &["jacket", "scarf", "sweater", "raincoat", "beanie", "t-shirt", "pair of socks"]),
    ("Office", &["notebook", "fountain pen", "desk lamp", "stapler", "planner", "file organizer"]),
    ("Tools", &["hammer", "screwdriver set", "tape measure", "cordless drill", "level", "toolbox"]),
    ("Pets", &["dog bed", "cat tree", "leash", "feeding bowl", "chew toy", "aquarium"]),
    ("Beauty", &["hand cream", "shaving kit", "hair brush", "face serum", "soap bar", "bath salts"]),
];

const ADJECTIVES: &[&str] = &[
    "classic",
    "compact",
    "rustic",
    "modern",
    "vintage",
    "lightweight",
    "sturdy",
    "handmade",
    "minimalist",
    "deluxe",
    "portable",
    "elegant",
    "cozy",
    "rugged",
    "premium",
    "everyday",
    "bright",
    "quiet",
    "foldable",
];
const MATERIALS: &[&str] = &[
    "oak",
    "walnut",
    "bamboo",
    "steel",
    "ceramic",
    "linen",
    "wool",
    "leather",
    "cotton",
    "glass",
    "copper",
    "recycled",
    "cast iron",
    "maple",
    "aluminium",
    "cork",
    "stone",
    "canvas",
];
const COLOURS: &[&str] = &["black", "white", "sage green", "navy", "terracotta", "sand", "charcoal", "mustard", "red"];
const QUALITIES: &[&str] = &[
    "built to last for years",
    "easy to clean",
    "made from responsibly sourced materials",
    "designed in a small workshop",
    "a favourite of our customers",
    "tested for everyday use",
    "finished by hand",
    "backed by a two-year warranty",
    "simple to assemble",
];

/// Inserts `count` products (creating the categories first if missing) and reports
/// progress on stderr when `progress` is set.
pub async fn seed(db: &PgPool, count: usize, progress: bool) -> anyhow::Result<()> {
    let mut categories = Vec::with_capacity(CATALOGUE.len());
    for (name, _) in CATALOGUE {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO catalog.categories (id, name) VALUES ($1, $2)
             ON CONFLICT (coalesce(parent_id, '00000000-0000-0000-0000-000000000000'), lower(name))
             DO UPDATE SET name = EXCLUDED.name
             RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(*name)
        .fetch_one(db)
        .await?;
        categories.push(id);
    }

    let bar = if progress { ProgressBar::new(count as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} seeding [{bar:40}] {pos}/{len} products ({per_sec}, {eta} left)")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let now = chrono::Utc::now();
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let mut rng = rand::rng();
        let mut ids = Vec::with_capacity(n);
        let mut skus = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut descriptions = Vec::with_capacity(n);
        let mut prices = Vec::with_capacity(n);
        let mut stocks = Vec::with_capacity(n);
        let mut category_ids = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        for _ in 0..n {
            let id = Uuid::now_v7();
            let which = rng.random_range(0..CATALOGUE.len());
            let (category, things) = CATALOGUE[which];
            let thing = things.choose(&mut rng).copied().unwrap_or("item");
            let adjective = ADJECTIVES.choose(&mut rng).copied().unwrap_or("fine");
            let material = MATERIALS.choose(&mut rng).copied().unwrap_or("wood");
            let colour = COLOURS.choose(&mut rng).copied().unwrap_or("black");
            let quality = QUALITIES.choose(&mut rng).copied().unwrap_or("well made");
            ids.push(id);
            skus.push(format!("SEED-{}", id.simple()));
            names.push(capitalise(&format!("{adjective} {material} {thing}")));
            let article = if adjective.starts_with(['a', 'e', 'i', 'o', 'u']) { "An" } else { "A" };
            descriptions.push(format!(
                "{article} {adjective} {thing} in {colour} {material}, {quality}. Part of our {} range.",
                category.to_lowercase()
            ));
            prices.push(Decimal::new(rng.random_range(199..=99_999), 2));
            stocks.push(if rng.random_bool(0.1) { 0 } else { rng.random_range(1..=500) });
            category_ids.push(categories[which]);
            created.push(now - chrono::Duration::seconds(rng.random_range(0..365 * 24 * 3600)));
        }
        sqlx::query(
            "INSERT INTO catalog.products (id, sku, name, description, price, stock, category_id, created_at, updated_at)
             SELECT id, sku, name, description, price, stock, category_id, created_at, created_at
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::int[], $7::uuid[],
                         $8::timestamptz[]) AS t(id, sku, name, description, price, stock, category_id, created_at)",
        )
        .bind(&ids)
        .bind(&skus)
        .bind(&names)
        .bind(&descriptions)
        .bind(&prices)
        .bind(&stocks)
        .bind(&category_ids)
        .bind(&created)
        .execute(db)
        .await?;
        done += n;
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    sqlx::query("ANALYZE catalog.products").execute(db).await?;
    Ok(())
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
