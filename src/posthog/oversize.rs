//! A row too large to hold (over `rows::MAX_VALUE_BYTES`), followed byte by byte as it
//! arrives: only its small elements (uuid, timestamp, event name, distinct_id, hashes: what
//! checks it and names it) are kept, so that it can be set aside by name without memory
//! growing with it.

/// A row's elements up to this size are kept when the row is too large to hold (its uuid,
/// timestamp, event name, distinct_id and hashes: what checks it and names it).
const KEPT_ELEMENT_BYTES: usize = 64 * 1024;

/// What is kept of such a row, at most (a row of many small elements is no event).
const KEPT_ROW_BYTES: usize = 1024 * 1024;

/// A row too large to hold, followed byte by byte as it arrives: where its strings and
/// nesting are, and what of it is kept.
pub(super) struct Oversize {
    pub(super) bytes: u64,
    /// Nesting, the row's own `[` included.
    pub(super) depth: u32,
    pub(super) in_string: bool,
    pub(super) escaped: bool,
    /// The row as it is kept: `[`, then its elements so far (large ones as `null`).
    pub(super) kept: Vec<u8>,
    /// The element being read, unless it grew too large to keep.
    pub(super) element: Option<Vec<u8>>,
    /// What makes it no row of events, if anything.
    pub(super) broken: Option<&'static str>,
}

impl Oversize {
    pub(super) fn new() -> Self {
        Oversize {
            bytes: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            kept: Vec::new(),
            element: Some(Vec::new()),
            broken: None,
        }
    }

    /// Follows `bytes`; how many of them belong to the row, once it has ended.
    pub(super) fn follow(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string {
                // To the next quote or backslash at once: strings are what is large.
                let run = bytes[i..]
                    .iter()
                    .position(|b| self.escaped || *b == b'"' || *b == b'\\')
                    .unwrap_or(bytes.len() - i);
                self.keep(&bytes[i..i + run]);
                i += run;
                let Some(&b) = bytes.get(i) else { break };
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                }
                self.keep(&[b]);
                i += 1;
                continue;
            }
            let b = bytes[i];
            i += 1;
            match b {
                _ if b.is_ascii_whitespace() && self.depth <= 1 => {}
                b'[' if self.depth == 0 => {
                    self.depth = 1;
                    self.kept.push(b'[');
                }
                _ if self.depth == 0 => {
                    self.broken = Some("a row that is not an array");
                    return None;
                }
                b'"' => {
                    self.in_string = true;
                    self.keep(&[b]);
                }
                b'[' | b'{' => {
                    self.depth += 1;
                    self.keep(&[b]);
                }
                b']' | b'}' if self.depth == 1 => {
                    self.end_element();
                    self.kept.push(b']');
                    self.bytes += i as u64;
                    return Some(i);
                }
                b']' | b'}' => {
                    self.depth = self.depth.saturating_sub(1);
                    self.keep(&[b]);
                }
                b',' if self.depth == 1 => {
                    self.end_element();
                    self.kept.push(b',');
                    if self.kept.len() > KEPT_ROW_BYTES {
                        self.broken = Some("a row of more small elements than a row of events has");
                        return None;
                    }
                }
                _ => self.keep(&[b]),
            }
        }
        self.bytes += bytes.len() as u64;
        None
    }

    fn keep(&mut self, bytes: &[u8]) {
        if let Some(element) = &mut self.element {
            if element.len() + bytes.len() > KEPT_ELEMENT_BYTES {
                self.element = None;
            } else {
                element.extend_from_slice(bytes);
            }
        }
    }

    fn end_element(&mut self) {
        match self.element.replace(Vec::new()) {
            Some(element) => self.kept.extend_from_slice(&element),
            None => self.kept.extend_from_slice(b"null"),
        }
    }
}
