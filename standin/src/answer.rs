//! Query API answers as bytes: exactly what serde_json writes for PostHog's answer value, but
//! straight from the stored rows, a piece at a time, with the length known first (a 50,000-row
//! page of 2 KB events is 110 MB, too much to build as JSON values first).

use crate::engine::{Cell, Rows, Shown, eval, shown};
use crate::hogql::{Expr, Select};
use crate::storage::{Column, Table};
use chrono::{DateTime, FixedOffset, Utc};

/// Where an answer's bytes go: a buffer, or a count of them.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts bytes instead of keeping them.
struct Count(u64);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
}

/// Writes one answer, `{"columns":..,["hasMore":..,]"is_cached":false,"results":[..],"types":..}`,
/// in pieces of about a chosen size.
pub(crate) struct Answer {
    items: Vec<(Expr, String)>,
    rows: Rows,
    zone: Option<FixedOffset>,
    has_more: Option<bool>,
    /// The next row to write; `None` before the head is written.
    next: Option<usize>,
    done: bool,
    /// `properties` written as the object it holds, not as JSON text in a string.
    pub(crate) properties_as_object: bool,
}

impl Answer {
    /// The answer to `q` with `rows`; times in `zone` (the project's) or UTC; `has_more`
    /// when the query had no LIMIT.
    pub(crate) fn new(
        q: &Select,
        rows: Rows,
        zone: Option<FixedOffset>,
        has_more: Option<bool>,
    ) -> Self {
        Answer {
            items: q.items.iter().map(|i| (i.expr, i.name.clone())).collect(),
            rows,
            zone,
            has_more,
            next: None,
            done: false,
            properties_as_object: false,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds stored events (a page), not counts.
    pub(crate) fn holds_events(&self) -> bool {
        matches!(self.rows, Rows::Stored(_))
    }

    /// The answer's length in bytes (what writing it would give, without writing it).
    pub(crate) fn len(&self, table: &Table) -> u64 {
        let mut count = Count(0);
        self.head(&mut count);
        for i in 0..self.rows.len() {
            self.row(table, i, &mut count);
        }
        self.tail(&mut count);
        count.0
    }

    /// The whole answer.
    pub(crate) fn whole(mut self, table: &Table) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len(table) as usize);
        while let Some(piece) = self.next_piece(table, usize::MAX) {
            out.extend_from_slice(&piece);
        }
        out
    }

    /// The next piece of at least `size` bytes (less at the end); `None` once all is written.
    pub(crate) fn next_piece(&mut self, table: &Table, size: usize) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(size.min(1 << 21));
        let mut i = match self.next {
            Some(i) => i,
            None => {
                self.head(&mut out);
                0
            }
        };
        while i < self.rows.len() && out.len() < size {
            self.row(table, i, &mut out);
            i += 1;
        }
        self.next = Some(i);
        if i == self.rows.len() {
            self.tail(&mut out);
            self.done = true;
        }
        Some(out)
    }

    fn head(&self, out: &mut impl Sink) {
        out.put(b"{\"columns\":[");
        for (i, (_, name)) in self.items.iter().enumerate() {
            if i > 0 {
                out.put(b",");
            }
            write_str(out, name);
        }
        out.put(b"]");
        match self.has_more {
            Some(true) => out.put(b",\"hasMore\":true"),
            Some(false) => out.put(b",\"hasMore\":false"),
            None => {}
        }
        out.put(b",\"is_cached\":false,\"results\":[");
    }

    fn row(&self, table: &Table, i: usize, out: &mut impl Sink) {
        if i > 0 {
            out.put(b",");
        }
        out.put(b"[");
        for (j, (expr, _)) in self.items.iter().enumerate() {
            if j > 0 {
                out.put(b",");
            }
            match &self.rows {
                Rows::Stored(ids) => match shown(*expr, eval(table, *expr, ids[i])) {
                    Shown::Text(json)
                        if self.properties_as_object
                            && *expr == Expr::Column(Column::Properties) =>
                    {
                        out.put(json.as_bytes())
                    }
                    v => write_shown(out, v, self.zone),
                },
                Rows::Counted(rows) => write_shown(out, shown_cell(&rows[i][j]), self.zone),
            }
        }
        out.put(b"]");
    }

    fn tail(&self, out: &mut impl Sink) {
        out.put(b"],\"types\":[");
        for (i, (expr, _)) in self.items.iter().enumerate() {
            if i > 0 {
                out.put(b",");
            }
            write_str(out, expr.type_name());
        }
        out.put(b"]}");
    }
}

