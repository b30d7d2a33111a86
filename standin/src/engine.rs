//! Runs a parsed SELECT over the layout as ClickHouse does: every granule the primary key cannot
//! rule out is read whatever the LIMIT (filter columns for all its rows, the other columns where
//! a row passed), then rows are ordered and limited, or counted. Reports what each shard read.

use crate::data::StoredEvent;
use crate::hogql::{Cond, Const, Expr, Field, Op, Select};
use crate::storage::{self, Column, Columns, RowKey, Table};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// What one shard read for a query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardRead {
    pub rows: u64,
    pub bytes: u64,
}

/// The rows of an answer.
pub(crate) enum Rows {
    /// Stored rows, by number: written straight from the table into the answer.
    Stored(Vec<u32>),
    /// Computed ones (`count()`, GROUP BY).
    Counted(Vec<Vec<Cell>>),
}

impl Rows {
    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::Stored(ids) => ids.len(),
            Rows::Counted(rows) => rows.len(),
        }
    }
}

/// A query's answer and what it cost.
pub(crate) struct Outcome {
    pub rows: Rows,
    /// More rows matched than were returned.
    pub more: bool,
    pub shards: Vec<ShardRead>,
    pub rows_returned: u64,
    pub bytes_returned: u64,
}

impl Outcome {
    pub(crate) fn rows_read(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    pub(crate) fn bytes_read(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }
}

/// Rows that break the page on purpose (`PageFault`), in terms of the query's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stray {
    /// Replace the last row by the first row after it that fails the WHERE.
    PastEnd,
    /// Replace the first row by the last row before it that fails the WHERE.
    BeforeStart,
}

pub(crate) struct Options {
    /// The most rows returned (LIMIT, capped).
    pub cap: usize,
    /// `PageFault::IgnoreFilters`: `event [NOT] IN` and `created_at` conditions count as true.
    pub ignore_filters: bool,
    pub stray: Option<Stray>,
}

/// Where a row lives: shard, part, position; the order rows tied on ORDER BY come back in.
type Loc = u64;

fn loc(shard: usize, part: usize, pos: usize) -> Loc {
    ((shard as u64) << 48) | ((part as u64) << 32) | pos as u64
}

/// A value a row has for an expression, ordered as ClickHouse orders that type.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Val<'a> {
    Num(i128),
    /// ClickHouse's UUID order; the text is what is returned.
    Uuid((u64, u64), &'a str),
    /// An event name: its place in byte order among the stored names (quicker to compare).
    Event(u32, &'a str),
    Str(&'a str),
}

impl Ord for Val<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Val::Num(a), Val::Num(b)) => a.cmp(b),
            (Val::Uuid(a, _), Val::Uuid(b, _)) => a.cmp(b),
            (Val::Event(a, _), Val::Event(b, _)) => a.cmp(b),
            (Val::Str(a), Val::Str(b)) => a.cmp(b),
            // One expression gives one kind of value: never compared across kinds.
            (a, b) => a.kind().cmp(&b.kind()),
        }
    }
}

impl PartialOrd for Val<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Val<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Val<'_> {}

impl Val<'_> {
    fn kind(&self) -> u8 {
        match self {
            Val::Num(_) => 0,
            Val::Uuid(..) => 1,
            Val::Event(..) => 2,
            Val::Str(_) => 3,
        }
    }
}

/// The value of `expr` for row `id`.
pub(crate) fn eval(table: &Table, expr: Expr, id: u32) -> Val<'_> {
    let (k, e) = (&table.keys[id as usize], &table.rows[id as usize]);
    match expr {
        Expr::Column(c) => match c {
            Column::Uuid => Val::Uuid(k.uuid, &e.uuid),
            Column::Event => Val::Event(table.ranks[k.event as usize], &e.event),
            Column::DistinctId => Val::Str(&e.distinct_id),
            Column::Properties => Val::Str(&e.properties),
            Column::ElementsChain => Val::Str(&e.elements_chain),
            Column::Timestamp => Val::Num(k.ts.into()),
            Column::CreatedAt => Val::Num(k.created.into()),
            Column::TeamId => Val::Num(0),
        },
        Expr::HashDistinctId => Val::Num(k.hd.into()),
        Expr::HashUuid => Val::Num(k.hu.into()),
        // toUnixTimestamp64Milli, then intDiv (floored: the UTC day for 86,400,000).
        Expr::MillisDiv(d) => Val::Num(i128::from(k.ts.div_euclid(1000)).div_euclid(d.into())),
        Expr::HashDiv(d) => Val::Num((k.hd / d).into()),
        Expr::Count | Expr::Total => Val::Num(0),
    }
}

/// A value as an answer shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Shown<'a> {
    Int(i64),
    UInt(u64),
    /// Microseconds since the epoch, shown as RFC 3339 text.
    Time(i64),
    Text(&'a str),
}

/// How the answer shows `expr`'s value `v`.
pub(crate) fn shown(expr: Expr, v: Val<'_>) -> Shown<'_> {
    match (expr, v) {
        (Expr::Column(Column::Timestamp | Column::CreatedAt), Val::Num(t)) => Shown::Time(t as i64),
        (Expr::MillisDiv(_), Val::Num(n)) => Shown::Int(n as i64),
        (_, Val::Num(n)) => Shown::UInt(n as u64),
        (_, Val::Uuid(_, s) | Val::Event(_, s) | Val::Str(s)) => Shown::Text(s),
    }
}

/// A computed value (a GROUP BY key or a count), owned.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    Int(i64),
    UInt(u64),
    Time(i64),
    Text(String),
}

impl From<Shown<'_>> for Cell {
    fn from(v: Shown<'_>) -> Self {
        match v {
            Shown::Int(n) => Cell::Int(n),
            Shown::UInt(n) => Cell::UInt(n),
            Shown::Time(t) => Cell::Time(t),
            Shown::Text(s) => Cell::Text(s.into()),
        }
    }
}

