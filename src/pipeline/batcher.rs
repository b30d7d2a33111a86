//! Cuts the stream of serialized events into webhook batches by count and by body size.
//! A batch is a JSON array; an event larger than the byte limit travels alone.

/// One batch: the events (each a JSON object's text) and the position after the last one.
#[derive(Debug)]
pub(crate) struct Batch<P> {
    pub(crate) events: Vec<String>,
    pub(crate) end: P,
}

/// The size of `[a,b,c]` for events of these lengths.
pub(crate) fn body_len<S: AsRef<str>>(events: &[S]) -> usize {
    2 + events.iter().map(|e| e.as_ref().len()).sum::<usize>() + events.len().saturating_sub(1)
}

/// The request body for a batch: a JSON array of the events, as they are.
pub(crate) fn body<S: AsRef<str>>(events: &[S]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body_len(events));
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.as_ref().as_bytes());
    }
    out.push(b']');
    out
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
}

pub(crate) struct Batcher<P> {
    limits: Limits,
    events: Vec<String>,
    bytes: usize,
    end: Option<P>,
}

impl<P> Batcher<P> {
    pub(crate) fn new(limits: Limits) -> Self {
        Batcher {
            limits,
            events: Vec::new(),
            bytes: 2,
            end: None,
        }
    }

    /// Adds an event; returns the batch it closed, if adding it would overflow the current one.
    pub(crate) fn push(&mut self, json: String, pos: P) -> Option<Batch<P>> {
        let closed = if !self.events.is_empty()
            && (self.events.len() >= self.limits.max_events
                || self.bytes + 1 + json.len() > self.limits.max_bytes)
        {
            self.flush()
        } else {
            None
        };
        self.bytes += json.len() + usize::from(!self.events.is_empty());
        self.events.push(json);
        self.end = Some(pos);
        closed
    }

    /// The open batch, if it has reached the event count (so that it leaves without waiting
    /// for the next event).
    pub(crate) fn take_full(&mut self) -> Option<Batch<P>> {
        if self.events.len() >= self.limits.max_events {
            self.flush()
        } else {
            None
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Moves the end position forward without an event (a window ended with nothing more).
    /// Returns the position back when there is no open batch to carry it.
    pub(crate) fn advance(&mut self, pos: P) -> Option<P> {
        if self.events.is_empty() {
            Some(pos)
        } else {
            self.end = Some(pos);
            None
        }
    }

    pub(crate) fn flush(&mut self) -> Option<Batch<P>> {
        if self.events.is_empty() {
            return None;
        }
        self.bytes = 2;
        Some(Batch {
            events: std::mem::take(&mut self.events),
            end: self.end.take().expect("a non-empty batch has an end"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> String {
        format!("{{\"p\":\"{}\"}}", "x".repeat(n.saturating_sub(8)))
    }

    #[test]
    fn cuts_by_count() {
        let mut b = Batcher::new(Limits {
            max_events: 3,
            max_bytes: 1 << 20,
        });
        let closed: Vec<_> = (0..7).filter_map(|i| b.push(ev(10), i)).collect();
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[0].events.len(), 3);
        assert_eq!(closed[0].end, 2);
        let last = b.flush().unwrap();
        assert_eq!((last.events.len(), last.end), (1, 6));
        assert!(b.flush().is_none());
    }

    #[test]
    fn cuts_by_bytes_and_never_exceeds_the_limit_with_normal_events() {
        let limits = Limits {
            max_events: 1000,
            max_bytes: 100,
        };
        let mut b = Batcher::new(limits);
        let mut batches: Vec<_> = (0..50).filter_map(|i| b.push(ev(20), i)).collect();
        batches.extend(b.flush());
        assert_eq!(batches.iter().map(|x| x.events.len()).sum::<usize>(), 50);
        for batch in &batches {
            assert!(body(&batch.events).len() <= 100);
            assert_eq!(body(&batch.events).len(), body_len(&batch.events));
        }
        assert_eq!(
            batches[0].events.len(),
            4,
            "4*20 + 3 commas + 2 brackets = 85 <= 100 < 106"
        );
    }

    #[test]
    fn an_oversized_event_travels_alone() {
        let mut b = Batcher::new(Limits {
            max_events: 10,
            max_bytes: 100,
        });
        assert!(b.push(ev(20), 0).is_none());
        let first = b.push(ev(500), 1).unwrap();
        assert_eq!(first.events.len(), 1);
        let big = b.push(ev(20), 2).unwrap();
        assert_eq!((big.events.len(), big.end), (1, 1));
    }

    #[test]
    fn body_is_a_json_array() {
        let v: serde_json::Value =
            serde_json::from_slice(&body(&["{\"a\":1}", "{\"b\":2}"])).unwrap();
        assert_eq!(v, serde_json::json!([{"a":1},{"b":2}]));
    }

    #[test]
    fn advance_without_open_batch_returns_the_position() {
        let mut b: Batcher<u32> = Batcher::new(Limits {
            max_events: 2,
            max_bytes: 100,
        });
        assert_eq!(b.advance(5), Some(5));
        b.push(ev(10), 6);
        assert_eq!(b.advance(7), None);
        assert_eq!(b.flush().unwrap().end, 7);
    }
}
