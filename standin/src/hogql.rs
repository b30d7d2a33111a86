//! The HogQL the stand-in understands: a tokenizer and a recursive-descent parser for the
//! SELECTs posthog-patterns sends, `{placeholders}` typed as ClickHouse types them (a hash takes
//! an unsigned integer, never a float). Anything else is a 400, as HogQL answers.

use crate::data;
use crate::storage::Column;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// What a query is refused with: a 400 and its `detail`.
pub(crate) type Refused = String;

pub(crate) const OFFSET_REFUSED: &str = "OFFSET is not supported for queries made with a personal API key. Use keyset pagination (a WHERE on the sort key) instead.";

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    /// Whether `a op b` holds, given how `a` compares with `b`.
    pub(crate) fn holds(self, o: Ordering) -> bool {
        match self {
            Op::Eq => o == Ordering::Equal,
            Op::Ne => o != Ordering::Equal,
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Gt => o == Ordering::Greater,
            Op::Ge => o != Ordering::Less,
        }
    }
}

/// What a WHERE condition may compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Timestamp,
    CreatedAt,
    Event,
    Uuid,
    DistinctId,
    /// `cityHash64(distinct_id)`, `cityHash64(uuid)`.
    HashDistinctId,
    HashUuid,
}

impl Field {
    /// The stored column it is computed from.
    pub(crate) fn column(self) -> Column {
        match self {
            Field::Timestamp => Column::Timestamp,
            Field::CreatedAt => Column::CreatedAt,
            Field::Event => Column::Event,
            Field::Uuid | Field::HashUuid => Column::Uuid,
            Field::DistinctId | Field::HashDistinctId => Column::DistinctId,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Field::Timestamp => "timestamp",
            Field::CreatedAt => "created_at",
            Field::Event => "event",
            Field::Uuid => "uuid",
            Field::DistinctId => "distinct_id",
            Field::HashDistinctId => "cityHash64(distinct_id)",
            Field::HashUuid => "cityHash64(uuid)",
        }
    }
}

/// A constant, typed for the field it is compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Const {
    /// Microseconds since the epoch.
    Time(i64),
    Str(String),
    /// ClickHouse's UUID order.
    Uuid((u64, u64)),
    UInt(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Cmp(Field, Op, Const),
    /// `event [NOT] IN (...)`.
    In {
        negated: bool,
        names: Vec<String>,
    },
    /// `(a, b, ...) op (x, y, ...)`, compared lexicographically.
    Tuple(Vec<Field>, Op, Vec<Const>),
}

impl Cond {
    /// The columns the condition reads.
    pub(crate) fn columns(&self) -> crate::storage::Columns {
        match self {
            Cond::And(parts) | Cond::Or(parts) => parts.iter().fold(0, |c, p| c | p.columns()),
            Cond::Cmp(field, ..) => field.column().bit(),
            Cond::In { .. } => Column::Event.bit(),
            Cond::Tuple(fields, ..) => fields.iter().fold(0, |c, f| c | f.column().bit()),
        }
    }
}

/// A SELECT, GROUP BY or ORDER BY expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    Column(Column),
    HashDistinctId,
    HashUuid,
    /// `intDiv(toUnixTimestamp64Milli(timestamp), n)`: with 86,400,000 the UTC day number.
    MillisDiv(u64),
    /// `intDiv(cityHash64(distinct_id), n)`: a hash bucket.
    HashDiv(u64),
    Count,
    /// `sum(count()) OVER ()`: the rows of every group, computed before LIMIT, so that an
    /// answer cut by its LIMIT or a cap shows it.
    Total,
}

impl Expr {
    /// The stored column it is computed from (none for `count()`).
    pub(crate) fn column(self) -> Option<Column> {
        match self {
            Expr::Column(c) => Some(c),
            Expr::HashDistinctId | Expr::HashDiv(_) => Some(Column::DistinctId),
            Expr::HashUuid => Some(Column::Uuid),
            Expr::MillisDiv(_) => Some(Column::Timestamp),
            Expr::Count | Expr::Total => None,
        }
    }

