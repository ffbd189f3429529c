use super::*;

#[test]
fn jitter_stays_within_ten_percent() {
    for _ in 0..1000 {
        let ttl = jittered(Duration::from_secs(300));
        assert!(ttl >= Duration::from_secs(270) && ttl <= Duration::from_secs(330), "{ttl:?}");
    }
    assert_eq!(jittered(Duration::from_millis(5)), Duration::from_millis(5));
}

#[tokio::test]
async fn local_cache_round_trips_and_fill_never_overwrites() {
    let cache = Cache::local("t");
    assert_eq!(cache.get::<String>("k").await, None);
    cache.put("k", &"fresh", Duration::from_secs(60)).await;
    cache.fill("k", &"stale", Duration::from_secs(60)).await;
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("fresh"));
    cache.put_required("revoked", Duration::from_secs(60)).await.unwrap();
    assert!(cache.exists("revoked").await);
}

#[tokio::test]
async fn concurrent_misses_run_one_loader() {
    let cache = Cache::local("t");
    let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ttl: fn(&u32) -> Duration = |_| Duration::from_secs(60);
    let results = futures::future::join_all((0..20).map(|_| {
        let loads = loads.clone();
        cache.load("k", ttl, move || async move {
            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(7u32)
        })
    }))
    .await;
    assert!(results.iter().all(|r| *r.as_ref().unwrap() == 7));
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(cache.get::<u32>("k").await, Some(7));
}

#[tokio::test]
async fn versioned_writes_never_go_back_in_time() {
    let cache = Cache::local("t");
    cache.fill("k", &"read before the writes", Duration::from_secs(60)).await;
    cache.put_versioned("k", 20, &"second write", Duration::from_secs(60)).await;
    cache.put_versioned("k", 10, &"first write, arriving late", Duration::from_secs(60)).await;
    cache.fill("k", &"another stale read", Duration::from_secs(60)).await;
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("second write"));
    assert_eq!(unversioned(b"12:{}"), (12, &b"{}"[..]));
    assert_eq!(unversioned(b"{\"a\":1}"), (0, &b"{\"a\":1}"[..]));
}

#[tokio::test]
async fn an_entry_counts_only_in_the_generation_it_was_loaded_in() {
    let cache = Cache::local("t");
    let ttl: fn(&u32) -> Duration = |_| Duration::from_secs(60);
    let load = |value: u32| move || async move { Ok(value) };
    assert_eq!(&cache.load_json_in_generation("page", "gen", ttl, load(1)).await.unwrap()[..], b"1");
    assert_eq!(&cache.load_json_in_generation("page", "gen", ttl, load(2)).await.unwrap()[..], b"1", "cached");
    assert!(cache.bump("gen").await);
    assert_eq!(&cache.load_json_in_generation("page", "gen", ttl, load(3)).await.unwrap()[..], b"3", "reloaded");
    assert_eq!(&cache.load_json_in_generation("page", "gen", ttl, load(4)).await.unwrap()[..], b"3");
}

#[tokio::test]
async fn counters_start_at_zero_and_bump() {
    let cache = Cache::local("t");
    assert_eq!(cache.counter("v").await, Some(0));
    assert!(cache.bump("v").await);
    assert_eq!(cache.counter("v").await, Some(1));
}