/// Whether a stored row satisfies the WHERE.
fn matches(cond: &Cond, k: &RowKey, e: &StoredEvent, ignore_filters: bool) -> bool {
    match cond {
        Cond::And(parts) => parts.iter().all(|c| matches(c, k, e, ignore_filters)),
        Cond::Or(parts) => parts.iter().any(|c| matches(c, k, e, ignore_filters)),
        Cond::Cmp(Field::CreatedAt, ..) if ignore_filters => true,
        Cond::Cmp(field, op, c) => op.holds(compare(*field, k, e, c)),
        Cond::In { .. } if ignore_filters => true,
        Cond::In { negated, names } => names.contains(&e.event) != *negated,
        Cond::Tuple(fields, op, consts) => {
            let o = fields
                .iter()
                .zip(consts)
                .map(|(f, c)| compare(*f, k, e, c))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal);
            op.holds(o)
        }
    }
}

/// How the row's `field` compares with `c` (typed for that field by the parser).
fn compare(field: Field, k: &RowKey, e: &StoredEvent, c: &Const) -> Ordering {
    match (field, c) {
        (Field::Timestamp, Const::Time(t)) => k.ts.cmp(t),
        (Field::CreatedAt, Const::Time(t)) => k.created.cmp(t),
        (Field::Event, Const::Str(s)) => e.event.as_str().cmp(s),
        (Field::DistinctId, Const::Str(s)) => e.distinct_id.as_str().cmp(s),
        (Field::Uuid, Const::Uuid(u)) => k.uuid.cmp(u),
        (Field::HashDistinctId, Const::UInt(v)) => k.hd.cmp(v),
        (Field::HashUuid, Const::UInt(v)) => k.hu.cmp(v),
        _ => unreachable!("the parser types constants for their field"),
    }
}

/// The values one key column takes in part of a granule: each bound inclusive or not, or
/// none.
#[derive(Clone, Copy, Debug)]
struct Span<T> {
    lo: Option<(T, bool)>,
    hi: Option<(T, bool)>,
}

impl<T: Ord + Copy> Span<T> {
    fn any() -> Self {
        Span { lo: None, hi: None }
    }

    fn point(v: T) -> Self {
        Span {
            lo: Some((v, true)),
            hi: Some((v, true)),
        }
    }

    fn fixed(&self) -> Option<T> {
        match (self.lo, self.hi) {
            (Some((a, true)), Some((b, true))) if a == b => Some(a),
            _ => None,
        }
    }

    /// Whether `x op v` holds for every `x` in the span.
    fn all(&self, op: Op, v: T) -> bool {
        let below = |strict: bool| {
            self.hi
                .is_some_and(|(h, inc)| h < v || (h == v && (!strict || !inc)))
        };
        let above = |strict: bool| {
            self.lo
                .is_some_and(|(l, inc)| l > v || (l == v && (!strict || !inc)))
        };
        match op {
            Op::Lt => below(true),
            Op::Le => below(false),
            Op::Gt => above(true),
            Op::Ge => above(false),
            Op::Eq => self.fixed() == Some(v),
            Op::Ne => below(true) || above(true),
        }
    }

    /// Whether `x op v` is false for every `x` in the span.
    fn rules_out(&self, op: Op, v: T) -> bool {
        let not = match op {
            Op::Lt => Op::Ge,
            Op::Le => Op::Gt,
            Op::Gt => Op::Le,
            Op::Ge => Op::Lt,
            Op::Eq => Op::Ne,
            Op::Ne => Op::Eq,
        };
        self.all(not, v)
    }
}

/// A hyperrectangle of the primary key `(day, event, cityHash64(distinct_id),
/// cityHash64(uuid))`.
#[derive(Clone, Copy, Debug)]
struct KeyBox<'a> {
    day: Span<i32>,
    event: Span<&'a str>,
    hd: Span<u64>,
    hu: Span<u64>,
}

/// One row's primary key.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PrimaryKey<'a> {
    day: i32,
    event: &'a str,
    hd: u64,
    hu: u64,
}

impl<'a> PrimaryKey<'a> {
    fn of(table: &'a Table, id: u32) -> Self {
        let k = &table.keys[id as usize];
        PrimaryKey {
            day: k.day,
            event: &table.rows[id as usize].event,
            hd: k.hd,
            hu: k.hu,
        }
    }
}

/// Calls `f` with each hyperrectangle of the key range `[a, b]`, as ClickHouse's
/// `KeyCondition::forAnyHyperrectangle` splits it: `[x1 y1 .. x2 y2]` is `[x1] x [y1, +inf)`,
/// `(x1, x2) x anything` and `[x2] x (-inf, y2]`, recursively over the key's columns.
/// (One coarse box, fixing the columns before the first that differs and leaving the later
/// ones unknown, would also read the granules where the event name or the day changes: a
/// third more than the cost table's rows read for `event = X AND cityHash64(distinct_id) <
/// 2^62`, see `tests/cost.rs`.)
fn key_boxes<'a>(a: PrimaryKey<'a>, b: PrimaryKey<'a>, f: &mut dyn FnMut(&KeyBox<'a>)) {
    let mut key = KeyBox {
        day: Span::any(),
        event: Span::any(),
        hd: Span::any(),
        hu: Span::any(),
    };
    exact_boxes(&mut key, &a, &b, true, true, 0, f);
}