fn shown_cell(cell: &Cell) -> Shown<'_> {
    match cell {
        Cell::Int(n) => Shown::Int(*n),
        Cell::UInt(n) => Shown::UInt(*n),
        Cell::Time(t) => Shown::Time(*t),
        Cell::Text(s) => Shown::Text(s),
    }
}

fn write_shown(out: &mut impl Sink, v: Shown<'_>, zone: Option<FixedOffset>) {
    match v {
        Shown::Int(n) => write_int(out, i128::from(n)),
        Shown::UInt(n) => write_int(out, i128::from(n)),
        Shown::Time(t) => {
            let mut text = Vec::with_capacity(34);
            text.push(b'"');
            write_time(
                &mut text,
                DateTime::from_timestamp_micros(t).expect("a stored time"),
                zone,
            );
            text.push(b'"');
            out.put(&text);
        }
        Shown::Text(s) => write_str(out, s),
    }
}

fn write_int(out: &mut impl Sink, n: i128) {
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    out.put(&digits[at..]);
}

/// RFC 3339; `Z` in UTC, the project's offset otherwise; no fraction when it is zero.
pub(crate) fn format_time(t: DateTime<Utc>, tz: Option<FixedOffset>) -> String {
    let mut out = Vec::with_capacity(32);
    write_time(&mut out, t, tz);
    String::from_utf8(out).expect("ASCII")
}

/// [`format_time`] into `out`, digit by digit (chrono's `format` parses its pattern on every
/// call, and a page has 100,000 times).
fn write_time(out: &mut Vec<u8>, t: DateTime<Utc>, tz: Option<FixedOffset>) {
    use chrono::{Datelike, Timelike};
    let offset = tz.map_or(0, |tz| tz.local_minus_utc());
    let local = t.naive_utc() + chrono::Duration::seconds(offset.into());
    push_digits(out, local.year().unsigned_abs(), 4);
    for n in [local.month(), local.day()] {
        out.push(b'-');
        push_digits(out, n, 2);
    }
    out.push(b'T');
    for (i, n) in [local.hour(), local.minute(), local.second()]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push(b':');
        }
        push_digits(out, n, 2);
    }
    let micros = t.timestamp_subsec_micros();
    if micros != 0 {
        out.push(b'.');
        push_digits(out, micros, 6);
    }
    match tz {
        None => out.push(b'Z'),
        Some(_) => {
            out.push(if offset < 0 { b'-' } else { b'+' });
            let minutes = offset.unsigned_abs() / 60;
            push_digits(out, minutes / 60, 2);
            out.push(b':');
            push_digits(out, minutes % 60, 2);
        }
    }
}

fn push_digits(out: &mut Vec<u8>, n: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(b'0' + (n / 10u32.pow(i) % 10) as u8);
    }
}

