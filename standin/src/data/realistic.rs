//! Web events shaped like what posthog-js captures (../shared/posthog-api.md, "What a real
//! PostHog event looks like"): 40-60 properties with PostHog's names, long URLs and user
//! agents, unicode, nulls, numbers, booleans, feature flags, `$set`/`$set_once` objects, and
//! `$autocapture` events with a long `elements_chain`. About as heavy as asked, reproducible
//! from a seed, and cheap enough to make a million of (one pass, no JSON values built).

use super::{StoredEvent, format_uuid, spread};
use chrono::{DateTime, Duration, Utc};
use fastrand::Rng;
use std::fmt::Write;

/// The average posted size of a posthog-js web event (the facts file: 1.5-2.5 KB).
pub const TYPICAL_EVENT_BYTES: usize = 2048;
/// Heavier events (more person properties and flags, longer URLs), for memory bounds.
pub const HEAVY_EVENT_BYTES: usize = 3072;
/// Below this average an event cannot carry posthog-js's properties: smaller events get
/// fewer of them (as server-side libraries send).
const LEAN_BELOW: usize = 1400;
const MIN_PROPERTIES: usize = 40;
const MIN_LEAN_PROPERTIES: usize = 10;
/// About what `$set` and `$set_once` take with their first two entries each.
const PERSON_OBJECTS_MIN_BYTES: usize = 150;
const MAX_PROPERTIES: usize = 60;
/// The team id used to size events as posted (its digits count).
const TEAM_ID: u64 = 4242;

/// `n` web events in `[start, end)` with the timestamps of [`super::synthetic_events`]
/// (ties, whole seconds, range edges), averaging about `avg_bytes` as posted (each drawn
/// between 0.75 and 1.25 times it, as far as posthog-js's properties allow), reproducible
/// from `seed`.
pub fn realistic_events(
    n: usize,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    seed: u64,
    avg_bytes: usize,
) -> Vec<StoredEvent> {
    // The smallest posthog-js event is not much lighter than the average one, so each event
    // aims below its drawn size by what those before it overshot: the average stays on size.
    let mut overshoot = 0i64;
    let bound = avg_bytes as i64 / 2;
    spread(n, start, end, seed, |rng, _, ts| {
        let drawn = (avg_bytes * rng.usize(75..=125) / 100) as i64;
        let target = (drawn - overshoot).max(0) as usize;
        let event = web_event(rng, ts, target, avg_bytes);
        let actual = event.posted_json(TEAM_ID).len() as i64;
        overshoot = (overshoot + actual - drawn).clamp(-bound, bound);
        event
    })
}

/// One event of about `target` bytes as posted (more when posthog-js's least is more).
fn web_event(rng: &mut Rng, ts: DateTime<Utc>, target: usize, avg_bytes: usize) -> StoredEvent {
    let name = pick(rng, &EVENT_NAMES);
    let visitor = Visitor::new(rng);
    let mut event = StoredEvent {
        uuid: format_uuid(rng.u128(..)),
        event: name.to_string(),
        distinct_id: visitor.distinct_id.clone(),
        properties: String::new(),
        elements_chain: if name == "$autocapture" {
            elements_chain(rng)
        } else {
            String::new()
        },
        timestamp: ts,
        created_at: ts + Duration::milliseconds(rng.i64(50..5000)),
    };
    let envelope = event.posted_json(TEAM_ID).len();
    let min = if avg_bytes >= LEAN_BELOW {
        MIN_PROPERTIES
    } else {
        MIN_LEAN_PROPERTIES
    };
    let mut props = Props::new(target.saturating_sub(envelope), min);
    web_properties(&mut props, rng, &event, &visitor);
    event.properties = props.finish();
    event
}

/// Who sent an event: the same kinds of ids and person data posthog-js keeps.
struct Visitor {
    distinct_id: String,
    identified: bool,
    email: Option<String>,
}

impl Visitor {
    fn new(rng: &mut Rng) -> Self {
        let n = rng.u32(0..50_000);
        let identified = rng.u8(0..3) == 0;
        Visitor {
            distinct_id: if identified {
                format!("user_{n}")
            } else {
                format_uuid(rng.u128(..))
            },
            identified,
            email: identified.then(|| {
                format!(
                    "{}.{n}@{}",
                    pick(rng, &FIRST_NAMES),
                    pick(rng, &MAIL_DOMAINS)
                )
            }),
        }
    }
}

