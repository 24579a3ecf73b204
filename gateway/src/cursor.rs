//! Pagination cursors. A cursor pins the etcd revision of the first page, so every page reads
//! the same snapshot: following `next_cursor` yields every entry exactly once even while new
//! data arrives. It also holds the position of the last entry returned, `(key time_id, host)`,
//! which is the merge order of a GPU index across hosts.

use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Revision the listing reads at.
    pub r: i64,
    /// Key suffix (`{timestamp}_{id}`) of the last entry returned.
    pub s: String,
    /// Hostname of the last entry returned.
    pub h: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(s: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "cursor is not valid base64url".to_string())?;
        let c: Cursor =
            serde_json::from_slice(&bytes).map_err(|_| "cursor is malformed".to_string())?;
        if c.r < 0 || c.s.is_empty() {
            return Err("cursor is malformed".into());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let c = Cursor {
            r: 42,
            s: "2025-07-18T20:42:34.000000000Z_01J".into(),
            h: "h1".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("!!!").is_err());
        assert!(Cursor::decode("e30").is_err()); // "{}"
    }
}