    /// Its ClickHouse type, as the answer's `types` gives it.
    pub(crate) fn type_name(self) -> &'static str {
        match self {
            Expr::Column(Column::Uuid) => "UUID",
            Expr::Column(Column::Timestamp | Column::CreatedAt) => "DateTime64(6, 'UTC')",
            Expr::Column(_) => "String",
            Expr::MillisDiv(_) => "Int64",
            Expr::HashDistinctId
            | Expr::HashUuid
            | Expr::HashDiv(_)
            | Expr::Count
            | Expr::Total => "UInt64",
        }
    }
}

pub(crate) struct Item {
    pub expr: Expr,
    /// The alias, or the expression as written.
    pub name: String,
}

pub(crate) struct Select {
    pub items: Vec<Item>,
    pub filter: Option<Cond>,
    pub group_by: Vec<Expr>,
    pub order_by: Vec<Expr>,
    pub limit: Option<usize>,
}

impl Select {
    /// Whether rows are counted in groups rather than returned.
    pub(crate) fn aggregates(&self) -> bool {
        !self.group_by.is_empty()
            || self
                .items
                .iter()
                .any(|i| matches!(i.expr, Expr::Count | Expr::Total))
    }
}

pub(crate) enum Statement {
    /// `SELECT now()`.
    Now,
    /// `SELECT 1`.
    One,
    Select(Select),
}

/// Parses `sql` with its `values`; times are read in `zone` (the project's time zone) unless
/// it is `None` (`convertToProjectTimezone: false`).
pub(crate) fn parse(
    sql: &str,
    values: &Map<String, Value>,
    zone: Option<FixedOffset>,
) -> Result<Statement, Refused> {
    let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let tokens = tokenize(&sql)?;
    if tokens
        .iter()
        .any(|t| matches!(&t.tok, Tok::Ident(w) if w.eq_ignore_ascii_case("OFFSET")))
    {
        return Err(OFFSET_REFUSED.into());
    }
    if sql == "SELECT now()" {
        return Ok(Statement::Now);
    }
    if sql == "SELECT 1" {
        return Ok(Statement::One);
    }
    let mut p = Parser {
        sql: &sql,
        tokens,
        pos: 0,
        values,
        zone,
    };
    let select = p.select()?;
    check_aggregation(&select)?;
    Ok(Statement::Select(select))
}