/// Properties in posthog-js's order, until the event reaches its size: the library's own,
/// then flags, campaign and autocapture details, the team's, and `$set`/`$set_once` last,
/// grown to fill what is left.
fn web_properties(p: &mut Props, rng: &mut Rng, event: &StoredEvent, visitor: &Visitor) {
    let url = page_url(rng);
    browser_and_page(p, rng, &url);
    identity(p, rng, event, visitor);
    if event.event == "$autocapture" {
        p.text("$event_type", pick(rng, &["click", "submit", "change"]));
        p.raw("$ce_version", 1);
        p.text("$el_text", pick(rng, &LINK_TEXTS));
    }
    geoip(p, rng);
    flags(p, rng);
    if url.utm {
        p.text("utm_source", pick(rng, &UTM_SOURCES));
        p.text(
            "utm_medium",
            pick(rng, &["cpc", "email", "social", "referral"]),
        );
        p.text(
            "utm_campaign",
            &format!("spring_launch_{}", rng.u16(2020..2026)),
        );
    }
    // Room (two properties, a few entries each) is kept for the person objects.
    let (size, max) = (p.size, p.max);
    p.size = size.saturating_sub(PERSON_OBJECTS_MIN_BYTES);
    p.max = max - 2;
    team(p, rng, &url);
    (p.size, p.max) = (size, max);
    person_objects(p, rng, &url, visitor);
}

struct PageUrl {
    full: String,
    host: &'static str,
    path: &'static str,
    utm: bool,
}

/// A page URL; a third carry campaign parameters and a click id, as ad landing pages do.
fn page_url(rng: &mut Rng) -> PageUrl {
    let host = pick(rng, &HOSTS);
    let path = pick(rng, &PATHS);
    let utm = rng.u8(0..3) == 0;
    let mut full = format!("https://{host}{path}");
    if utm {
        let sep = if path.contains('?') { '&' } else { '?' };
        let len = rng.usize(40..90);
        let gclid = token(rng, len);
        let _ = write!(
            full,
            "{sep}utm_source=google&utm_medium=cpc&utm_campaign=spring_launch&gclid={gclid}"
        );
    }
    PageUrl {
        full,
        host,
        path,
        utm,
    }
}

fn browser_and_page(p: &mut Props, rng: &mut Rng, url: &PageUrl) {
    let (os, os_version, browser, version, device, agent) = pick(rng, &CLIENTS);
    let (width, height) = pick(rng, &SCREENS);
    p.text("$os", os);
    p.text("$os_version", os_version);
    p.text("$browser", browser);
    p.raw("$browser_version", version);
    p.text("$device_type", device);
    p.text("$current_url", &url.full);
    p.text("$host", url.host);
    p.text("$pathname", url.path.split('?').next().unwrap_or("/"));
    p.text("$raw_user_agent", agent);
    p.text("$browser_language", pick(rng, &LANGUAGES));
    p.raw("$screen_height", height);
    p.raw("$screen_width", width);
    p.raw("$viewport_height", height - rng.u32(60..200));
    p.raw("$viewport_width", width - rng.u32(0..20));
    p.text("$lib", "web");
    p.text(
        "$lib_version",
        pick(rng, &["1.130.2", "1.139.0", "1.160.3"]),
    );
    p.text("$insert_id", &token(rng, 16));
}

fn identity(p: &mut Props, rng: &mut Rng, event: &StoredEvent, visitor: &Visitor) {
    let ts = event.timestamp;
    p.raw(
        "$time",
        format_args!("{}.{:03}", ts.timestamp(), ts.timestamp_subsec_millis()),
    );
    p.text("$device_id", &format_uuid(rng.u128(..)));
    match visitor.identified {
        true => p.text("$user_id", &visitor.distinct_id),
        false => p.raw("$user_id", "null"),
    }
    let (referrer, domain) = pick(rng, &REFERRERS);
    p.text("$referrer", referrer);
    p.text("$referring_domain", domain);
    let (initial, initial_domain) = pick(rng, &REFERRERS);
    p.text("$initial_referrer", initial);
    p.text("$initial_referring_domain", initial_domain);
    p.text("token", "phc_xWq9Lk2Rt7Vb3Nm5Hj8Gf4Ds6Aa1Zc0Yx9Ew2Qr3Tu");
    p.text("$session_id", &format_uuid(rng.u128(..)));
    p.text("$window_id", &format_uuid(rng.u128(..)));
    p.text("$pageview_id", &format_uuid(rng.u128(..)));
    p.raw("$is_identified", visitor.identified);
    p.raw("$process_person_profile", visitor.identified || rng.bool());
    p.text(
        "$ip",
        &format!(
            "{}.{}.{}.{}",
            rng.u8(1..224),
            rng.u8(..),
            rng.u8(..),
            rng.u8(1..255)
        ),
    );
    let sent = ts + Duration::milliseconds(rng.i64(5..900));
    p.text(
        "$sent_at",
        &sent.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    );
}

