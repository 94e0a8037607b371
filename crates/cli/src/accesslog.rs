//! The access line, written without `tracing`. At `info` it is logged once per request, and as a
//! `tracing` event it cost ~13k instructions per request, half again what serving a static
//! 1 KiB file costs (~27k; callgrind, BENCHMARKS.md): the dispatch, the field visitor,
//! `core::fmt` and the ANSI-style wrappers for every piece, the calendar arithmetic of the
//! timestamp on every line. Here the line is built by byte copies into a reused thread-local
//! buffer, the timestamp's `YYYY-MM-DDTHH:MM:SS.` is computed once per second (nginx caches its
//! time string the same way), numbers go through `itoa`, and the line is appended to the shared
//! log buffer ([`crate::logwriter`]) under one short lock.
//!
//! The bytes are exactly those of the `tracing` formatters marina used before (tracing's
//! `compact` text, [`crate::logfmt::JsonLines`]); the tests below compare the two line for line.
//! The text layout on a terminal (ANSI colours) still goes through `tracing`: a person reads it.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use marina_server::completion::AccessLine;

/// Which layout, as `RUNTIME_LOG_FORMAT` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// tracing's `compact` format, without colours.
    Text,
    /// [`crate::logfmt::JsonLines`].
    Json,
}

thread_local! {
    /// The line being built, reused, and the second whose timestamp prefix it last wrote.
    static LINE: RefCell<(Vec<u8>, Clock)> = RefCell::new((Vec::with_capacity(512), Clock::default()));
}

/// The sink `marina serve` installs for the text layout.
pub fn write_text(line: &AccessLine<'_>) {
    write(line, Layout::Text);
}

/// The sink `marina serve` installs for the JSON layout.
pub fn write_json(line: &AccessLine<'_>) {
    write(line, Layout::Json);
}

fn write(line: &AccessLine<'_>, layout: Layout) {
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cell) => {
            let (buf, clock) = &mut *cell;
            buf.clear();
            format(buf, clock, SystemTime::now(), line, layout);
            crate::logwriter::append(buf);
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::with_capacity(512);
            }
        }
        // Not reachable (nothing here logs), but a line is never dropped for it.
        Err(_) => {
            let mut buf = Vec::new();
            format(&mut buf, &mut Clock::default(), SystemTime::now(), line, layout);
            crate::logwriter::append(&buf);
        }
    });
}

/// The line for `line` logged at `now`, newline included, appended to `buf`.
pub fn format(buf: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, line: &AccessLine<'_>, layout: Layout) {
    match layout {
        Layout::Text => {
            clock.timestamp(buf, now);
            buf.extend_from_slice(b"  INFO marina::access: request method=");
            buf.extend_from_slice(line.method.as_bytes());
            buf.extend_from_slice(b" path=");
            buf.extend_from_slice(line.path.as_bytes());
            buf.extend_from_slice(b" status=");
            buf.extend_from_slice(itoa::Buffer::new().format(line.status).as_bytes());
            buf.extend_from_slice(b" duration_ms=");
            millis(buf, line.micros, true);
            buf.extend_from_slice(b" request_id=");
            buf.extend_from_slice(line.request_id.as_bytes());
            buf.extend_from_slice(b" app=");
            app(buf, line);
            buf.extend_from_slice(b" plugin=");
            debug_str(buf, line.plugin);
            buf.push(b'\n');
        }
        Layout::Json => {
            buf.extend_from_slice(b"{\"timestamp\":\"");
            clock.timestamp(buf, now);
            buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
            json_str(buf, line.method);
            buf.extend_from_slice(b",\"path\":");
            json_str(buf, line.path);
            buf.extend_from_slice(b",\"status\":");
            buf.extend_from_slice(itoa::Buffer::new().format(line.status).as_bytes());
            buf.extend_from_slice(b",\"duration_ms\":");
            millis(buf, line.micros, false);
            buf.extend_from_slice(b",\"request_id\":");
            json_str(buf, line.request_id);
            buf.extend_from_slice(b",\"app\":");
            match line.app {
                Some((name, version)) => {
                    // One JSON string, escaped in two pieces (escaping is per character): the
                    // name's closing quote dropped, the version's opening quote becomes the `@`.
                    json_str(buf, name);
                    buf.pop();
                    let at = buf.len();
                    json_str(buf, version);
                    buf[at] = b'@';
                }
                None => buf.extend_from_slice(b"\"-\""),
            }
            buf.extend_from_slice(b",\"plugin\":");
            json_str(buf, line.plugin);
            buf.extend_from_slice(b",\"target\":\"marina::access\"}\n");
        }
    }
}