/// ClickHouse's recursion over the key columns from `col` on.
fn exact_boxes<'a>(
    key: &mut KeyBox<'a>,
    a: &PrimaryKey<'a>,
    b: &PrimaryKey<'a>,
    left: bool,
    right: bool,
    mut col: usize,
    f: &mut dyn FnMut(&KeyBox<'a>),
) {
    if !left && !right {
        return f(key);
    }
    if left && right {
        // The shared prefix is fixed.
        while col < 4 && same(a, b, col) {
            set_point(key, a, col);
            col += 1;
        }
    }
    if col == 4 {
        return f(key);
    }
    let bound = |p: &PrimaryKey<'a>, inclusive: bool| Some((*p, inclusive));
    let (lo, hi) = (
        if left { bound(a, false) } else { None },
        if right { bound(b, false) } else { None },
    );
    if col == 3 {
        // The last column: a closed range between the bounds.
        set_range(
            key,
            col,
            lo.map(|(p, _)| (p, true)),
            hi.map(|(p, _)| (p, true)),
        );
        return f(key);
    }
    // (x1, x2) x anything
    set_range(key, col, lo, hi);
    for later in col + 1..4 {
        set_range(key, later, None, None);
    }
    f(key);
    if left {
        // [x1] x [y1 ..
        set_point(key, a, col);
        exact_boxes(key, a, b, true, false, col + 1, f);
    }
    if right {
        // [x2] x .. y2]
        set_point(key, b, col);
        exact_boxes(key, a, b, false, true, col + 1, f);
    }
}

fn same(a: &PrimaryKey<'_>, b: &PrimaryKey<'_>, col: usize) -> bool {
    match col {
        0 => a.day == b.day,
        1 => a.event == b.event,
        2 => a.hd == b.hd,
        _ => a.hu == b.hu,
    }
}

fn set_point<'a>(key: &mut KeyBox<'a>, p: &PrimaryKey<'a>, col: usize) {
    match col {
        0 => key.day = Span::point(p.day),
        1 => key.event = Span::point(p.event),
        2 => key.hd = Span::point(p.hd),
        _ => key.hu = Span::point(p.hu),
    }
}

/// Column `col` between the bounds' values (each inclusive or not; `None`: unbounded).
fn set_range<'a>(
    key: &mut KeyBox<'a>,
    col: usize,
    lo: Option<(PrimaryKey<'a>, bool)>,
    hi: Option<(PrimaryKey<'a>, bool)>,
) {
    match col {
        0 => {
            key.day = Span {
                lo: lo.map(|(p, i)| (p.day, i)),
                hi: hi.map(|(p, i)| (p.day, i)),
            }
        }
        1 => {
            key.event = Span {
                lo: lo.map(|(p, i)| (p.event, i)),
                hi: hi.map(|(p, i)| (p.event, i)),
            }
        }
        2 => {
            key.hd = Span {
                lo: lo.map(|(p, i)| (p.hd, i)),
                hi: hi.map(|(p, i)| (p.hd, i)),
            }
        }
        _ => {
            key.hu = Span {
                lo: lo.map(|(p, i)| (p.hu, i)),
                hi: hi.map(|(p, i)| (p.hu, i)),
            }
        }
    }
}

/// Whether the WHERE can hold for some row in the box: ClickHouse's KeyCondition. Only the
/// key's columns can rule rows out: `timestamp` through its day (`toDate` is monotonic but
/// not injective, so ClickHouse weakens `<` to `<=` and `>` to `>=` on the day:
/// `timestamp < midnight` still reads that midnight's day), `event`, and the two hashes.
/// `created_at`, `uuid`, `distinct_id` and tuple comparisons never do.
fn may_match(cond: &Cond, key: &KeyBox<'_>, ignore_filters: bool) -> bool {
    match cond {
        Cond::And(parts) => parts.iter().all(|c| may_match(c, key, ignore_filters)),
        Cond::Or(parts) => parts.iter().any(|c| may_match(c, key, ignore_filters)),
        Cond::Cmp(Field::Timestamp, op, Const::Time(t)) => {
            let day = storage::day_of(*t);
            match op {
                Op::Lt | Op::Le => !key.day.rules_out(Op::Le, day),
                Op::Gt | Op::Ge => !key.day.rules_out(Op::Ge, day),
                Op::Eq => !key.day.rules_out(Op::Eq, day),
                Op::Ne => true,
            }
        }
        Cond::Cmp(Field::Event, op, Const::Str(s)) => !key.event.rules_out(*op, s.as_str()),
        Cond::Cmp(Field::HashDistinctId, op, Const::UInt(v)) => !key.hd.rules_out(*op, *v),
        Cond::Cmp(Field::HashUuid, op, Const::UInt(v)) => !key.hu.rules_out(*op, *v),
        Cond::Cmp(..) | Cond::Tuple(..) => true,
        Cond::In { .. } if ignore_filters => true,
        Cond::In { negated, names } => match key.event.fixed() {
            Some(e) => names.iter().any(|n| n == e) != *negated,
            None => true,
        },
    }
}

/// Whether the WHERE holds for every row in the box (then rows need no checking one by
/// one). Exact, unlike [`may_match`]: it only saves work, it changes no figure.
fn must_match(cond: &Cond, key: &KeyBox<'_>, ignore_filters: bool) -> bool {
    match cond {
        Cond::And(parts) => parts.iter().all(|c| must_match(c, key, ignore_filters)),
        Cond::Or(parts) => parts.iter().any(|c| must_match(c, key, ignore_filters)),
        Cond::Cmp(Field::Timestamp, op, Const::Time(t)) => {
            // The microseconds the box's days hold.
            let day = storage::DAY_MICROS;
            let times = Span {
                lo: key
                    .day
                    .lo
                    .map(|(d, inc)| (i64::from(d + i32::from(!inc)) * day, true)),
                hi: key
                    .day
                    .hi
                    .map(|(d, inc)| (i64::from(d + i32::from(inc)) * day - 1, true)),
            };
            times.all(*op, *t)
        }
        Cond::Cmp(Field::Event, op, Const::Str(s)) => key.event.all(*op, s.as_str()),
        Cond::Cmp(Field::HashDistinctId, op, Const::UInt(v)) => key.hd.all(*op, *v),
        Cond::Cmp(Field::HashUuid, op, Const::UInt(v)) => key.hu.all(*op, *v),
        Cond::Cmp(Field::CreatedAt, ..) | Cond::In { .. } if ignore_filters => true,
        Cond::Cmp(..) | Cond::Tuple(..) => false,
        Cond::In { negated, names } => key
            .event
            .fixed()
            .is_some_and(|e| names.iter().any(|n| n == e) != *negated),
    }
}

/// A row that passed, with what ORDER BY compares it by: numbers when every key is one
/// (then comparing is cheap), else the row is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Found {
    key: [u64; KEY_WORDS],
    loc: Loc,
    id: u32,
}

