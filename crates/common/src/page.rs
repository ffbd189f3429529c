//! Cursor pagination as the contract has it: `?limit=` (1–100, default 20) and an opaque
//! `?cursor=`, for lists ordered by UUIDv7 id, newest first.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// A page of a list: `{"items": [...], "next_cursor": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The page size when `?limit=` is absent: what a storefront lists.
pub const DEFAULT_LIMIT: i64 = 20;

/// `limit` as the query string carries it: 1–100, [`DEFAULT_LIMIT`] when absent.
pub fn limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request("limit must be a whole number from 1 to 100")),
        },
    }
}

/// Where the next page starts: after this id (UUIDv7 ids order by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdCursor(pub Uuid);

impl IdCursor {
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        Some(Self(Uuid::from_slice(&bytes).ok()?))
    }

    /// The `cursor` parameter, if any; one that does not decode is a `400`.
    pub fn parse(raw: Option<&str>) -> Result<Option<Self>, ApiError> {
        raw.map(|raw| Self::decode(raw).ok_or_else(|| ApiError::bad_request("the cursor is not valid"))).transpose()
    }

    /// The `next_cursor` of a page fetched with one row more than `limit`: trims that row
    /// and points after the last one kept, or `None` on the last page.
    pub fn next<T>(items: &mut Vec<T>, limit: i64, id: impl Fn(&T) -> Uuid) -> Option<String> {
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        if more { items.last().map(|last| Self(id(last)).encode()) } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors() {
        assert_eq!(limit(None).unwrap(), 20);
        assert_eq!(limit(Some("100")).unwrap(), 100);
        for bad in ["0", "101", "x", "-1"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
        let cursor = IdCursor(Uuid::now_v7());
        assert_eq!(IdCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(IdCursor::decode("AAAA"), None);
        assert!(IdCursor::parse(Some("garbage")).is_err());
        let mut items = vec![3, 2, 1];
        let next = IdCursor::next(&mut items, 2, |_| Uuid::nil());
        assert_eq!((items, next), (vec![3, 2], Some(IdCursor(Uuid::nil()).encode())));
        let mut items = vec![1];
        assert_eq!(IdCursor::next(&mut items, 2, |_| Uuid::nil()), None);
    }
}