/// The bytes serde_json escapes in a string: a table, one load per byte (three comparisons per
/// byte were ~900 instructions per line).
const JSON_ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether `text` has a byte serde_json escapes ([`JSON_ESCAPED`]), eight bytes at a time: the
/// table's one load per byte was still ~125 instructions for each of a line's six strings, the
/// largest part of a JSON line. For a word `x`, `(x - 0x0101…01 * n) & !x & 0x8080…80` is
/// non-zero exactly when some byte of `x` is below `n` (n ≤ 0x80; a borrow can only mark bytes
/// above a byte that really is below `n`, so "any" is exact); a byte equal to `c` is a zero byte
/// of `x ^ 0x0101…01 * c`. UTF-8's bytes ≥ 0x80 are never marked (`!x` clears their high bit).
fn needs_escape(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let mut words = text.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        if below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| JSON_ESCAPED[usize::from(b)])
}

/// `text` as a JSON string, as [`crate::logfmt::JsonLines`] writes it (serde_json, which escapes
/// only `"`, `\` and control characters below U+0020): copied as is when it has none of these,
/// as paths, ids and names nearly always do.
fn json_str(buf: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        buf.push(b'"');
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, text);
    }
}

/// `name@version` or `-`, as the text layout's `%` field shows it.
fn app(buf: &mut Vec<u8>, line: &AccessLine<'_>) {
    match line.app {
        Some((name, version)) => {
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'@');
            buf.extend_from_slice(version.as_bytes());
        }
        None => buf.push(b'-'),
    }
}

/// `text` as Rust's `{:?}` shows a `&str` (tracing's text layout for string fields): quoted, and
/// as is when nothing in it needs escaping, which is what plugin names are.
fn debug_str(buf: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{text:?}");
    }
}

