//! The second stage of reading a manifest: every known key of the parsed document checked alone
//! and converted, then the cross-field rules, collecting every problem with its key path.
//! The readers for each kind of value (durations, sizes, lists, `env`, `publicRoutes`,
//! `instances`) are in [`super::values`].

use std::time::Duration;

use serde_json::{Map, Value};

use super::report::{Problem, describe, fmt_duration, unknown_key_warning};
use super::{AppConfig, KNOWN_KEYS, MAX_BODY_SIZE_CAP, Visibility};

/// Collects the problems and warnings of one manifest while it is converted.
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<String>,
}

impl Validator {
    pub(super) fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_string(), message: message.into() });
    }

    /// A scalar written as a string where Buntime's schema coerces it (`"true"`, `"500"`):
    /// accepted, with a warning that says how it was read.
    pub(super) fn coerced(&mut self, path: &str, got: &Value, read_as: &str) {
        self.warnings.push(format!("`{path}` is {}; read as {read_as} (write it without quotes)", describe(got)));
    }

    pub(super) fn expected(&mut self, path: &str, what: &str, got: &Value) {
        self.problem(path, format!("expected {what}, found {}", describe(got)));
    }

    pub(super) fn config(&mut self, map: &Map<String, Value>) -> AppConfig {
        let mut c = AppConfig::default();
        // `null` (a key written with no value) means "not set": the default applies.
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());

        if let Some(v) = get("entrypoint") {
            c.entrypoint = self.entrypoint(v);
        }
        let ttl = get("ttl").and_then(|v| self.duration("ttl", v));
        let idle = get("idleTimeout").and_then(|v| self.duration("idleTimeout", v));
        let timeout = get("timeout").and_then(|v| self.duration("timeout", v));
        // ttl 0 means ephemeral; idleTimeout and timeout must be above 0.
        if let Some(t) = ttl {
            c.ttl = t;
        }
        if let Some(d) = idle {
            if d.is_zero() {
                self.problem("idleTimeout", format!("must be greater than 0, found {}", describe(&map["idleTimeout"])));
            } else {
                c.idle_timeout = d;
            }
        }
        if let Some(d) = timeout {
            if d.is_zero() {
                self.problem("timeout", format!("must be greater than 0, found {}", describe(&map["timeout"])));
            } else {
                c.timeout = d;
            }
        }

        if let Some(v) = get("maxRequests") {
            c.max_requests = self.uint("maxRequests", v).unwrap_or(c.max_requests);
        }
        for (key, slot) in [
            ("lowMemory", &mut c.low_memory),
            ("autoInstall", &mut c.auto_install),
            ("injectBase", &mut c.inject_base),
            ("enabled", &mut c.enabled),
            ("autoMigrate", &mut c.auto_migrate),
            ("reuseInstances", &mut c.reuse_instances),
        ] {
            if let Some(v) = get(key) {
                match v {
                    Value::Bool(b) => *slot = *b,
                    // Buntime's schema coerces these strings; accepted so its manifests keep working.
                    Value::String(s) if s == "true" || s == "false" => {
                        *slot = s == "true";
                        self.coerced(key, v, s);
                    }
                    other => self.expected(key, "a boolean (true or false)", other),
                }
            }
        }
        if let Some(size) = get("maxBodySize").and_then(|v| self.size("maxBodySize", v)) {
            if size == 0 {
                // 0 would refuse every request with a body; Buntime's schema rejects it too.
                self.problem("maxBodySize", format!("must be greater than 0, found {}", describe(&map["maxBodySize"])));
            } else if size > MAX_BODY_SIZE_CAP {
                self.warnings.push(format!(
                        "`maxBodySize` {size} bytes is above the ceiling of {MAX_BODY_SIZE_CAP} bytes (100mb) and is capped to it"
                    ));
                c.max_body_size = MAX_BODY_SIZE_CAP;
            } else {
                c.max_body_size = size;
            }
        }
        if let Some(v) = get("env") {
            c.env = self.env(v);
        }
        if let Some(list) = get("envPrefix").and_then(|v| self.string_list("envPrefix", v, false)) {
            c.env_prefix = list;
        }
        if let Some(v) = get("publicRoutes") {
            c.public_routes = self.public_routes(v);
        }
        if let Some(v) = get("visibility") {
            match v.as_str() {
                Some("public") => c.visibility = Visibility::Public,
                Some("protected") => c.visibility = Visibility::Protected,
                Some("internal") => c.visibility = Visibility::Internal,
                _ => self.expected("visibility", "one of \"public\", \"protected\", \"internal\"", v),
            }
        }
        for (key, slot) in [("name", &mut c.name), ("version", &mut c.version)] {
            if let Some(v) = get(key) {
                match v {
                    Value::String(s) if !s.trim().is_empty() => *slot = Some(s.clone()),
                    Value::Number(n) => self.problem(
                        key,
                        format!("expected a non-empty string, found the number {n} (quote it: {key}: \"{n}\")"),
                    ),
                    other => self.expected(key, "a non-empty string", other),
                }
            }
        }
        if let Some(v) = get("command") {
            c.command = self.string_list("command", v, true);
            if c.command.as_ref().is_some_and(Vec::is_empty) {
                self.problem(
                    "command",
                    "expected a non-empty list such as [\"python3\", \"app.py\"], found an empty list",
                );
                c.command = None;
            }
        }
        if let Some(v) = get("healthPath") {
            match v {
                Value::String(s) if s.starts_with('/') => c.health_path = Some(s.clone()),
                other => self.expected("healthPath", "a path starting with `/` (such as \"/health\")", other),
            }
        }
        if let Some(i) = get("instances").and_then(|v| self.instances(v)) {
            c.instances = i;
        }
        if let Some(v) = get("maxMemory") {
            match self.size("maxMemory", v) {
                Some(0) => self.problem("maxMemory", "must be greater than 0, found 0"),
                Some(n) => c.max_memory = Some(n),
                None => {}
            }
        }

        if let Some(v) = get("sandbox") {
            let parsed = crate::sandbox_key::parse(v);
            for (path, message) in parsed.problems {
                self.problem(&path, message);
            }
            self.warnings.extend(parsed.warnings);
            c.sandbox_read = parsed.read;
        }

        if let Some(v) = get("proxy") {
            let (rules, problems) = crate::proxy_rules::parse(v);
            for (path, message) in problems {
                self.problem(&path, message);
            }
            c.proxy = rules;
        }
        if let Some(list) = get("allowedOutboundHosts").and_then(|v| self.string_list("allowedOutboundHosts", v, true))
        {
            let mut ok = true;
            for (i, pattern) in list.iter().enumerate() {
                if let Err(e) = crate::outbound::HostPattern::parse(pattern) {
                    self.problem(&format!("allowedOutboundHosts[{i}]"), e);
                    ok = false;
                }
            }
            if ok {
                c.allowed_outbound_hosts = list;
            }
        }

        // Cross-field rules (Buntime `libs/pool/config.ts`), only between keys that were valid
        // alone; an invalid key would otherwise be reported twice.
        let all_ok = |k: &str, parsed: Option<Duration>| get(k).is_none() || parsed.is_some_and(|d| !d.is_zero());
        let ttl_ok = get("ttl").is_none() || ttl.is_some();
        if ttl_ok && !c.ttl.is_zero() && all_ok("timeout", timeout) && all_ok("idleTimeout", idle) {
            if c.ttl < c.timeout {
                self.problem(
                    "ttl",
                    format!(
                        "must be at least `timeout` ({}) when ttl is above 0, found {}",
                        fmt_duration(c.timeout),
                        fmt_duration(c.ttl)
                    ),
                );
            }
            if c.idle_timeout < c.timeout {
                self.problem(
                    "idleTimeout",
                    format!(
                        "must be at least `timeout` ({}) when ttl is above 0, found {}",
                        fmt_duration(c.timeout),
                        fmt_duration(c.idle_timeout)
                    ),
                );
            }
            if c.idle_timeout > c.ttl && c.ttl >= c.timeout {
                self.warnings.push(format!(
                    "`idleTimeout` ({}) is longer than `ttl` ({}) and is clamped to it",
                    fmt_duration(c.idle_timeout),
                    fmt_duration(c.ttl)
                ));
                c.idle_timeout = c.ttl;
            }
        }

        for key in map.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                let w = unknown_key_warning("", key, &KNOWN_KEYS);
                self.warnings.push(w);
            }
        }
        c
    }
}
