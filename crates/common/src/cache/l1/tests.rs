use super::*;
use axum::body::Bytes;

use crate::cache::{Cached, etag_of};

fn cached(json: &'static str) -> Arc<Cached> {
    Arc::new(Cached::new(Bytes::from_static(json.as_bytes())))
}

#[test]
fn a_fill_after_an_invalidation_of_its_key_is_not_kept() {
    let l1 = L1::new(1 << 20, None);
    let ticket = l1.ticket("k");
    l1.invalidate("k");
    l1.fill("k", cached("1"), ticket);
    assert!(l1.get::<Cached>("k").is_none(), "read before the write, filled after its invalidation");
    let ticket = l1.ticket("k");
    l1.fill("k", cached("2"), ticket);
    assert_eq!(l1.get::<Cached>("k").unwrap().json.as_ref(), b"2");
}

#[test]
fn with_redis_entries_serve_only_while_a_heartbeat_confirmed_the_channel_lately() {
    let l1 = L1::new(1 << 20, Some(Duration::from_millis(100)));
    let ticket = l1.ticket("k");
    l1.fill("k", cached("1"), ticket);
    assert!(l1.get::<Cached>("k").is_none(), "no heartbeat back yet: nothing is kept");
    l1.confirm(Instant::now());
    let ticket = l1.ticket("k");
    l1.fill("k", cached("1"), ticket);
    assert!(l1.get::<Cached>("k").is_some());
    std::thread::sleep(Duration::from_millis(130));
    assert!(l1.get::<Cached>("k").is_none(), "the last heartbeat is older than the bound");
    l1.confirm(Instant::now());
    assert!(l1.get::<Cached>("k").is_some(), "confirmed again: the entry was never stale");
    let before = l1.ticket("other");
    l1.flush();
    assert!(l1.get::<Cached>("k").is_none(), "a flush empties the level and stops it");
    l1.confirm(Instant::now());
    assert!(l1.get::<Cached>("k").is_none());
    l1.fill("other", cached("2"), before);
    assert!(l1.get::<Cached>("other").is_none(), "a ticket from before a flush is void");
}

#[test]
fn only_this_replicas_heartbeats_confirm_and_only_the_one_sent() {
    let l1 = L1::new(1 << 20, Some(Duration::from_secs(5)));
    let early = Instant::now();
    let mut sent = std::collections::VecDeque::from([(1, early), (2, Instant::now())]);
    confirm(&l1, "me", "someone-else:2", &mut sent);
    assert!(!l1.is_live());
    confirm(&l1, "me", "me:2", &mut sent);
    assert!(l1.is_live());
    assert!(sent.is_empty(), "older heartbeats that never came back are dropped");
}

#[test]
fn messages_invalidate_keys_and_families() {
    let l1 = L1::new(1 << 20, None);
    let ticket = l1.ticket("k");
    l1.fill("k", cached("1"), ticket);
    assert_eq!(l1.family("pages"), 0);
    apply(&l1, "k");
    apply(&l1, &family_message("pages"));
    assert!(l1.get::<Cached>("k").is_none());
    assert_eq!(l1.family("pages"), 1);
}

#[test]
fn the_level_holds_at_most_its_bytes_counting_each_entrys_overhead() {
    let l1 = L1::new(100 * 1024, None);
    let body: &'static str = Box::leak("x".repeat(400).into_boxed_str());
    for i in 0..1000 {
        let key = format!("product:{i:036}");
        l1.fill(&key, cached(body), l1.ticket(&key));
    }
    let per_entry = (400 + ENTRY_OVERHEAD) as u64;
    assert!(l1.entries.weight() <= 100 * 1024, "weight {} over the bound", l1.entries.weight());
    let held = l1.entries.len() as u64;
    assert!(held <= 100 * 1024 / per_entry, "{held} entries of {per_entry} bytes in 100 KiB");
    assert!(held >= 100 * 1024 / per_entry / 2, "only {held} entries kept");
}

#[test]
fn an_entry_is_served_no_longer_than_the_levels_time_to_live() {
    let l1 = L1::new(1 << 20, None);
    l1.fill("k", cached("1"), l1.ticket("k"));
    assert!(l1.get::<Cached>("k").is_some());
    let key = l1.key("k");
    let mut slot = l1.entries.get(&key).unwrap();
    slot.until = l1.serving_now().unwrap();
    l1.entries.insert(key, slot);
    assert!(l1.get::<Cached>("k").is_none(), "an entry past its time is not served");
}

#[test]
fn tags_depend_on_every_byte_and_on_the_parts() {
    assert_eq!(etag_of(&[b"ab"]), etag_of(&[b"ab"]));
    assert_ne!(etag_of(&[b"ab"]), etag_of(&[b"ac"]));
    assert_ne!(etag_of(&[b"a", b"b"]), etag_of(&[b"ab"]));
    assert!(etag_of(&[b"x"]).to_str().unwrap().starts_with("W/\""));
}