/// `micros / 1000` as the `f64` tracing logged (`as f64 / 1000.0`): Rust's `Display` in JSON
/// (`12`, `0.5`, `1.234`), `Debug` in text (`12.0`). Below 2^50 µs (35 years) the `f64` is the
/// one nearest to the 3-decimal value and its neighbours are less than 0.0002 away, so the
/// shortest form that reads back as it is that value: its digits, trailing zeros dropped.
/// Above, the float's own formatting (at 2^53 µs the nearest `f64`s are 0.002 apart).
fn millis(buf: &mut Vec<u8>, micros: u64, debug: bool) {
    if micros >= 1 << 50 {
        let value = micros as f64 / 1000.0;
        let _ = if debug { write!(buf, "{value:?}") } else { write!(buf, "{value}") };
        return;
    }
    buf.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    let mut frac = (micros % 1000) as u32;
    if frac == 0 {
        if debug {
            buf.extend_from_slice(b".0");
        }
        return;
    }
    let mut digits = 3;
    while frac.is_multiple_of(10) {
        frac /= 10;
        digits -= 1;
    }
    buf.push(b'.');
    let at = buf.len();
    buf.resize(at + digits, b'0');
    for i in (0..digits).rev() {
        buf[at + i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
}

/// The timestamp as tracing-subscriber's `SystemTime` writes it (RFC 3339, UTC, microseconds:
/// `2026-12-03T09:15:00.123456Z`), the part up to the seconds computed once per second.
#[derive(Default)]
pub struct Clock {
    /// The second `prefix` is for.
    second: Option<i64>,
    /// `YYYY-MM-DDTHH:MM:SS.`
    prefix: Vec<u8>,
}

impl Clock {
    fn timestamp(&mut self, buf: &mut Vec<u8>, now: SystemTime) {
        // As tracing-subscriber splits a time before the epoch: the second below, and the
        // nanoseconds up from it.
        let (second, nanos) = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                match d.subsec_nanos() {
                    0 => (-(d.as_secs() as i64), 0),
                    n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
                }
            }
        };
        if self.second != Some(second) {
            self.prefix.clear();
            seconds_prefix(&mut self.prefix, second);
            self.second = Some(second);
        }
        buf.extend_from_slice(&self.prefix);
        let mut micros = nanos / 1000;
        let at = buf.len();
        buf.extend_from_slice(b"000000Z");
        for i in (0..6).rev() {
            buf[at + i] = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` for `second` since the epoch (UTC), years as tracing-subscriber
/// writes them (`+10000`, `-0001`). Once per second, so `core::fmt` is fine here.
fn seconds_prefix(out: &mut Vec<u8>, second: i64) {
    let (days, in_day) = (second.div_euclid(86_400), second.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days: the proleptic Gregorian date of a day number.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = if year > 9999 {
        write!(out, "+{year}")
    } else if year < 0 {
        write!(out, "{year:05}")
    } else {
        write!(out, "{year:04}")
    };
    let _ = write!(out, "-{month:02}-{day:02}T{:02}:{:02}:{:02}.", in_day / 3600, in_day / 60 % 60, in_day % 60);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::logfmt::tests::Buf;

    /// The line `marina_server::completion` logs through `tracing` for `line`, in `layout`, as
    /// `marina serve` set tracing up before (compact text without colours, or JsonLines).
    fn via_tracing(line: &AccessLine<'_>, layout: Layout) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let builder = tracing_subscriber::fmt().with_writer(move || out.clone()).with_ansi(false);
        let emit = || marina_server::completion::log_via_tracing(line);
        match layout {
            Layout::Text => tracing::subscriber::with_default(builder.compact().finish(), emit),
            Layout::Json => {
                tracing::subscriber::with_default(builder.event_format(crate::logfmt::JsonLines).finish(), emit)
            }
        }
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn direct(line: &AccessLine<'_>, layout: Layout, now: SystemTime) -> String {
        let mut buf = Vec::new();
        format(&mut buf, &mut Clock::default(), now, line, layout);
        String::from_utf8(buf).unwrap()
    }

    /// The line without its timestamp, which the two take from the clock at different instants.
    fn untimed(line: &str, layout: Layout) -> String {
        match layout {
            Layout::Text => line.split_once(' ').unwrap().1.to_owned(),
            Layout::Json => {
                let end = line.find("\",\"level\"").unwrap();
                format!("{}{}", &line[..14], &line[end..])
            }
        }
    }

    fn timestamp(line: &str, layout: Layout) -> &str {
        match layout {
            Layout::Text => line.split_once(' ').unwrap().0,
            Layout::Json => &line[14..line.find("\",\"level\"").unwrap()],
        }
    }

    #[test]
    fn lines_are_byte_for_byte_those_tracing_wrote() {
        let paths = ["/site/f1k.bin", "/", "/a \"q\" \\ b/é😀/%20?", "/ctl\u{1}\u{7f}\u{9b}\t\n", ""];
        let plugins = ["-", "gateway", "odd \"name\"\\", "tab\there", "ünï"];
        let apps = [None, Some(("site", "latest")), Some(("t\"o\\do", "1.2.3-beta.1")), Some(("é", "\u{1}"))];
        let micros = [
            0,
            1,
            10,
            100,
            999,
            1000,
            1500,
            12_000,
            123_456,
            1_000_000,
            999_999_999,
            (1 << 50) - 1,
            (1 << 50) - 10,
            1 << 50,
            (1 << 53) - 1,
            (1 << 60) + 7,
        ];
        let mut checked = 0;
        for layout in [Layout::Text, Layout::Json] {
            for (i, path) in paths.iter().enumerate() {
                for (j, micros) in micros.iter().enumerate() {
                    let line = AccessLine {
                        method: ["GET", "POST", "PROPFIND"][(i + j) % 3],
                        path,
                        status: [200, 404, 499, 503, 100][j % 5],
                        micros: *micros,
                        request_id: ["0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "abc-123_X.y:z/+="][j % 2],
                        app: apps[(i + j) % apps.len()],
                        plugin: plugins[(i * 3 + j) % plugins.len()],
                    };
                    let before = SystemTime::now();
                    let want = via_tracing(&line, layout);
                    let after = SystemTime::now();
                    let got = direct(&line, layout, before);
                    assert_eq!(untimed(&got, layout), untimed(&want, layout), "{layout:?} {line:?}");
                    // The same format: tracing read the clock between `before` and `after`.
                    let (low, high) = (direct(&line, layout, before), direct(&line, layout, after));
                    let stamp = timestamp(&want, layout);
                    assert!(
                        timestamp(&low, layout) <= stamp && stamp <= timestamp(&high, layout),
                        "{stamp} {low} {high}"
                    );
                    assert_eq!(stamp.len(), timestamp(&low, layout).len());
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * paths.len() * micros.len());
    }

    #[test]
    fn the_word_check_finds_exactly_the_bytes_the_table_escapes() {
        // Every byte value at every position of strings up to three words long, among bytes that
        // need no escape (low, high and UTF-8 neighbours of the special ones), and clean strings.
        let fillers = [b'a', b' ', b'!', b'#', b'[', b']', b'~', 0x7f, 0x80, 0xc3, 0xff];
        for len in 0..=24 {
            for filler in fillers {
                let clean = vec![filler; len];
                assert!(!needs_escape(&clean), "{clean:?}");
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut text = clean.clone();
                        text[at] = byte;
                        let want = text.iter().any(|&b| JSON_ESCAPED[usize::from(b)]);
                        assert_eq!(needs_escape(&text), want, "byte {byte:#04x} at {at} of {text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn durations_read_as_the_float_tracing_logged() {
        // A sweep of small values, then a pseudo-random walk up to 2^53 µs.
        let mut values: Vec<u64> = (0..20_000).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for shift in 10..54 {
            for _ in 0..500 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                values.push(x % (1 << shift));
            }
        }
        let mut buf = Vec::new();
        for micros in values {
            let value = micros as f64 / 1000.0;
            for (debug, want) in [(true, format!("{value:?}")), (false, format!("{value}"))] {
                buf.clear();
                millis(&mut buf, micros, debug);
                assert_eq!(std::str::from_utf8(&buf).unwrap(), want, "{micros} µs");
            }
        }
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        let at = |secs: i64, nanos: u32| {
            let t = if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nanos)
            } else {
                UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::from_nanos(u64::from(nanos))
            };
            let mut buf = Vec::new();
            Clock::default().timestamp(&mut buf, t);
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 999), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_796_289_300, 1_000), "2026-12-03T09:15:00.000001Z");
        assert_eq!(at(1_796_289_359, 999_999_999), "2026-12-03T09:15:59.999999Z");
        assert_eq!(at(4_107_542_400, 123_456_789), "2100-03-01T00:00:00.123456Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        assert_eq!(at(253_402_300_800, 0), "+10000-01-01T00:00:00.000000Z");
        assert_eq!(at(-1, 500_000_000), "1969-12-31T23:59:59.500000Z");
        assert_eq!(at(-62_167_219_201, 0), "-0001-12-31T23:59:59.000000Z");
        // One clock, across a second boundary: the cached part follows the second.
        let mut clock = Clock::default();
        let mut buf = Vec::new();
        for secs in [10, 10, 11, 10] {
            buf.clear();
            clock.timestamp(&mut buf, UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(String::from_utf8_lossy(&buf), format!("1970-01-01T00:00:{secs}.000000Z"));
        }
    }
}