const KEY_WORDS: usize = 6;

/// How found rows are ordered.
struct Sorter<'q> {
    order_by: &'q [Expr],
    /// Every ORDER BY key packs into `Found::key`.
    packed: bool,
}

impl<'q> Sorter<'q> {
    fn new(order_by: &'q [Expr]) -> Self {
        let words: Option<usize> = order_by.iter().map(|x| words(*x)).sum();
        Sorter {
            order_by,
            packed: words.is_some_and(|w| w <= KEY_WORDS),
        }
    }

    fn found(&self, table: &Table, id: u32, loc: Loc) -> Found {
        let mut key = [0u64; KEY_WORDS];
        if self.packed {
            // Signed values with the sign bit flipped sort as unsigned ones.
            let flip = |v: i128| (v as i64 as u64) ^ (1 << 63);
            let mut i = 0;
            for x in self.order_by {
                match (*x, eval(table, *x, id)) {
                    (_, Val::Uuid(u, _)) => {
                        key[i] = u.0;
                        key[i + 1] = u.1;
                        i += 1;
                    }
                    (_, Val::Event(rank, _)) => key[i] = rank.into(),
                    (Expr::Column(_) | Expr::MillisDiv(_), Val::Num(n)) => key[i] = flip(n),
                    (_, Val::Num(n)) => key[i] = n as u64,
                    (_, Val::Str(_)) => unreachable!("text is not packed"),
                }
                i += 1;
            }
        }
        Found { key, loc, id }
    }

