//! The first level used directly, for what callers keep themselves (a listing page as its
//! products' ids), and invalidation of both levels after a write.

use super::*;

impl Cache {
    /// The first level's entry of any type (a page's ids, say), when it may serve.
    pub fn l1_get<V: std::any::Any + Send + Sync>(&self, key: &str) -> Option<Arc<V>> {
        self.l1.as_ref()?.get(key)
    }

    /// Taken before reading what [`Cache::l1_fill`] will keep.
    pub fn l1_ticket(&self, key: &str) -> Option<Ticket> {
        self.l1.as_ref().map(|l1| l1.ticket(key))
    }

    /// Keeps `value` under `key`, counted as its [`Footprint`], unless `ticket` was voided.
    pub fn l1_fill<V: Footprint>(&self, key: &str, value: Arc<V>, ticket: Option<Ticket>) {
        if let (Some(l1), Some(ticket)) = (&self.l1, ticket) {
            l1.fill(key, value, ticket);
        }
    }

    /// Tickets for many keys at once, taken before reading what depends on them all (a
    /// page made of products); `None` without a first level.
    pub fn l1_tickets(&self, keys: &[String]) -> Option<Vec<Ticket>> {
        self.l1.as_ref().map(|l1| keys.iter().map(|key| l1.ticket(key)).collect())
    }

    /// Whether nothing invalidated since `tickets` were taken, and the first level serves:
    /// what was made from those keys then may be served now. Counted as one lookup.
    pub fn l1_tickets_hold(&self, tickets: &[Ticket]) -> bool {
        let Some(l1) = &self.l1 else { return false };
        let holds = l1.tickets_hold(tickets);
        l1.count(u64::from(holds), u64::from(!holds), 0);
        holds
    }

    /// The generation of a family of first-level keys, to put in each of its keys.
    pub fn l1_family(&self, family: &str) -> u64 {
        self.l1.as_ref().map_or(0, |l1| l1.family(family))
    }

    /// After a write has changed what is below (and committed): forgets `keys` and every
    /// key of `families` in this process's first level before the write answers, and
    /// tells every other replica's through Redis.
    pub async fn invalidate(&self, keys: &[String], families: &[&str]) {
        if let Some(l1) = &self.l1 {
            for key in keys {
                l1.invalidate(key);
            }
            for family in families {
                l1.invalidate_family(family);
            }
        }
        let (Some(channel), Backend::Redis(conn)) = (&self.invalidations, &self.backend) else { return };
        let lines: Vec<String> = keys.iter().cloned().chain(families.iter().map(|f| l1::family_message(f))).collect();
        if lines.is_empty() {
            return;
        }
        let mut conn = conn.clone();
        let publish = redis::cmd("PUBLISH").arg(channel.as_ref()).arg(lines.join("\n")).to_owned();
        self.redis_call("publish", publish.query_async::<i64>(&mut conn)).await;
    }

    /// Forgets loads in flight for `key`, so a request after a write never joins a load
    /// that started before it.
    pub fn forget_flight(&self, key: &str) {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}
