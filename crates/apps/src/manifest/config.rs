//! The typed app manifest and Buntime's defaults: the contract every other part of marina
//! reads. How a file becomes one is the parent module's job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Every key of an app manifest, resolved to its typed value with Buntime's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// `entrypoint`: relative to the app dir; `None` = auto (index.html, index.ts, index.js, index.mjs).
    pub entrypoint: Option<String>,
    /// `ttl` (default 0 = a fresh worker per request). Sliding.
    pub ttl: Duration,
    /// `idleTimeout` (default 60 s): after this much inactivity `onIdle` runs; notification only.
    pub idle_timeout: Duration,
    /// `timeout` (default 30 s): per-request deadline, then 504 and the worker is replaced.
    pub timeout: Duration,
    /// `maxRequests` (default 1000): the worker is recycled after this many requests.
    pub max_requests: u64,
    /// `lowMemory` (default false): start the JS engine in its low-memory mode where it has one.
    pub low_memory: bool,
    /// `autoInstall` (default false): `bun install --frozen-lockfile --ignore-scripts` first.
    pub auto_install: bool,
    /// `maxBodySize` in bytes (default 10 MiB, capped at 100 MiB with a warning).
    pub max_body_size: u64,
    /// `env` merged with the app's `.env` (`.env` wins).
    pub env: BTreeMap<String, String>,
    /// `envPrefix` (default `["PUBLIC_", "VITE_"]`): env vars injected into HTML as `window.__env__`.
    pub env_prefix: Vec<String>,
    /// `injectBase` (default false): inject `<base href="{x-base}/">` into HTML responses.
    pub inject_base: bool,
    /// `publicRoutes`: paths (globs) auth plugins should skip, per method.
    pub public_routes: PublicRoutes,
    /// `visibility` (default public).
    pub visibility: Visibility,
    /// `enabled` (default true): a disabled app answers 404.
    pub enabled: bool,
    /// `name` (informational; used by uploads).
    pub name: Option<String>,
    /// `version` (informational; used by uploads).
    pub version: Option<String>,
    /// marina: `command`, e.g. `["python3", "app.py"]`: run as a process app listening on `PORT`.
    pub command: Option<Vec<String>>,
    /// marina: `healthPath`: a process app is ready when this path answers (else when the port accepts).
    pub health_path: Option<String>,
    /// marina: `instances` (default 1/1): processes per app version.
    pub instances: Instances,
    /// marina: `maxMemory` in bytes: restart a worker whose RSS goes above it (a wasm
    /// instance's linear memory may not grow past it).
    pub max_memory: Option<u64>,
    /// `proxy`: reverse-proxy rules matched against the path below the app (docs/proxy.md).
    pub proxy: Vec<marina_proxy::RuleSpec>,
    /// marina: `autoMigrate` (default true): apply the app's pending `migrations/` to its own
    /// database before its first worker starts.
    pub auto_migrate: bool,
    /// marina: `sandbox.read`: absolute paths the app's workers may read besides their app dir,
    /// runtime and system files (Landlock; see [`crate::sandbox_key`] and docs/security.md).
    pub sandbox_read: Vec<PathBuf>,
    /// `allowedOutboundHosts` (Spin's key; wasm apps): where outgoing HTTP may go, as
    /// `scheme://host[:port]` patterns (`*` for any scheme, host or port; `*.example.com`).
    /// Empty (the default) denies all outgoing HTTP.
    pub allowed_outbound_hosts: Vec<String>,
    /// marina: `reuseInstances` (default false; wasm apps): one instance serves request after
    /// request instead of a fresh one per request.
    pub reuse_instances: bool,
}

/// `instances: 2` or `instances: {min: 1, max: 4}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instances {
    /// Processes kept running while the app is warm.
    pub min: u32,
    /// Upper bound on processes for the app version.
    pub max: u32,
}

/// `publicRoutes`: an array (all methods) or a map of method → globs (`ALL` applies to every method).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicRoutes {
    /// Method (upper case, or `ALL`) → glob patterns relative to the app base.
    pub by_method: BTreeMap<String, Vec<String>>,
}

/// `visibility`: used by the deployments UI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Visibility {
    /// Listed and writable.
    #[default]
    Public,
    /// Listed, read-only.
    Protected,
    /// Hidden.
    Internal,
}

/// The default `maxBodySize`.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 10 * 1024 * 1024;
/// The ceiling on `maxBodySize`; larger values are capped with a warning.
pub const MAX_BODY_SIZE_CAP: u64 = 100 * 1024 * 1024;

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            entrypoint: None,
            ttl: Duration::ZERO,
            idle_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            max_requests: 1000,
            low_memory: false,
            auto_install: false,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            env: BTreeMap::new(),
            env_prefix: vec!["PUBLIC_".into(), "VITE_".into()],
            inject_base: false,
            public_routes: PublicRoutes::default(),
            visibility: Visibility::Public,
            enabled: true,
            name: None,
            version: None,
            command: None,
            health_path: None,
            instances: Instances { min: 1, max: 1 },
            max_memory: None,
            proxy: Vec::new(),
            auto_migrate: true,
            sandbox_read: Vec::new(),
            allowed_outbound_hosts: Vec::new(),
            reuse_instances: false,
        }
    }
}

/// Where a manifest was read from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSource(pub Option<PathBuf>);
