//! The JSON log line format: one flat object per event, every key once, lists as arrays.
//!
//! tracing-subscriber's own JSON formatter writes every `?field` as a string (a list of dirs
//! becomes `"[\"/a\", \"/b\"]"`) and lets an event field named `target` or `level` sit beside
//! the line's own keys, giving a line with two `target`s. Log shippers then keep one at random.
//! This formatter keeps the same shape (`timestamp`, `level`, fields, `message`, `target`) but
//! renders a Debug value that is a JSON array as an array, and renames a field that would
//! collide with a line key to `field.<name>`.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Keys every line has; an event field with one of these names is renamed.
const LINE_KEYS: [&str; 3] = ["timestamp", "level", "target"];

/// See the module docs.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        event.record(&mut Fields(&mut line));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        let key = if LINE_KEYS.contains(&name) { format!("field.{name}") } else { name.to_string() };
        self.0.insert(key, value);
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // A Debug list of strings or numbers (`["/a", "/b"]`) is already JSON: keep it a list.
        if field.name() != "message"
            && text.starts_with('[')
            && let Ok(list @ Value::Array(_)) = serde_json::from_str::<Value>(&text)
        {
            return self.put(field, list);
        }
        self.put(field, Value::String(text));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

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
}
