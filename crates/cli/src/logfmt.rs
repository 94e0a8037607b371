//! The JSON log line format: one flat object per event, every key once, lists as arrays.
//!
//! tracing-subscriber's own JSON formatter writes every `?field` as a string (a list of dirs
//! becomes `"[\"/a\", \"/b\"]"`) and lets an event field named `target` or `level` sit beside
//! the line's own keys, giving a line with two `target`s. Log shippers then keep one at random.
//! This formatter keeps the same shape (`timestamp`, `level`, fields, `message`, `target`) but
//! renders a Debug value that is a JSON array as an array, and renames a field that would
//! collide with a line key to `field.<name>`.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Keys every line has; an event field with one of these names is renamed.
const LINE_KEYS: [&str; 3] = ["timestamp", "level", "target"];

/// See the module docs. Writes straight into tracing's line buffer (no map, no allocation for
/// string, number and `%` fields), since at `info` it runs once per request.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        // RFC 3339 needs no escaping.
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields { out: &mut writer, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        json_str(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// `text` as a JSON string (quoted and escaped by serde_json) on `out`.
fn json_str(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    serde_json::to_writer(&mut FmtIo(out), text).map_err(|_| fmt::Error)
}

/// `io::Write` over a `fmt::Write`: serde_json writes whole UTF-8 pieces (it splits strings
/// only at the ASCII characters it escapes).
struct FmtIo<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> std::io::Write for FmtIo<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
        self.0.write_str(text).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

thread_local! {
    /// Where `%`/`?` values are formatted before they are escaped, reused line after line.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Fields<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        let name = field.name();
        self.out.write_char(',')?;
        if LINE_KEYS.contains(&name) {
            self.out.write_str("\"field.")?;
            self.out.write_str(name)?;
            self.out.write_str("\":")
        } else {
            json_str(self.out, name)?;
            self.out.write_char(':')
        }
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.out));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |out| json_str(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, |out| if value.is_finite() { write!(out, "{value}") } else { out.write_str("null") });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let is_message = field.name() == "message";
        SCRATCH.with(|scratch| {
            let Ok(mut text) = scratch.try_borrow_mut() else {
                // Formatting a value logged an event on this thread: no scratch to share.
                let text = format!("{value:?}");
                return self.put(field, |out| json_str(out, &text));
            };
            text.clear();
            if write!(text, "{value:?}").is_err() {
                return;
            }
            // A Debug list of strings or numbers (`["/a", "/b"]`) is already JSON: keep it a list.
            if !is_message
                && text.starts_with('[')
                && let Ok(list @ Value::Array(_)) = serde_json::from_str::<Value>(&text)
            {
                return self.put(field, |out| write!(out, "{list}"));
            }
            self.put(field, |out| json_str(out, &text));
            if text.capacity() > 64 * 1024 {
                *text = String::new();
            }
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer tests hand to a `tracing` subscriber and read back (the access log's tests too).
    #[derive(Clone, Default)]
    pub(crate) struct Buf(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn keys_are_unique_and_lists_are_arrays() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt().event_format(JsonLines).with_writer(move || out.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            let dirs = vec![std::path::PathBuf::from("/srv/a"), std::path::PathBuf::from("/srv/b")];
            tracing::info!(target: "marina::test", worker_dirs = ?dirs, target = "/sock/x", n = 3, ok = true, "hello [x]");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["worker_dirs"], serde_json::json!(["/srv/a", "/srv/b"]));
        assert_eq!(line["target"], "marina::test");
        assert_eq!(line["field.target"], "/sock/x");
        assert_eq!((line["n"].as_u64(), line["ok"].as_bool()), (Some(3), Some(true)));
        assert_eq!(line["message"], "hello [x]");
        assert_eq!(line["level"], "INFO");
        // Every key once: the raw text has as many `"target"` keys as the parsed object.
        assert_eq!(text.matches("\"target\":").count(), 1, "{text}");
    }

    #[test]
    fn awkward_values_round_trip() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt().event_format(JsonLines).with_writer(move || out.clone()).finish();
        let nasty = "a \"quoted\" \\ back\nslash\t\u{1}\u{7f} é 😀";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "marina::test", s = nasty, d = %nasty, n = -3i64, f = 1.5, inf = f64::INFINITY, "msg {}", nasty);
            tracing::info!(target: "marina::test", "second");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let line: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["s"], nasty);
        assert_eq!(line["d"], nasty);
        assert_eq!(line["n"], -3);
        assert_eq!(line["f"], 1.5);
        assert_eq!(line["inf"], Value::Null);
        assert_eq!(line["message"], format!("msg {nasty}"));
        assert_eq!(serde_json::from_str::<Value>(lines[1]).unwrap()["message"], "second");
    }
}
