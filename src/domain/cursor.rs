//! Where a job stands: the position a checkpoint keeps, in each API's order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::{Arc, Mutex};

/// How far an export has got. Everything before the position has been handed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Cursor {
    /// Every event with `timestamp < timestamp` is done.
    Before { timestamp: DateTime<Utc> },
    /// Query API, as older versions read it (in time order): every event up to and including
    /// `(timestamp, uuid)` in that order is done. Read, and written only where a run resumed
    /// from it has not yet moved on.
    After {
        timestamp: DateTime<Utc>,
        uuid: String,
    },
    /// Query API, in storage order: every event before `from` is done, and of the events of
    /// `from`'s UTC day from `from` on, those whose sort key `(event, cityHash64(distinct_id),
    /// cityHash64(uuid))` comes before this one, and with `through` this one too.
    Key {
        from: DateTime<Utc>,
        event: String,
        distinct_hash: u64,
        uuid_hash: u64,
        through: bool,
        /// An older checkpoint's place among the events at one microsecond of this day.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tie: Option<Tie>,
    },
    /// Events API (which orders by timestamp only): every event before `timestamp`, and those
    /// at `timestamp` with these uuids, are done.
    Seen {
        timestamp: DateTime<Utc>,
        uuids: TieSet,
    },
    /// Query API, inside a page not yet wholly checked: everything before `page` is done, and
    /// so are the first `rows` rows PostHog answered after it, whose sort keys chain to
    /// `digest`. A resumed run asks for that page again and skips its first `rows` rows only
    /// if they chain to the same digest; otherwise it hands the page on whole. (The position
    /// of a row itself is trusted only once its page has passed every check: a reordered
    /// page's first row can pass on its own and still lie past rows the server left out.)
    Within {
        page: Box<Cursor>,
        rows: u64,
        digest: u64,
        /// The last of those rows' timestamp: how far the run got, for progress and messages.
        timestamp: DateTime<Utc>,
    },
}

impl Cursor {
    pub(crate) fn timestamp(&self) -> DateTime<Utc> {
        match self {
            Cursor::Before { timestamp }
            | Cursor::After { timestamp, .. }
            | Cursor::Seen { timestamp, .. }
            | Cursor::Within { timestamp, .. } => *timestamp,
            Cursor::Key { from, .. } => *from,
        }
    }

    /// The same position read from a checkpoint of format version `version`. Version 1 kept
    /// the Query API's place inside a page by the (timestamp, uuid) order it read in, which
    /// storage order cannot check: such a position goes back to the page's start, so the
    /// events handed on from that page arrive again (at most a page), and none is skipped.
    pub(crate) fn upgrade(self, version: u32, warn: impl FnOnce(&str)) -> Cursor {
        match self {
            Cursor::Within { page, rows, .. } if version < 2 => {
                warn(&format!(
                    "this checkpoint was written by an older posthog-patterns inside a page; resuming from the page's start, so the {rows} events already handed on from it arrive again"
                ));
                *page
            }
            other => other,
        }
    }
}

/// The uuids delivered so far at one timestamp. Cheap to clone for every record: records share
/// one growing list and each remembers how much of it was delivered with it.
#[derive(Clone, Default)]
pub(crate) struct TieSet {
    list: Arc<Mutex<Vec<String>>>,
    len: usize,
}

impl TieSet {
    /// Adds a uuid; the returned set ends with it.
    pub(crate) fn push(&mut self, uuid: String) -> TieSet {
        let mut list = self.list.lock().unwrap();
        list.truncate(self.len);
        list.push(uuid);
        self.len = list.len();
        self.clone()
    }

    pub(crate) fn uuids(&self) -> Vec<String> {
        self.list.lock().unwrap()[..self.len].to_vec()
    }
}

impl From<Vec<String>> for TieSet {
    fn from(v: Vec<String>) -> Self {
        TieSet {
            len: v.len(),
            list: Arc::new(Mutex::new(v)),
        }
    }
}

impl PartialEq for TieSet {
    fn eq(&self, other: &Self) -> bool {
        self.uuids() == other.uuids()
    }
}

impl Eq for TieSet {}

impl std::fmt::Debug for TieSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.uuids()).finish()
    }
}

impl Serialize for TieSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.uuids().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TieSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(d).map(TieSet::from)
    }
}

/// A checkpoint of an older version stopped at `(timestamp, uuid)` in time order: of the
/// events at exactly `timestamp`, those up to `uuid` (in ClickHouse's uuid order) are done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tie {
    pub(crate) timestamp: DateTime<Utc>,
    pub(crate) uuid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tie_set_remembers_its_own_prefix_and_round_trips() {
        let mut tie = TieSet::default();
        let a = tie.push("a".into());
        let b = tie.push("b".into());
        assert_eq!(a.uuids(), ["a"]);
        assert_eq!(b.uuids(), ["a", "b"]);
        let cursor = Cursor::Seen {
            timestamp: "2024-01-01T00:00:00Z".parse().unwrap(),
            uuids: b,
        };
        let text = serde_json::to_string(&cursor).unwrap();
        assert!(
            text.contains(r#""kind":"seen""#) && text.contains(r#""uuids":["a","b"]"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Cursor>(&text).unwrap(), cursor);
    }
}