    fn cmp(&self, table: &Table, a: &Found, b: &Found) -> Ordering {
        if self.packed {
            return a.cmp(b);
        }
        self.order_by
            .iter()
            .map(|x| eval(table, *x, a.id).cmp(&eval(table, *x, b.id)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.loc.cmp(&b.loc))
    }
}

/// How many words of `Found::key` an ORDER BY key takes (`None`: it is text).
fn words(x: Expr) -> Option<usize> {
    match x {
        Expr::Column(Column::Uuid) => Some(2),
        Expr::Column(Column::DistinctId | Column::Properties | Column::ElementsChain) => None,
        _ => Some(1),
    }
}

/// Runs `q` over `table`.
pub(crate) fn run(table: &Table, q: &Select, opts: &Options) -> Outcome {
    let layout = table.layout;
    // Columns read for every row of a granule read: the key's `team_id`, and what the WHERE
    // needs (ClickHouse moves it to PREWHERE). Every other column the query uses (selected,
    // grouped or ordered by) is read after PREWHERE, only where a row passed.
    let mut filter_cols: Columns = Column::TeamId.bit();
    if let Some(f) = &q.filter {
        filter_cols |= f.columns();
    }
    let used = q
        .items
        .iter()
        .map(|i| i.expr)
        .chain(q.group_by.iter().copied())
        .chain(q.order_by.iter().copied())
        .fold(0, |c, e| c | e.column().map_or(0, Column::bit));
    let other_cols = used & !filter_cols;
    let aggregate = q.aggregates();
    let sorter = Sorter::new(&q.order_by);

    let mut shards = vec![ShardRead::default(); table.shards.len()];
    let mut top = TopRows::new(opts.cap, &sorter, table);
    let mut groups: BTreeMap<Vec<Val<'_>>, u64> = BTreeMap::new();
    let mut group = Vec::with_capacity(q.group_by.len());
    let mut passed: Vec<(u32, Loc)> = Vec::with_capacity(layout.block_rows);
    for (s, parts) in table.shards.iter().enumerate() {
        let read = &mut shards[s];
        for (p, part) in parts.iter().enumerate() {
            let mut blocks = part.blocks.iter();
            for (g, granule) in part.rows.chunks(layout.granule_rows).enumerate() {
                let block_count = granule.len().div_ceil(layout.block_rows);
                let sums: Vec<&[u64; 8]> = blocks.by_ref().take(block_count).collect();
                // A granule's key range, as ClickHouse's marks give it: from its first row to
                // the next granule's first row (the last granule: to its last row).
                let first = PrimaryKey::of(table, granule[0]);
                let last = match part.rows.get((g + 1) * layout.granule_rows) {
                    Some(next) => PrimaryKey::of(table, *next),
                    None => PrimaryKey::of(table, granule[granule.len() - 1]),
                };
                let (mut may, mut must) = (q.filter.is_none(), true);
                if let Some(f) = &q.filter {
                    key_boxes(first, last, &mut |key| {
                        may = may || may_match(f, key, opts.ignore_filters);
                        must = must && must_match(f, key, opts.ignore_filters);
                    });
                }
                if !may {
                    continue;
                }
                read.rows += granule.len() as u64;
                let base = g * layout.granule_rows;
                for (b, block) in granule.chunks(layout.block_rows).enumerate() {
                    read.bytes += storage::block_width(sums[b], filter_cols);
                    let start = base + b * layout.block_rows;
                    passed.clear();
                    let at = |i: usize, id: &u32| (*id, loc(s, p, start + i));
                    match &q.filter {
                        Some(f) if !must => passed.extend(
                            block
                                .iter()
                                .enumerate()
                                .filter(|(_, id)| {
                                    let id = **id as usize;
                                    matches(
                                        f,
                                        &table.keys[id],
                                        &table.rows[id],
                                        opts.ignore_filters,
                                    )
                                })
                                .map(|(i, id)| at(i, id)),
                        ),
                        _ => passed.extend(block.iter().enumerate().map(|(i, id)| at(i, id))),
                    }
                    if passed.is_empty() {
                        continue;
                    }
                    read.bytes += storage::block_width(sums[b], other_cols);
                    if !aggregate {
                        for (id, l) in &passed {
                            top.offer(*id, *l);
                        }
                    } else if q.group_by.is_empty() {
                        *groups.entry(Vec::new()).or_insert(0) += passed.len() as u64;
                    } else {
                        for (id, _) in &passed {
                            group.clear();
                            group.extend(q.group_by.iter().map(|x| eval(table, *x, *id)));
                            match groups.get_mut(group.as_slice()) {
                                Some(n) => *n += 1,
                                None => {
                                    groups.insert(group.clone(), 1);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    if aggregate {
        return aggregated(q, groups, shards, opts);
    }
    let (mut found, more) = top.finish();
    if let Some(stray) = opts.stray {
        place_stray(table, q, opts, stray, &mut found, &sorter);
    }
    let bytes_returned = found
        .iter()
        .map(|f| storage::stored_size(&table.rows[f.id as usize]))
        .sum();
    Outcome {
        rows_returned: found.len() as u64,
        rows: Rows::Stored(found.iter().map(|f| f.id).collect()),
        more,
        shards,
        bytes_returned,
    }
}

/// The first `cap` rows in ORDER BY order among those offered, kept in a buffer of at most
/// twice that (memory bounded by the LIMIT, not by the rows that pass).
struct TopRows<'a> {
    cap: usize,
    sorter: &'a Sorter<'a>,
    table: &'a Table,
    kept: Vec<Found>,
    offered: usize,
}

impl<'a> TopRows<'a> {
    fn new(cap: usize, sorter: &'a Sorter<'a>, table: &'a Table) -> Self {
        TopRows {
            cap,
            sorter,
            table,
            kept: Vec::new(),
            offered: 0,
        }
    }

    fn offer(&mut self, id: u32, loc: Loc) {
        self.offered += 1;
        if self.sorter.order_by.is_empty() {
            // Offered in (shard, part, position) order: the first ones are the answer.
            if self.kept.len() < self.cap {
                self.kept.push(self.sorter.found(self.table, id, loc));
            }
            return;
        }
        self.kept.push(self.sorter.found(self.table, id, loc));
        if self.kept.len() >= 2 * self.cap.max(1) {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        let (sorter, table) = (self.sorter, self.table);
        if self.cap == 0 {
            self.kept.clear();
        } else if self.kept.len() > self.cap {
            self.kept
                .select_nth_unstable_by(self.cap - 1, |a, b| sorter.cmp(table, a, b));
            self.kept.truncate(self.cap);
        }
    }

    /// The rows in order, and whether more passed than were kept.
    fn finish(mut self) -> (Vec<Found>, bool) {
        self.shrink();
        let (sorter, table) = (self.sorter, self.table);
        if !sorter.order_by.is_empty() {
            self.kept.sort_unstable_by(|a, b| sorter.cmp(table, a, b));
        }
        (self.kept, self.offered > self.cap)
    }
}

/// Rows of a `count()` / GROUP BY query: no stored row is delivered.
fn aggregated<'a>(
    q: &Select,
    groups: BTreeMap<Vec<Val<'a>>, u64>,
    shards: Vec<ShardRead>,
    opts: &Options,
) -> Outcome {
    let mut groups: Vec<(Vec<Val<'a>>, u64)> = groups.into_iter().collect();
    if q.group_by.is_empty() && groups.is_empty() {
        groups.push((Vec::new(), 0));
    }
    let total: u64 = groups.iter().map(|g| g.1).sum();
    let value = |g: &(Vec<Val<'a>>, u64), x: Expr| -> Val<'a> {
        match q.group_by.iter().position(|k| *k == x) {
            Some(i) => g.0[i],
            None if x == Expr::Total => Val::Num(total.into()),
            None => Val::Num(g.1.into()),
        }
    };
    // Groups come sorted by their keys; ORDER BY may ask for another order (stable, so
    // groups equal on it keep the key order).
    groups.sort_by(|a, b| {
        q.order_by
            .iter()
            .map(|x| value(a, *x).cmp(&value(b, *x)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    });
    let more = groups.len() > opts.cap;
    groups.truncate(opts.cap);
    let rows: Vec<Vec<Cell>> = groups
        .iter()
        .map(|g| {
            q.items
                .iter()
                .map(|i| shown(i.expr, value(g, i.expr)).into())
                .collect()
        })
        .collect();
    Outcome {
        rows_returned: rows.len() as u64,
        rows: Rows::Counted(rows),
        more,
        shards,
        bytes_returned: 0,
    }
}

/// Puts a row that fails the WHERE into the page, next to the rows around it in the query's
/// order: a faulty server or proxy (`PageFault::RowPastEnd`, `RowBeforeStart`).
fn place_stray(
    table: &Table,
    q: &Select,
    opts: &Options,
    stray: Stray,
    found: &mut [Found],
    sorter: &Sorter<'_>,
) {
    let (Some(first), Some(last)) = (found.first().copied(), found.last().copied()) else {
        return;
    };
    let cmp = |a: &Found, b: &Found| sorter.cmp(table, a, b);
    let mut best: Option<Found> = None;
    for (s, parts) in table.shards.iter().enumerate() {
        for (p, part) in parts.iter().enumerate() {
            for (pos, id) in part.rows.iter().enumerate() {
                let (k, e) = (&table.keys[*id as usize], &table.rows[*id as usize]);
                if q.filter
                    .as_ref()
                    .is_none_or(|f| matches(f, k, e, opts.ignore_filters))
                {
                    continue;
                }
                let row = sorter.found(table, *id, loc(s, p, pos));
                let better = match stray {
                    Stray::PastEnd => {
                        cmp(&row, &last).is_gt() && best.is_none_or(|b| cmp(&row, &b).is_lt())
                    }
                    Stray::BeforeStart => {
                        cmp(&row, &first).is_lt() && best.is_none_or(|b| cmp(&row, &b).is_gt())
                    }
                };
                if better {
                    best = Some(row);
                }
            }
        }
    }
    if let Some(row) = best {
        match stray {
            Stray::PastEnd => *found.last_mut().expect("not empty") = row,
            Stray::BeforeStart => found[0] = row,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hogql::{Statement, parse};
    use crate::storage::Storage;
    use chrono::{DateTime, Utc};
    use serde_json::Map;
    use serde_json::{Value, json};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn table(layout: Storage) -> Table {
        let mut table = Table::new(layout);
        table.insert(
            crate::synthetic_events(
                20_000,
                t("2024-03-01T00:00:00Z"),
                t("2024-03-04T00:00:00Z"),
                9,
            ),
            true,
        );
        table
    }

    /// A query's rows (read back from its answer's JSON) and what it read.
    struct Ran {
        rows: Vec<Vec<Value>>,
        out: Outcome,
    }

    impl Ran {
        fn rows_read(&self) -> u64 {
            self.out.rows_read()
        }

        fn bytes_read(&self) -> u64 {
            self.out.bytes_read()
        }
    }

    fn run_sql(table: &Table, sql: &str, values: Value) -> Ran {
        let Ok(Statement::Select(q)) = parse(sql, values.as_object().unwrap(), None) else {
            panic!("{sql}")
        };
        let opts = Options {
            cap: q.limit.unwrap_or(100).min(50_000),
            ignore_filters: false,
            stray: None,
        };
        let out = run(table, &q, &opts);
        let rows = match &out.rows {
            Rows::Stored(ids) => Rows::Stored(ids.clone()),
            Rows::Counted(rows) => Rows::Counted(rows.clone()),
        };
        let answer = crate::answer::Answer::new(&q, rows, None, None).whole(table);
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        let rows = answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().clone())
            .collect();
        Ran { rows, out }
    }

    const DAY: &str = "timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp < toDateTime64({end}, 6, 'UTC')";

    fn day() -> Map<String, Value> {
        json!({"start": "2024-03-02 00:00:00", "end": "2024-03-03 00:00:00"})
            .as_object()
            .unwrap()
            .clone()
    }

    fn with(mut v: Map<String, Value>, k: &str, x: Value) -> Value {
        v.insert(k.into(), x);
        Value::Object(v)
    }

    /// `event = e AND cityHash64(distinct_id) < 100` on a granule from `(day 1, "a", 900)` to
    /// `(day 1, "c", 5)`.
    fn may(e: &str) -> bool {
        let a = PrimaryKey {
            day: 1,
            event: "a",
            hd: 900,
            hu: 3,
        };
        let b = PrimaryKey {
            day: 1,
            event: "c",
            hd: 5,
            hu: 3,
        };
        let cond = Cond::And(vec![
            Cond::Cmp(Field::Event, Op::Eq, Const::Str(e.into())),
            Cond::Cmp(Field::HashDistinctId, Op::Lt, Const::UInt(100)),
        ]);
        let mut may = false;
        key_boxes(a, b, &mut |key| may = may || may_match(&cond, key, false));
        may
    }

    #[test]
    fn a_granule_is_checked_on_clickhouses_hyperrectangles() {
        assert!(!may("a"), "its \"a\" rows all have hashes of 900 and more");
        assert!(may("b"), "\"b\" rows may have any hash");
        assert!(may("c"), "\"c\" rows have hashes up to 5");
        assert!(!may("d"), "no \"d\" row");
    }

    #[test]
    fn timestamp_bounds_prune_by_day_only_and_lt_midnight_still_reads_that_day() {
        let table = table(Storage {
            shards: 1,
            parts_per_shard: 1,
            granule_rows: 256,
            block_rows: 64,
        });
        let whole = run_sql(&table, "SELECT uuid FROM events", json!({})).rows_read();
        let sql = format!("SELECT uuid FROM events WHERE {DAY} ORDER BY timestamp, uuid LIMIT 10");
        let one_day = run_sql(&table, &sql, Value::Object(day()));
        // Day 2 and, through `timestamp < midnight` weakened to `day <= day 3`, day 3.
        assert!(
            one_day.rows_read() > whole * 55 / 100,
            "{}",
            one_day.rows_read()
        );
        assert!(
            one_day.rows_read() < whole * 75 / 100,
            "{}",
            one_day.rows_read()
        );
        let sql = "SELECT uuid FROM events WHERE timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp <= toDateTime64({last}, 6, 'UTC') LIMIT 10";
        let exact = run_sql(
            &table,
            sql,
            with(day(), "last", json!("2024-03-02 23:59:59.999999")),
        );
        assert!(
            exact.rows_read() < whole * 40 / 100,
            "{}",
            exact.rows_read()
        );
    }

    #[test]
    fn count_and_group_by_count_exactly_and_deliver_no_stored_bytes() {
        let table = table(Storage::default());
        let total = run_sql(
            &table,
            &format!("SELECT count() FROM events WHERE {DAY}"),
            Value::Object(day()),
        );
        let n = total.rows[0][0].as_u64().unwrap();
        let in_day = table
            .rows
            .iter()
            .filter(|e| {
                e.timestamp >= t("2024-03-02T00:00:00Z") && e.timestamp < t("2024-03-03T00:00:00Z")
            })
            .count() as u64;
        assert_eq!(n, in_day);
        assert_eq!(total.out.bytes_returned, 0);
        let plan = run_sql(
            &table,
            &format!(
                "SELECT intDiv(toUnixTimestamp64Milli(timestamp), 86400000) AS utc_day, event, intDiv(cityHash64(distinct_id), {{w}}) AS hash_bucket, count() AS n FROM events WHERE {DAY} GROUP BY utc_day, event, hash_bucket ORDER BY utc_day, event, hash_bucket LIMIT 10000"
            ),
            with(day(), "w", json!(1u64 << 62)),
        );
        assert_eq!(plan.rows.len(), 6 * 4, "six names, four buckets");
        let sum: u64 = plan.rows.iter().map(|r| r[3].as_u64().unwrap()).sum();
        assert_eq!(sum, in_day);
        assert!(plan.rows.iter().all(|r| r[0] == json!(19_784)));
        // Filter columns only: team_id, timestamp, event, distinct_id.
        assert!(plan.bytes_read() < plan.rows_read() * 60);
    }

    const COLUMNS: &str = "uuid, event, distinct_id, properties, elements_chain, timestamp, created_at, cityHash64(distinct_id), cityHash64(uuid)";

    fn small_granules() -> Table {
        table(Storage {
            granule_rows: 128,
            block_rows: 128,
            ..Storage::default()
        })
    }

    fn in_day_2(table: &Table) -> Vec<&StoredEvent> {
        table
            .rows
            .iter()
            .filter(|e| {
                e.timestamp >= t("2024-03-02T00:00:00Z") && e.timestamp < t("2024-03-03T00:00:00Z")
            })
            .collect()
    }

    /// Walks day 2 in storage order with the product's page query from `cursor` (`lo` says
    /// how it bounds a page), up to `hi` if any. The rows, and the rows read.
    fn walk(
        table: &Table,
        lo: &str,
        mut cursor: Option<(String, u64, u64)>,
        hi: Option<(&str, u64)>,
        limit: usize,
    ) -> (Vec<Value>, u64) {
        let (mut rows, mut read) = (Vec::new(), 0);
        loop {
            let mut conds = vec![DAY.to_string()];
            let mut v = day();
            if let Some((e, h, u)) = &cursor {
                conds.push(lo.to_string());
                v.insert("lo_event".into(), json!(e));
                v.insert("lo_hash".into(), json!(h));
                v.insert("lo_uuid_hash".into(), json!(u));
            }
            if let Some((e, h)) = hi {
                conds.push("event <= {hi_event} AND (event < {hi_event} OR cityHash64(distinct_id) < {hi_hash} OR (cityHash64(distinct_id) = {hi_hash} AND cityHash64(uuid) < {hi_uuid_hash}))".into());
                v.insert("hi_event".into(), json!(e));
                v.insert("hi_hash".into(), json!(h));
                v.insert("hi_uuid_hash".into(), json!(0));
            }
            let sql = format!(
                "SELECT {COLUMNS} FROM events WHERE {} ORDER BY intDiv(toUnixTimestamp64Milli(timestamp), 86400000), event, cityHash64(distinct_id), cityHash64(uuid) LIMIT {limit}",
                conds.join(" AND ")
            );
            let page = run_sql(table, &sql, Value::Object(v));
            read += page.rows_read();
            let Some(last) = page.rows.last() else { break };
            cursor = Some((
                last[1].as_str().unwrap().into(),
                last[7].as_u64().unwrap(),
                last[8].as_u64().unwrap(),
            ));
            let full = page.rows.len() == limit;
            rows.extend(page.rows.into_iter().map(Value::Array));
            if !full {
                break;
            }
        }
        (rows, read)
    }

    const LO: &str = "event >= {lo_event} AND (event > {lo_event} OR cityHash64(distinct_id) > {lo_hash} OR (cityHash64(distinct_id) = {lo_hash} AND cityHash64(uuid) > {lo_uuid_hash}))";

    #[test]
    fn the_products_pages_walk_a_day_in_storage_order_and_bounded_ones_read_little() {
        let table = small_granules();
        let day_read = run_sql(
            &table,
            &format!("SELECT uuid FROM events WHERE {DAY}"),
            Value::Object(day()),
        )
        .rows_read();
        let expected = in_day_2(&table).len();
        let (rows, read) = walk(&table, LO, None, None, 1_000);
        assert_eq!(rows.len(), expected);
        let key = |r: &Value| -> (String, u64, u64) {
            (
                r[1].as_str().unwrap().into(),
                r[7].as_u64().unwrap(),
                r[8].as_u64().unwrap(),
            )
        };
        let keys: Vec<_> = rows.iter().map(key).collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "in key order, each row once"
        );
        // A page bounded below only reads all of the day past its cursor, whatever its LIMIT.
        let pages = expected.div_ceil(1_000) as u64;
        assert!(
            read > pages * day_read / 3,
            "{read} rows read in {pages} pages"
        );

        // Bounded on both sides within one event (a plan's bucket), pages read little: here
        // about one granule per part and day (the data are small for granules of 128).
        let (x, hi) = ("$pageview", 1u64 << 62);
        let start = Some((x.to_string(), 0, 0));
        let (rows, read) = walk(&table, LO, start, Some((x, hi)), 100);
        let inside = keys.iter().filter(|k| k.0 == x && k.1 < hi).count();
        assert_eq!(rows.len(), inside);
        let pages = inside.div_ceil(100) as u64 + 1;
        assert!(
            read < pages * day_read / 4,
            "{read} rows read for {inside} rows in {pages} pages; a day reads {day_read}"
        );
    }

    #[test]
    fn the_shorter_bound_forms_parse_and_select_what_they_say() {
        let table = small_granules();
        let all = in_day_2(&table);
        let hd = |e: &StoredEvent| storage::city_hash64(e.distinct_id.as_bytes());
        let (mid, half) = ("purchase", 1u64 << 63);
        for (cond, keep) in [
            (
                "event >= {e}",
                Box::new(|e: &StoredEvent| e.event.as_str() >= mid)
                    as Box<dyn Fn(&StoredEvent) -> bool>,
            ),
            (
                "event < {e}",
                Box::new(|e: &StoredEvent| e.event.as_str() < mid),
            ),
            (
                "(event > {e} OR cityHash64(distinct_id) >= {h})",
                Box::new(|e: &StoredEvent| e.event.as_str() > mid || hd(e) >= half),
            ),
            (
                "event = {e} AND cityHash64(distinct_id) >= {h} AND cityHash64(uuid) >= {h}",
                Box::new(|e: &StoredEvent| {
                    e.event == mid
                        && hd(e) >= half
                        && storage::city_hash64(
                            &crate::data::uuid_number(&e.uuid).unwrap().to_be_bytes(),
                        ) >= half
                }),
            ),
        ] {
            let mut v = day();
            v.insert("e".into(), json!(mid));
            v.insert("h".into(), json!(half));
            let out = run_sql(
                &table,
                &format!("SELECT uuid FROM events WHERE {DAY} AND {cond} LIMIT 50000"),
                Value::Object(v),
            );
            let expected = all.iter().filter(|e| keep(e)).count();
            assert_eq!(out.rows.len(), expected, "{cond}");
        }
    }

    #[test]
    fn the_products_plans_count_by_day_event_and_bucket_reading_key_columns_only() {
        let table = small_granules();
        let in_day = in_day_2(&table).len() as u64;
        let no_bucket = run_sql(
            &table,
            &format!(
                "SELECT intDiv(toUnixTimestamp64Milli(timestamp), 86400000) AS utc_day, event, count() AS n FROM events WHERE {DAY} AND event IN ({{a}}, {{b}}) GROUP BY utc_day, event ORDER BY utc_day, event LIMIT 10000"
            ),
            with(day(), "a", json!("signup"))
                .as_object()
                .map(|m| {
                    let mut m = m.clone();
                    m.insert("b".into(), json!("$pageview"));
                    Value::Object(m)
                })
                .unwrap(),
        );
        assert_eq!(
            no_bucket
                .rows
                .iter()
                .map(|r| r[1].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["$pageview", "signup"]
        );
        let counted: u64 = no_bucket.rows.iter().map(|r| r[2].as_u64().unwrap()).sum();
        let expected = in_day_2(&table)
            .iter()
            .filter(|e| e.event == "signup" || e.event == "$pageview")
            .count() as u64;
        assert_eq!(counted, expected);
        // team_id, timestamp and event only: about 30 bytes a row.
        assert!(no_bucket.bytes_read() < no_bucket.rows_read() * 35);

        let count = run_sql(
            &table,
            &format!("SELECT count() FROM events WHERE {DAY}"),
            Value::Object(day()),
        );
        assert_eq!(count.rows, vec![vec![json!(in_day)]]);
        assert_eq!(
            count.bytes_read(),
            count.rows_read() * 16,
            "team_id and timestamp"
        );
        let none = run_sql(
            &table,
            &format!("SELECT count() FROM events WHERE {DAY} AND event = 'zzz'"),
            Value::Object(day()),
        );
        assert_eq!(none.rows, vec![vec![json!(0)]]);
        // Only granules where a day ends could: after a day's last name comes anything.
        assert!(
            none.rows_read() < count.rows_read() / 10,
            "{}",
            none.rows_read()
        );
        // A name between two stored ones reads the granules where one changes to the other.
        let between = run_sql(
            &table,
            &format!("SELECT count() FROM events WHERE {DAY} AND event = 'nothing'"),
            Value::Object(day()),
        );
        assert!(between.rows_read() > 0 && between.rows_read() < count.rows_read() / 4);
    }

    #[test]
    fn old_keyset_pages_on_timestamp_and_uuid_still_walk_a_day() {
        let table = small_granules();
        let mut expected: Vec<&StoredEvent> = in_day_2(&table);
        expected.sort_by_key(|e| e.order_key());
        let mut got = Vec::new();
        let mut cursor: Option<(String, String)> = None;
        loop {
            let mut v = day();
            let mut sql = format!("SELECT uuid, timestamp FROM events WHERE {DAY}");
            if let Some((ts, uuid)) = &cursor {
                sql += " AND (timestamp > toDateTime64({ts}, 6, 'UTC') OR (timestamp = toDateTime64({ts}, 6, 'UTC') AND uuid > toUUID({uuid})))";
                v.insert("ts".into(), json!(ts));
                v.insert("uuid".into(), json!(uuid));
            }
            let page = run_sql(
                &table,
                &format!("{sql} ORDER BY timestamp, uuid LIMIT 999"),
                Value::Object(v),
            );
            let Some(last) = page.rows.last() else { break };
            let ts: DateTime<Utc> = last[1].as_str().unwrap().parse().unwrap();
            cursor = Some((
                ts.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
                last[0].as_str().unwrap().into(),
            ));
            got.extend(page.rows.iter().map(|r| r[0].as_str().unwrap().to_string()));
        }
        let expected: Vec<String> = expected.iter().map(|e| e.uuid.clone()).collect();
        assert_eq!(got, expected);
    }
}