/// ClickHouse's rules for aggregation: with `count()` or GROUP BY, everything selected or
/// ordered by is a group key or `count()`.
fn check_aggregation(s: &Select) -> Result<(), Refused> {
    if !s.aggregates() {
        return if s.order_by.contains(&Expr::Count) {
            Err("stand-in: count() in ORDER BY needs GROUP BY".into())
        } else {
            Ok(())
        };
    }
    let grouped = |e: &Expr| matches!(e, Expr::Count | Expr::Total) || s.group_by.contains(e);
    if let Some(item) = s.items.iter().find(|i| !grouped(&i.expr)) {
        return Err(format!(
            "Column `{}` is not under aggregate function and not in GROUP BY keys",
            item.name
        ));
    }
    if s.order_by.iter().any(|e| !grouped(e)) {
        return Err("stand-in: ORDER BY of a GROUP BY query must use its keys or count()".into());
    }
    if s.group_by.contains(&Expr::Count) || s.group_by.contains(&Expr::Total) {
        return Err("Aggregate function count() is found in GROUP BY".into());
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// Digits only.
    Int(String),
    /// A number with a fraction or an exponent.
    Float(String),
    Str(String),
    Placeholder(String),
    Punct(&'static str),
}

struct Token {
    tok: Tok,
    /// Byte offsets in the (whitespace-normalized) SQL.
    start: usize,
    end: usize,
}

const PUNCTS: [&str; 14] = [
    "!=", "<>", "<=", ">=", "==", "(", ")", ",", "=", "<", ">", "*", "-", "+",
];

fn tokenize(sql: &str) -> Result<Vec<Token>, Refused> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let tok = if c == b' ' {
            i += 1;
            continue;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$')
            {
                i += 1;
            }
            Tok::Ident(sql[start..i].to_string())
        } else if c.is_ascii_digit() {
            let mut float = false;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'.' {
                float = true;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                float = true;
                i += 1;
                if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
                    i += 1;
                }
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = sql[start..i].to_string();
            if float {
                Tok::Float(text)
            } else {
                Tok::Int(text)
            }
        } else if c == b'\'' {
            let mut text = String::new();
            i += 1;
            loop {
                match sql[i..].chars().next() {
                    None => return Err(format!("Syntax error: unterminated string at {start}")),
                    Some('\\') => {
                        let escaped = sql[i + 1..].chars().next().ok_or_else(|| {
                            format!("Syntax error: unterminated string at {start}")
                        })?;
                        text.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        i += 1 + escaped.len_utf8();
                    }
                    Some('\'') if sql[i + 1..].starts_with('\'') => {
                        text.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        text.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            Tok::Str(text)
        } else if c == b'{' {
            let close = sql[i..]
                .find('}')
                .ok_or_else(|| format!("Syntax error: unclosed placeholder at {start}"))?;
            let name = sql[i + 1..i + close].trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("Syntax error: bad placeholder {{{name}}}"));
            }
            i += close + 1;
            Tok::Placeholder(name.to_string())
        } else if let Some(p) = PUNCTS.iter().find(|p| sql[i..].starts_with(**p)) {
            i += p.len();
            Tok::Punct(p)
        } else {
            let ch = sql[i..].chars().next().unwrap_or(' ');
            return Err(format!("Syntax error: unexpected {ch:?} at {start}"));
        };
        out.push(Token { tok, start, end: i });
    }
    Ok(out)
}

/// A value as written, before it is typed for what it is compared with.
enum Raw {
    Time(i64),
    Uuid((u64, u64)),
    Param(String),
    /// An integer literal (digits, maybe negative).
    Int(String),
    Float(String),
    Str(String),
}

struct Parser<'a> {
    sql: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    values: &'a Map<String, Value>,
    zone: Option<FixedOffset>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + ahead).map(|t| &t.tok)
    }

    fn next(&mut self) -> Option<Tok> {
        let tok = self.tokens.get(self.pos).map(|t| t.tok.clone());
        self.pos += 1;
        tok
    }

    fn here(&self) -> String {
        match self.tokens.get(self.pos) {
            Some(t) => format!("{:?} at {}", &self.sql[t.start..t.end], t.start),
            None => "the end".into(),
        }
    }

    fn unexpected<T>(&self, wanted: &str) -> Result<T, Refused> {
        Err(format!(
            "Syntax error: expected {wanted}, got {}",
            self.here()
        ))
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w.eq_ignore_ascii_case(word))
    }

    fn keyword(&mut self, word: &str) -> bool {
        let found = self.is_keyword(word);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), Refused> {
        if self.keyword(word) {
            Ok(())
        } else {
            self.unexpected(word)
        }
    }

    fn punct(&mut self, p: &str) -> bool {
        let found = matches!(self.peek(), Some(Tok::Punct(q)) if *q == p);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect_punct(&mut self, p: &str) -> Result<(), Refused> {
        if self.punct(p) {
            Ok(())
        } else {
            self.unexpected(&format!("'{p}'"))
        }
    }

    fn ident(&mut self) -> Result<String, Refused> {
        match self.peek() {
            Some(Tok::Ident(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => self.unexpected("a name"),
        }
    }

    fn select(&mut self) -> Result<Select, Refused> {
        self.expect_keyword("SELECT")?;
        let mut items = vec![self.item()?];
        while self.punct(",") {
            items.push(self.item()?);
        }
        self.expect_keyword("FROM")?;
        let table = self.ident()?;
        if table != "events" {
            return Err(format!("Unknown table `{table}`."));
        }
        let filter = if self.keyword("WHERE") {
            Some(self.or()?)
        } else {
            None
        };
        let mut group_by = Vec::new();
        if self.keyword("GROUP") {
            self.expect_keyword("BY")?;
            group_by.push(self.key(&items)?);
            while self.punct(",") {
                group_by.push(self.key(&items)?);
            }
        }
        let mut order_by = Vec::new();
        if self.keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                order_by.push(self.key(&items)?);
                if self.is_keyword("DESC") {
                    return Err("stand-in: only ascending ORDER BY is supported".into());
                }
                self.keyword("ASC");
                if !self.punct(",") {
                    break;
                }
            }
        }
        let limit = if self.keyword("LIMIT") {
            match self.next() {
                Some(Tok::Int(n)) => Some(n.parse::<usize>().unwrap_or(usize::MAX)),
                _ => return Err("LIMIT must be a number".into()),
            }
        } else {
            None
        };
        if self.peek().is_some() {
            return self.unexpected("the end of the query");
        }
        Ok(Select {
            items,
            filter,
            group_by,
            order_by,
            limit,
        })
    }

    fn item(&mut self) -> Result<Item, Refused> {
        let start = self
            .tokens
            .get(self.pos)
            .map_or(self.sql.len(), |t| t.start);
        let expr = self.expr()?;
        let end = self.tokens[self.pos - 1].end;
        let name = if self.keyword("AS") {
            self.ident()?
        } else {
            self.sql[start..end].to_string()
        };
        Ok(Item { expr, name })
    }

    /// A GROUP BY or ORDER BY key: an alias of a selected expression, or an expression.
    fn key(&mut self, items: &[Item]) -> Result<Expr, Refused> {
        if let Some(Tok::Ident(name)) = self.peek()
            && self.peek_at(1) != Some(&Tok::Punct("("))
            && let Some(item) = items.iter().find(|i| i.name == *name)
        {
            self.pos += 1;
            return Ok(item.expr);
        }
        self.expr()
    }

    /// A column, `cityHash64(...)`, `intDiv(...)` or `count()`.
    fn expr(&mut self) -> Result<Expr, Refused> {
        let name = self.ident()?;
        if !self.punct("(") {
            return Column::named(&name)
                .map(Expr::Column)
                .ok_or_else(|| format!("Unable to resolve field: {name}"));
        }
        let expr = match name.to_ascii_lowercase().as_str() {
            // `hashed` reads the closing parenthesis.
            "cityhash64" => return self.hashed(),
            "count" => {
                self.punct("*");
                Expr::Count
            }
            "sum" => {
                // Only `sum(count()) OVER ()`; the OVER's closing parenthesis is read below.
                let inner = self.ident()?;
                if !inner.eq_ignore_ascii_case("count") {
                    return Err(format!("stand-in: sum({inner}...) is not supported"));
                }
                self.expect_punct("(")?;
                self.expect_punct(")")?;
                self.expect_punct(")")?;
                let over = self.ident()?;
                if !over.eq_ignore_ascii_case("OVER") {
                    return Err("stand-in: only sum(count()) OVER () is supported".into());
                }
                self.expect_punct("(")?;
                Expr::Total
            }
            "intdiv" => {
                let inner = self.ident()?;
                self.expect_punct("(")?;
                let of =
                    match inner.to_ascii_lowercase().as_str() {
                        "tounixtimestamp64milli" => {
                            let column = self.ident()?;
                            if column != "timestamp" {
                                return Err(format!(
                                    "stand-in: toUnixTimestamp64Milli({column}) is not supported"
                                ));
                            }
                            self.expect_punct(")")?;
                            Expr::MillisDiv(0)
                        }
                        "cityhash64" => match self.hashed()? {
                            Expr::HashDistinctId => Expr::HashDiv(0),
                            _ => return Err(
                                "stand-in: only intDiv(cityHash64(distinct_id), n) is supported"
                                    .into(),
                            ),
                        },
                        other => {
                            return Err(format!(
                                "stand-in: intDiv({other}(...), n) is not supported"
                            ));
                        }
                    };
                self.expect_punct(",")?;
                let raw = self.raw()?;
                let divisor = self.unsigned(raw, "intDiv's divisor")?;
                if divisor == 0 {
                    return Err("Division by zero".into());
                }
                match of {
                    Expr::MillisDiv(_) => Expr::MillisDiv(divisor),
                    _ => Expr::HashDiv(divisor),
                }
            }
            _ => return Err(format!("Unsupported function call '{name}(...)'")),
        };
        self.expect_punct(")")?;
        Ok(expr)
    }

    /// The argument of `cityHash64(` and its `)`.
    fn hashed(&mut self) -> Result<Expr, Refused> {
        let column = self.ident()?;
        let expr = match column.as_str() {
            "distinct_id" => Expr::HashDistinctId,
            "uuid" => Expr::HashUuid,
            other if Column::named(other).is_some() => {
                return Err(format!("stand-in: cityHash64({other}) is not supported"));
            }
            other => return Err(format!("Unable to resolve field: {other}")),
        };
        self.expect_punct(")")?;
        Ok(expr)
    }

    fn or(&mut self) -> Result<Cond, Refused> {
        let mut parts = vec![self.and()?];
        while self.keyword("OR") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Cond::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Cond, Refused> {
        let mut parts = vec![self.primary()?];
        while self.keyword("AND") {
            parts.push(self.primary()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Cond::And(parts)
        })
    }

    fn primary(&mut self) -> Result<Cond, Refused> {
        if self.peek() == Some(&Tok::Punct("(")) {
            // `(a, b) > (x, y)` or a parenthesized condition.
            let at = self.pos;
            self.pos += 1;
            if let Ok(first) = self.field()
                && self.punct(",")
            {
                let mut fields = vec![first];
                loop {
                    fields.push(self.field()?);
                    if !self.punct(",") {
                        break;
                    }
                }
                self.expect_punct(")")?;
                let op = self.op()?;
                self.expect_punct("(")?;
                let mut consts = Vec::new();
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        self.expect_punct(",")?;
                    }
                    let raw = self.raw()?;
                    consts.push(self.typed(*field, raw)?);
                }
                self.expect_punct(")")?;
                return Ok(Cond::Tuple(fields, op, consts));
            }
            self.pos = at + 1;
            let inner = self.or()?;
            self.expect_punct(")")?;
            return Ok(inner);
        }
        let field = self.field()?;
        let negated = self.keyword("NOT");
        if negated || self.is_keyword("IN") {
            self.expect_keyword("IN")?;
            if field != Field::Event {
                return Err(format!(
                    "stand-in: {} IN (...) is not supported",
                    field.name()
                ));
            }
            self.expect_punct("(")?;
            let mut names = Vec::new();
            loop {
                let raw = self.raw()?;
                match self.typed(Field::Event, raw)? {
                    Const::Str(s) => names.push(s),
                    _ => unreachable!("events are strings"),
                }
                if !self.punct(",") {
                    break;
                }
            }
            self.expect_punct(")")?;
            return Ok(Cond::In { negated, names });
        }
        let op = self.op()?;
        let raw = self.raw()?;
        Ok(Cond::Cmp(field, op, self.typed(field, raw)?))
    }

    fn field(&mut self) -> Result<Field, Refused> {
        let name = self.ident()?;
        if self.punct("(") {
            if !name.eq_ignore_ascii_case("cityHash64") {
                return Err(format!(
                    "stand-in: conditions on {name}(...) are not supported"
                ));
            }
            return Ok(match self.hashed()? {
                Expr::HashDistinctId => Field::HashDistinctId,
                _ => Field::HashUuid,
            });
        }
        Ok(match name.as_str() {
            "timestamp" => Field::Timestamp,
            "created_at" => Field::CreatedAt,
            "event" => Field::Event,
            "uuid" => Field::Uuid,
            "distinct_id" => Field::DistinctId,
            other if Column::named(other).is_some() => {
                return Err(format!("stand-in: conditions on {other} are not supported"));
            }
            other => return Err(format!("Unable to resolve field: {other}")),
        })
    }

    fn op(&mut self) -> Result<Op, Refused> {
        let op = match self.peek() {
            Some(Tok::Punct("=" | "==")) => Op::Eq,
            Some(Tok::Punct("!=" | "<>")) => Op::Ne,
            Some(Tok::Punct("<")) => Op::Lt,
            Some(Tok::Punct("<=")) => Op::Le,
            Some(Tok::Punct(">")) => Op::Gt,
            Some(Tok::Punct(">=")) => Op::Ge,
            _ => return self.unexpected("a comparison"),
        };
        self.pos += 1;
        Ok(op)
    }

    /// A value as written: `toDateTime64(v, 6, 'UTC')`, `toUUID(v)`, `{p}`, a number or a
    /// string.
    fn raw(&mut self) -> Result<Raw, Refused> {
        match self.next() {
            Some(Tok::Placeholder(name)) => Ok(Raw::Param(name)),
            Some(Tok::Int(n)) => Ok(Raw::Int(n)),
            Some(Tok::Float(n)) => Ok(Raw::Float(n)),
            Some(Tok::Str(s)) => Ok(Raw::Str(s)),
            Some(Tok::Punct("-")) => match self.next() {
                Some(Tok::Int(n)) => Ok(Raw::Int(format!("-{n}"))),
                Some(Tok::Float(n)) => Ok(Raw::Float(format!("-{n}"))),
                _ => {
                    self.pos -= 1;
                    self.unexpected("a number")
                }
            },
            Some(Tok::Ident(f)) if f.eq_ignore_ascii_case("toDateTime64") => {
                self.expect_punct("(")?;
                let text = self.text("toDateTime64")?;
                self.expect_punct(",")?;
                if self.next() != Some(Tok::Int("6".into())) {
                    return Err("stand-in: toDateTime64 needs precision 6".into());
                }
                self.expect_punct(",")?;
                if self.next() != Some(Tok::Str("UTC".into())) {
                    return Err("stand-in: toDateTime64 needs the time zone 'UTC'".into());
                }
                self.expect_punct(")")?;
                Ok(Raw::Time(self.time(&text)?))
            }
            Some(Tok::Ident(f)) if f.eq_ignore_ascii_case("toUUID") => {
                self.expect_punct("(")?;
                let text = self.text("toUUID")?;
                self.expect_punct(")")?;
                Ok(Raw::Uuid(parse_uuid(&text)?))
            }
            _ => {
                self.pos -= 1;
                self.unexpected("a value")
            }
        }
    }

    /// A string argument: a literal or a placeholder holding a string.
    fn text(&mut self, function: &str) -> Result<String, Refused> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            Some(Tok::Placeholder(name)) => match self.param(&name)? {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("stand-in: {function} takes a string, not {other}")),
            },
            _ => {
                self.pos -= 1;
                self.unexpected("a string or a placeholder")
            }
        }
    }

    fn param(&self, name: &str) -> Result<&Value, Refused> {
        self.values
            .get(name)
            .ok_or_else(|| format!("Placeholder {{{name}}} is not available in this context"))
    }

    /// A `DateTime64` constant: read in the project's time zone unless the query asked for UTC.
    fn time(&self, text: &str) -> Result<i64, Refused> {
        let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
            .map_err(|_| format!("cannot parse {text:?} as DateTime64"))?;
        let t: DateTime<Utc> = match self.zone {
            None => naive.and_utc(),
            Some(tz) => naive
                .and_local_timezone(tz)
                .single()
                .expect("a fixed offset")
                .with_timezone(&Utc),
        };
        Ok(data::to_micros(t).timestamp_micros())
    }

    /// An unsigned 64-bit integer, as ClickHouse compares a UInt64 with: a JSON integer up to
    /// 2^64-1 or an integer literal. A float, a string or a negative number is refused (it
    /// would compare wrongly or not at all in ClickHouse).
    fn unsigned(&self, raw: Raw, what: &str) -> Result<u64, Refused> {
        let refuse = |shown: &dyn std::fmt::Display| {
            format!("stand-in: {what} is a UInt64 and takes an unsigned integer, not {shown}")
        };
        match raw {
            Raw::Int(n) => n.parse::<u64>().map_err(|_| refuse(&n)),
            Raw::Param(name) => {
                let v = self.param(&name)?;
                v.as_u64().ok_or_else(|| refuse(v))
            }
            Raw::Float(n) => Err(refuse(&n)),
            Raw::Str(s) => Err(refuse(&format!("'{s}'"))),
            Raw::Time(_) | Raw::Uuid(_) => Err(refuse(&"a time or a uuid")),
        }
    }

    /// `raw` as the type of `field`.
    fn typed(&self, field: Field, raw: Raw) -> Result<Const, Refused> {
        match field {
            Field::Timestamp | Field::CreatedAt => match raw {
                Raw::Time(t) => Ok(Const::Time(t)),
                _ => Err(format!(
                    "stand-in: compare {} with toDateTime64({{value}}, 6, 'UTC')",
                    field.name()
                )),
            },
            Field::Event | Field::DistinctId => match raw {
                Raw::Str(s) => Ok(Const::Str(s)),
                Raw::Param(name) => match self.param(&name)? {
                    Value::String(s) => Ok(Const::Str(s.clone())),
                    other => Err(format!(
                        "stand-in: {} is a String, not {other}",
                        field.name()
                    )),
                },
                _ => Err(format!("stand-in: {} is a String", field.name())),
            },
            Field::Uuid => match raw {
                Raw::Uuid(k) => Ok(Const::Uuid(k)),
                Raw::Str(s) => Ok(Const::Uuid(parse_uuid(&s)?)),
                Raw::Param(name) => match self.param(&name)? {
                    Value::String(s) => Ok(Const::Uuid(parse_uuid(s)?)),
                    other => Err(format!("stand-in: uuid is a UUID, not {other}")),
                },
                _ => Err("stand-in: compare uuid with toUUID({value})".into()),
            },
            Field::HashDistinctId | Field::HashUuid => {
                Ok(Const::UInt(self.unsigned(raw, field.name())?))
            }
        }
    }
}