fn geoip(p: &mut Props, rng: &mut Rng) {
    let g = pick(rng, &PLACES);
    p.text("$geoip_city_name", g.city);
    p.text("$geoip_country_name", g.country);
    p.text("$geoip_country_code", g.country_code);
    p.text("$geoip_continent_code", g.continent);
    match g.postal {
        Some(code) => p.text("$geoip_postal_code", code),
        None => p.raw("$geoip_postal_code", "null"),
    }
    p.raw("$geoip_latitude", g.latitude);
    p.raw("$geoip_longitude", g.longitude);
    p.text("$geoip_time_zone", g.time_zone);
    p.text("$geoip_subdivision_1_code", g.subdivision);
    p.text("$timezone", g.time_zone);
    p.raw("$timezone_offset", g.offset_minutes);
}

/// `$active_feature_flags` and one `$feature/<flag>` per active flag (a variant or true).
fn flags(p: &mut Props, rng: &mut Rng) {
    let first = rng.usize(0..FLAGS.len());
    let count = rng.usize(2..7);
    let active: Vec<&str> = (0..count)
        .map(|k| FLAGS[(first + k) % FLAGS.len()])
        .collect();
    let list = serde_json::to_string(&active).expect("strings serialize");
    p.raw("$active_feature_flags", list);
    for flag in active {
        match rng.u8(0..3) {
            0 => p.text(&format!("$feature/{flag}"), pick(rng, &["control", "test"])),
            _ => p.raw(&format!("$feature/{flag}"), true),
        }
    }
}

/// The team's own properties and posthog-js's configuration echoes, while there is room.
fn team(p: &mut Props, rng: &mut Rng, url: &PageUrl) {
    p.text("title", pick(rng, &TITLES));
    p.raw(
        "plan",
        pick(rng, &["\"free\"", "\"pro\"", "\"enterprise\"", "null"]),
    );
    p.text("$session_entry_url", &url.full);
    p.text("$session_entry_pathname", url.path);
    p.text("$session_entry_host", url.host);
    p.text("$prev_pageview_pathname", pick(rng, &PATHS));
    p.raw(
        "$prev_pageview_duration",
        format_args!("{:.3}", rng.f64() * 300.0),
    );
    p.raw("$configured_session_timeout_ms", 1_800_000);
    p.text(
        "$recording_status",
        pick(rng, &["active", "buffering", "disabled"]),
    );
    p.raw(
        "$session_recording_canvas_recording",
        r#"{"enabled":false,"fps":null,"quality":null}"#,
    );
    p.raw("$console_log_recording_enabled_server_side", rng.bool());
    p.raw("$web_vitals_enabled_server_side", true);
    p.raw("$dead_clicks_enabled_server_side", false);
    p.raw("$replay_sample_rate", "null");
    p.raw(
        "$lib_rate_limit_remaining_tokens",
        format_args!("{:.2}", 90.0 + rng.f64() * 10.0),
    );
    p.raw("cart_value", format_args!("{:.2}", rng.f64() * 500.0));
    p.raw("item_count", rng.u32(0..12));
    p.raw("is_trial", rng.bool());
    p.text("org_id", &format_uuid(rng.u128(..)));
}