/// `s` as a JSON string, byte for byte as serde_json writes it, but copying the runs between
/// escapes whole (the `properties` text is full of quotes).
fn write_str(out: &mut impl Sink, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.put(b"\"");
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let mut unicode = [b'\\', b'u', b'0', b'0', 0, 0];
        let escaped: &[u8] = match *b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                unicode[4] = HEX[usize::from(*b >> 4)];
                unicode[5] = HEX[usize::from(*b & 0xf)];
                &unicode
            }
            _ => continue,
        };
        out.put(&bytes[start..i]);
        out.put(escaped);
        start = i + 1;
    }
    out.put(&bytes[start..]);
    out.put(b"\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Options, run};
    use crate::hogql::{Statement, parse};
    use crate::storage::Storage;
    use serde_json::{Value, json};

    #[test]
    fn answers_are_what_serde_json_writes_for_the_answer_value_in_any_pieces() {
        let mut table = Table::new(Storage::default());
        let start = "2024-03-01T00:00:00Z".parse().unwrap();
        let end = "2024-03-04T00:00:00Z".parse().unwrap();
        table.insert(crate::synthetic_events(2_000, start, end, 9), true);
        let sql = "SELECT uuid, event, distinct_id, properties, elements_chain, timestamp, created_at, cityHash64(distinct_id), cityHash64(uuid), intDiv(toUnixTimestamp64Milli(timestamp), 86400000) AS day FROM events ORDER BY timestamp, uuid";
        let Ok(Statement::Select(q)) = parse(sql, &Default::default(), None) else {
            panic!()
        };
        let opts = Options {
            cap: 100,
            ignore_filters: false,
            stray: None,
        };
        let Rows::Stored(ids) = run(&table, &q, &opts).rows else {
            panic!()
        };
        for zone in [None, FixedOffset::east_opt(5 * 3600)] {
            let rows: Vec<Vec<Value>> = ids
                .iter()
                .map(|id| {
                    q.items
                        .iter()
                        .map(|i| match shown(i.expr, eval(&table, i.expr, *id)) {
                            Shown::Int(n) => json!(n),
                            Shown::UInt(n) => json!(n),
                            Shown::Time(t) => json!(format_time(
                                DateTime::from_timestamp_micros(t).unwrap(),
                                zone
                            )),
                            Shown::Text(s) => json!(s),
                        })
                        .collect()
                })
                .collect();
            let value = json!({
                "results": rows,
                "columns": q.items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
                "types": q.items.iter().map(|i| i.expr.type_name()).collect::<Vec<_>>(),
                "is_cached": false,
                "hasMore": true,
            });
            let expected = serde_json::to_vec(&value).unwrap();
            let answer = Answer::new(&q, Rows::Stored(ids.clone()), zone, Some(true));
            assert_eq!(answer.len(&table), expected.len() as u64);
            let mut pieced = Answer::new(&q, Rows::Stored(ids.clone()), zone, Some(true));
            let mut bytes = Vec::new();
            while let Some(piece) = pieced.next_piece(&table, 1_000) {
                bytes.extend_from_slice(&piece);
            }
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                String::from_utf8(expected.clone()).unwrap()
            );
            assert_eq!(answer.whole(&table), expected);
        }
        let empty = Answer::new(&q, Rows::Stored(Vec::new()), None, None);
        assert_eq!(
            serde_json::from_slice::<Value>(&empty.whole(&table)).unwrap()["results"],
            json!([])
        );
    }

    #[test]
    fn strings_and_times_are_written_as_serde_json_and_chrono_write_them() {
        let mut every: String = (0u8..0x80).map(char::from).collect();
        every.push_str("Zoë \"Z\" 😀 \\ end");
        for s in [every.as_str(), "", "plain", "\"", "\u{1f}x\u{7f}"] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
        for t in [
            "2024-01-01T12:34:56Z",
            "2024-02-29T23:59:59.000001Z",
            "1999-12-31T20:00:00.5Z",
        ] {
            let t: DateTime<Utc> = t.parse().unwrap();
            for tz in [
                None,
                FixedOffset::east_opt(5 * 3600),
                FixedOffset::west_opt(9 * 3600 + 1800),
            ] {
                let fmt = if t.timestamp_subsec_micros() == 0 {
                    "%Y-%m-%dT%H:%M:%S"
                } else {
                    "%Y-%m-%dT%H:%M:%S%.6f"
                };
                let chrono = match tz {
                    None => format!("{}Z", t.format(fmt)),
                    Some(tz) => format!(
                        "{}{}",
                        t.with_timezone(&tz).format(fmt),
                        t.with_timezone(&tz).format("%:z")
                    ),
                };
                assert_eq!(format_time(t, tz), chrono);
            }
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        for n in [0i128, 7, -7, i64::MIN.into(), u64::MAX.into()] {
            let mut out = Vec::new();
            write_int(&mut out, n);
            let expected = if n < 0 {
                serde_json::to_string(&(n as i64)).unwrap()
            } else {
                serde_json::to_string(&(n as u64)).unwrap()
            };
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