fn parse_uuid(text: &str) -> Result<(u64, u64), Refused> {
    data::uuid_number(text)
        .map(|v| (v as u64, (v >> 64) as u64))
        .ok_or_else(|| format!("Cannot parse uuid {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn select(sql: &str, v: Value) -> Select {
        match parse(sql, &values(v), None) {
            Ok(Statement::Select(s)) => s,
            Ok(_) => panic!("not a select"),
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    fn refused(sql: &str, v: Value) -> String {
        match parse(sql, &values(v), None) {
            Ok(_) => panic!("{sql} parsed"),
            Err(e) => e,
        }
    }

    #[test]
    fn and_binds_tighter_than_or_and_tuples_are_told_from_parentheses() {
        let s = select(
            "SELECT uuid FROM events WHERE event = 'a' OR event = 'b' AND (cityHash64(uuid) > 1 OR (cityHash64(distinct_id), cityHash64(uuid)) >= (2, 3))",
            json!({}),
        );
        let Some(Cond::Or(parts)) = s.filter else {
            panic!("OR at the top")
        };
        assert_eq!(parts.len(), 2);
        let Cond::And(and) = &parts[1] else {
            panic!("AND inside")
        };
        let Cond::Or(inner) = &and[1] else { panic!() };
        assert!(matches!(inner[1], Cond::Tuple(ref f, Op::Ge, _) if f.len() == 2));
    }

    #[test]
    fn hash_bounds_are_unsigned_64_bit_integers() {
        let sql = "SELECT uuid FROM events WHERE cityHash64(distinct_id) < {h}";
        let s = select(sql, json!({"h": u64::MAX}));
        assert_eq!(
            s.filter,
            Some(Cond::Cmp(
                Field::HashDistinctId,
                Op::Lt,
                Const::UInt(u64::MAX)
            ))
        );
        for bad in [json!(1.8e19), json!("123"), json!(-1)] {
            let e = refused(sql, json!({ "h": bad }));
            assert!(e.contains("UInt64"), "{e}");
        }
        assert!(refused(sql, json!({})).contains("{h}"));
        let s = select(
            "SELECT uuid FROM events WHERE cityHash64(uuid) >= 18446744073709551615",
            json!({}),
        );
        assert!(matches!(
            s.filter,
            Some(Cond::Cmp(_, Op::Ge, Const::UInt(u64::MAX)))
        ));
        assert!(
            refused(
                "SELECT uuid FROM events WHERE cityHash64(uuid) >= 1.5",
                json!({})
            )
            .contains("UInt64")
        );
        assert!(
            refused(
                "SELECT uuid FROM events WHERE cityHash64(uuid) >= -1",
                json!({})
            )
            .contains("UInt64")
        );
    }

    #[test]
    fn the_products_page_query_parses() {
        let sql = "SELECT uuid, event, distinct_id, properties, elements_chain, timestamp, created_at, cityHash64(distinct_id), cityHash64(uuid) FROM events WHERE timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp < toDateTime64({end}, 6, 'UTC') AND created_at > toDateTime64({created_after}, 6, 'UTC') AND created_at <= toDateTime64({created_until}, 6, 'UTC') AND event IN ({event_0}, {event_1}) AND event NOT IN ({exclude_0}) AND (timestamp > toDateTime64({ts}, 6, 'UTC') OR (timestamp = toDateTime64({ts}, 6, 'UTC') AND uuid > toUUID({uuid}))) AND event >= {lo_event} AND (event > {lo_event} OR cityHash64(distinct_id) > {lo_hash} OR (cityHash64(distinct_id) = {lo_hash} AND cityHash64(uuid) > {lo_uuid_hash})) AND event <= {hi_event} AND (event < {hi_event} OR cityHash64(distinct_id) < {hi_hash} OR (cityHash64(distinct_id) = {hi_hash} AND cityHash64(uuid) < {hi_uuid_hash})) ORDER BY intDiv(toUnixTimestamp64Milli(timestamp), 86400000), event, cityHash64(distinct_id), cityHash64(uuid) LIMIT 50000";
        let t = "2024-03-01 00:00:00.000000";
        let s = select(
            sql,
            json!({"start": t, "end": t, "created_after": t, "created_until": t, "ts": t,
                   "uuid": "0190c6b5-9f0e-7c1a-8d2b-3f4e5a6b7c8d", "event_0": "a", "event_1": "b",
                   "exclude_0": "c", "lo_event": "a", "lo_hash": 1u64 << 63, "lo_uuid_hash": 0,
                   "hi_event": "b", "hi_hash": u64::MAX, "hi_uuid_hash": 5}),
        );
        assert_eq!(s.items.len(), 9);
        assert_eq!(s.items[7].name, "cityHash64(distinct_id)");
        assert_eq!(
            s.order_by,
            [
                Expr::MillisDiv(86_400_000),
                Expr::Column(Column::Event),
                Expr::HashDistinctId,
                Expr::HashUuid
            ]
        );
        assert_eq!(s.limit, Some(50_000));
        let Some(Cond::And(parts)) = s.filter else {
            panic!()
        };
        assert_eq!(parts.len(), 11);
    }

    #[test]
    fn the_products_plan_queries_parse_with_aliases() {
        let s = select(
            "SELECT intDiv(toUnixTimestamp64Milli(timestamp), 86400000) AS utc_day, event, intDiv(cityHash64(distinct_id), {bucket_width}) AS hash_bucket, count() AS n FROM events WHERE timestamp >= toDateTime64({start}, 6, 'UTC') GROUP BY utc_day, event, hash_bucket ORDER BY utc_day, event, hash_bucket LIMIT 10000",
            json!({"start": "2024-03-01 00:00:00", "bucket_width": 1u64 << 60}),
        );
        assert!(s.aggregates());
        assert_eq!(
            s.group_by,
            [
                Expr::MillisDiv(86_400_000),
                Expr::Column(Column::Event),
                Expr::HashDiv(1 << 60)
            ]
        );
        assert_eq!(s.order_by, s.group_by);
        assert_eq!(s.items[3].name, "n");
        let e = refused(
            "SELECT event, uuid, count() FROM events GROUP BY event",
            json!({}),
        );
        assert!(e.contains("not in GROUP BY"), "{e}");
    }

    #[test]
    fn offset_unknown_columns_and_odd_sql_are_refused() {
        assert_eq!(
            refused(
                "SELECT uuid FROM events ORDER BY timestamp LIMIT 1 OFFSET 5",
                json!({})
            ),
            OFFSET_REFUSED
        );
        assert_eq!(
            refused("SELECT nope FROM events", json!({})),
            "Unable to resolve field: nope"
        );
        refused("SELECT uuid FROM events WHERE 1 = 1", json!({}));
        refused("SELECT uuid FROM people", json!({}));
        refused("SELECT uuid FROM events ORDER BY timestamp DESC", json!({}));
        refused("SELECT uuid FROM events WHERE event = 'a", json!({}));
    }

    #[test]
    fn whitespace_is_free_and_the_special_queries_stay() {
        assert!(matches!(
            parse("  SELECT\n now() ", &Map::new(), None),
            Ok(Statement::Now)
        ));
        assert!(matches!(
            parse("SELECT 1", &Map::new(), None),
            Ok(Statement::One)
        ));
        let s = select(
            "SELECT\n  uuid ,timestamp\nFROM events\n  WHERE  timestamp>=toDateTime64({s},6,'UTC')  ORDER BY timestamp,uuid",
            json!({"s": "2024-03-01 00:00:00.5"}),
        );
        assert_eq!(s.items[1].name, "timestamp");
        assert!(matches!(
            s.filter,
            Some(Cond::Cmp(Field::Timestamp, Op::Ge, Const::Time(t))) if t == 1_709_251_200_500_000
        ));
    }

    #[test]
    fn times_are_read_in_the_project_zone_without_the_utc_modifier() {
        let sql = "SELECT uuid FROM events WHERE timestamp >= toDateTime64({s}, 6, 'UTC')";
        let v = values(json!({"s": "2024-03-01 05:00:00"}));
        let Ok(Statement::Select(s)) = parse(sql, &v, FixedOffset::east_opt(5 * 3600)) else {
            panic!()
        };
        assert!(matches!(
            s.filter,
            Some(Cond::Cmp(_, _, Const::Time(t))) if t == 1_709_251_200_000_000
        ));
    }
}