/// `$set` (the person's current properties) and `$set_once` (their first-touch ones),
/// holding as many entries as the event's size leaves room for.
fn person_objects(p: &mut Props, rng: &mut Rng, url: &PageUrl, visitor: &Visitor) {
    let (os, os_version, browser, _, device, agent) = pick(rng, &CLIENTS);
    let (referrer, referring_domain) = pick(rng, &REFERRERS);
    let landing = page_url(rng);
    let entries: [(&str, Value); 22] = [
        ("$os", Value::Text(os)),
        ("$os_version", Value::Text(os_version)),
        ("$browser", Value::Text(browser)),
        ("$device_type", Value::Text(device)),
        ("$current_url", Value::Text(&url.full)),
        ("$pathname", Value::Text(url.path)),
        (
            "email",
            visitor.email.as_deref().map_or(Value::Null, Value::Text),
        ),
        ("name", Value::Text(pick(rng, &FULL_NAMES))),
        ("$raw_user_agent", Value::Text(agent)),
        ("company", Value::Text(pick(rng, &COMPANIES))),
        ("$referrer", Value::Text(referrer)),
        ("$referring_domain", Value::Text(referring_domain)),
        ("$geoip_city_name", Value::Text(pick(rng, &PLACES).city)),
        ("seats", Value::Number(rng.u32(1..500) as f64)),
        ("newsletter", Value::Bool(rng.bool())),
        (
            "role",
            Value::Text(pick(rng, &["admin", "member", "owner"])),
        ),
        ("landing_page", Value::Text(&landing.full)),
        ("landing_host", Value::Text(landing.host)),
        ("utm_source", Value::Text(pick(rng, &UTM_SOURCES))),
        ("utm_campaign", Value::Null),
        ("$browser_language", Value::Text(pick(rng, &LANGUAGES))),
        ("title", Value::Text(pick(rng, &TITLES))),
    ];
    // Whatever room is left is split between the two objects, which every posthog-js event
    // carries, even one already at its size.
    let room = p.room();
    if p.min >= MIN_PROPERTIES {
        p.min = p.count + 2;
    }
    p.raw("$set", nested(&entries, "", room / 2));
    p.raw("$set_once", nested(&entries, "$initial_", room - room / 2));
}

/// An object of `entries` (keys prefixed with `prefix`), at least two, up to `room` bytes.
fn nested(entries: &[(&str, Value)], prefix: &str, room: usize) -> String {
    let mut obj = Props::new(room, 2);
    for (key, value) in entries {
        // `$initial_os` for `$os`, `$initial_email` for `email`.
        let key = match prefix {
            "" => key.to_string(),
            _ => format!("{prefix}{}", key.trim_start_matches('$')),
        };
        match value {
            Value::Text(s) => obj.text(&key, s),
            Value::Number(n) => obj.raw(&key, n),
            Value::Bool(b) => obj.raw(&key, b),
            Value::Null => obj.raw(&key, "null"),
        }
    }
    obj.finish()
}

enum Value<'a> {
    Text(&'a str),
    Number(f64),
    Bool(bool),
    Null,
}

/// A JSON object written in one pass. Once it reaches its size (and holds at least `min`
/// properties), further properties are left out; it never holds more than `max`.
struct Props {
    out: String,
    count: usize,
    size: usize,
    min: usize,
    max: usize,
}

impl Props {
    fn new(size: usize, min: usize) -> Self {
        Props {
            out: String::with_capacity(size + 256),
            count: 0,
            size,
            min,
            max: MAX_PROPERTIES,
        }
    }

    /// Whether there is room for another property.
    fn open(&self) -> bool {
        self.count < self.max && (self.count < self.min || self.out.len() + 1 < self.size)
    }

    /// Bytes left before the object reaches its size.
    fn room(&self) -> usize {
        self.size.saturating_sub(self.out.len() + 1)
    }

    fn key(&mut self, key: &str) -> bool {
        if !self.open() {
            return false;
        }
        self.out.push(if self.count == 0 { '{' } else { ',' });
        push_json_string(&mut self.out, key);
        self.out.push(':');
        self.count += 1;
        true
    }

    fn text(&mut self, key: &str, value: &str) {
        if self.key(key) {
            push_json_string(&mut self.out, value);
        }
    }

    /// A value already in JSON (a number, `true`, `null`, an array or object's text).
    fn raw(&mut self, key: &str, json: impl std::fmt::Display) {
        if self.key(key) {
            let _ = write!(self.out, "{json}");
        }
    }

    fn finish(mut self) -> String {
        if self.count == 0 {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

/// `value` as a JSON string, escaped as serde_json does (non-ASCII stays UTF-8).
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn pick<T: Copy>(rng: &mut Rng, list: &[T]) -> T {
    list[rng.usize(0..list.len())]
}

/// `len` random letters and digits (click ids, insert ids).
fn token(rng: &mut Rng, len: usize) -> String {
    (0..len).map(|_| rng.alphanumeric()).collect()
}

/// Autocapture's chain of the clicked element and its ancestors, as posthog-js writes it.
fn elements_chain(rng: &mut Rng) -> String {
    let (tag, text, href) = pick(rng, &CLICKED);
    let mut chain = format!(
        r#"{tag}.btn.btn-primary.cta:attr__class="btn btn-primary cta"attr__data-attr="{}"attr__href="{href}"href="{href}"nth-child="{}"nth-of-type="1"text="{text}""#,
        token(rng, 12),
        rng.u8(1..6)
    );
    for ancestor in ANCESTORS.iter().take(rng.usize(4..ANCESTORS.len())) {
        let classes = ancestor
            .split_once('.')
            .map_or("", |(_, c)| c)
            .replace('.', " ");
        let _ = write!(
            chain,
            r#";{ancestor}:attr__class="{classes}"nth-child="{}"nth-of-type="{}""#,
            rng.u8(1..9),
            rng.u8(1..4)
        );
    }
    chain
}

const EVENT_NAMES: [&str; 20] = [
    "$pageview",
    "$pageview",
    "$pageview",
    "$pageview",
    "$pageview",
    "$pageview",
    "$pageview",
    "$autocapture",
    "$autocapture",
    "$autocapture",
    "$autocapture",
    "$autocapture",
    "$pageleave",
    "$pageleave",
    "$web_vitals",
    "$identify",
    "$rageclick",
    "signup",
    "checkout started",
    "purchase",
];

/// `(os, os version, browser, browser version, device type, user agent)`.
type Client = (
    &'static str,
    &'static str,
    &'static str,
    f64,
    &'static str,
    &'static str,
);

const CLIENTS: [Client; 6] = [
    (
        "Mac OS X",
        "10.15.7",
        "Chrome",
        124.0,
        "Desktop",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    ),
    (
        "Windows",
        "10.0",
        "Microsoft Edge",
        124.0,
        "Desktop",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
    ),
    (
        "iOS",
        "17.4.1",
        "Mobile Safari",
        17.4,
        "Mobile",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
    ),
    (
        "Android",
        "14",
        "Samsung Internet",
        24.0,
        "Mobile",
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    ),
    (
        "Linux",
        "",
        "Firefox",
        125.0,
        "Desktop",
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    ),
    (
        "Mac OS X",
        "14.4.1",
        "Safari",
        17.4,
        "Desktop",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
    ),
];

const SCREENS: [(u32, u32); 6] = [
    (1920, 1080),
    (2560, 1440),
    (1440, 900),
    (390, 844),
    (412, 915),
    (1366, 768),
];

const HOSTS: [&str; 4] = [
    "app.acme-analytics.com",
    "www.acme-analytics.com",
    "docs.acme-analytics.com",
    "shop.example.co.uk",
];

const PATHS: [&str; 8] = [
    "/",
    "/pricing",
    "/docs/getting-started/installation-and-first-steps",
    "/blog/2024/03/how-we-cut-our-cloud-bill-in-half-without-a-rewrite",
    "/product/3f9a-ergonomic-office-chair?color=graphite&size=L&ref=homepage-carousel",
    "/app/project/48213/dashboard/991/insights/ZkT3pQ9x?date_from=-30d&interval=day",
    "/checkout/cart",
    "/search?q=caf%C3%A9+m%C3%BCnchen&page=2",
];

const REFERRERS: [(&str, &str); 6] = [
    ("$direct", "$direct"),
    ("https://www.google.com/", "www.google.com"),
    (
        "https://news.ycombinator.com/item?id=39823412",
        "news.ycombinator.com",
    ),
    ("https://t.co/AbC123xyZ", "t.co"),
    (
        "https://www.bing.com/search?q=product+analytics+open+source&form=QBLH",
        "www.bing.com",
    ),
    ("https://duckduckgo.com/", "duckduckgo.com"),
];

const LANGUAGES: [&str; 6] = ["en-US", "de-DE", "pt-BR", "ja-JP", "fr-FR", "zh-CN"];

const UTM_SOURCES: [&str; 4] = ["google", "newsletter", "linkedin", "partner-site"];

#[derive(Clone, Copy)]
struct Place {
    city: &'static str,
    country: &'static str,
    country_code: &'static str,
    continent: &'static str,
    postal: Option<&'static str>,
    latitude: f64,
    longitude: f64,
    time_zone: &'static str,
    subdivision: &'static str,
    offset_minutes: i32,
}

const fn place(
    city: &'static str,
    (country, country_code, continent): (&'static str, &'static str, &'static str),
    postal: Option<&'static str>,
    (latitude, longitude): (f64, f64),
    (time_zone, subdivision, offset_minutes): (&'static str, &'static str, i32),
) -> Place {
    Place {
        city,
        country,
        country_code,
        continent,
        postal,
        latitude,
        longitude,
        time_zone,
        subdivision,
        offset_minutes,
    }
}

const PLACES: [Place; 7] = [
    place(
        "São Paulo",
        ("Brazil", "BR", "SA"),
        Some("01000-000"),
        (-23.5475, -46.6361),
        ("America/Sao_Paulo", "SP", 180),
    ),
    place(
        "Zürich",
        ("Switzerland", "CH", "EU"),
        Some("8001"),
        (47.3769, 8.5417),
        ("Europe/Zurich", "ZH", -60),
    ),
    place(
        "Kraków",
        ("Poland", "PL", "EU"),
        Some("30-001"),
        (50.0614, 19.9366),
        ("Europe/Warsaw", "12", -60),
    ),
    place(
        "New York",
        ("United States", "US", "NA"),
        Some("10001"),
        (40.7128, -74.006),
        ("America/New_York", "NY", 300),
    ),
    place(
        "Bengaluru",
        ("India", "IN", "AS"),
        None,
        (12.9716, 77.5946),
        ("Asia/Kolkata", "KA", -330),
    ),
    place(
        "Malmö",
        ("Sweden", "SE", "EU"),
        Some("211 20"),
        (55.605, 13.0038),
        ("Europe/Stockholm", "M", -60),
    ),
    place(
        "Tokyo",
        ("Japan", "JP", "AS"),
        Some("100-0001"),
        (35.6895, 139.6917),
        ("Asia/Tokyo", "13", -540),
    ),
];

const FLAGS: [&str; 8] = [
    "new-onboarding-flow",
    "billing-v2",
    "dark-mode",
    "experiment-pricing-page-2024-q2",
    "session-replay-canvas",
    "ai-assistant-beta",
    "homepage-hero-copy-test",
    "enable-web-vitals",
];

const TITLES: [&str; 6] = [
    "Pricing — Acme Analytics",
    "Acme Analytics | Product analytics for teams 🚀",
    "料金プラン | Acme Analytics",
    "Café-Suche in München – Ergebnisse (Seite 2)",
    "Dashboard \"Weekly growth\" · Acme",
    "Checkout – Acme Shop 🛒",
];

const LINK_TEXTS: [&str; 4] = [
    "Start free trial →",
    "Add to cart",
    "Sign up",
    "Read the docs",
];

const CLICKED: [(&str, &str, &str); 4] = [
    (
        "a",
        "Start free trial",
        "/signup?plan=pro&source=pricing-table",
    ),
    ("button", "Add to cart", "#"),
    (
        "a",
        "Read the docs",
        "/docs/getting-started/installation-and-first-steps",
    ),
    ("button", "Sign up", "/signup"),
];

const ANCESTORS: [&str; 8] = [
    "div.card-footer",
    "div.card.pricing-card",
    "div.col-md-4",
    "div.row.pricing-row",
    "section.pricing-section",
    "div.container-fluid",
    "main.page-content",
    "body",
];

const FIRST_NAMES: [&str; 5] = ["ana", "jürgen", "mei", "olusegun", "chloé"];
const MAIL_DOMAINS: [&str; 3] = ["example.com", "acme-corp.io", "mail.example.org"];
const FULL_NAMES: [&str; 5] = [
    "Ana Souza",
    "Jürgen Müller",
    "王美",
    "Olusegun Adébáyọ̀",
    "Chloé Dubois",
];
const COMPANIES: [&str; 4] = ["Acme Corp", "Globex GmbH", "Initech", "Umbrella Ltda."];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_events() {
        let start = "2024-01-01T00:00:00Z".parse().unwrap();
        let end = "2024-01-02T00:00:00Z".parse().unwrap();
        let a = realistic_events(50, start, end, 3, TYPICAL_EVENT_BYTES);
        let b = realistic_events(50, start, end, 3, TYPICAL_EVENT_BYTES);
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.properties == y.properties && x.uuid == y.uuid)
        );
    }
}
