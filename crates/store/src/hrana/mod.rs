//! A Hrana-over-HTTP executor: libSQL's pipeline protocol (versions 2 and 3, JSON), as sqld
//! serves it at `/v2/pipeline` and `/v3/pipeline`, over one [`Store`] — an app's own database.
//! Unmodified libSQL clients (`@libsql/client`) use it.
//!
//! A stream is a session: its stored SQL (`store_sql`), and — only while it is inside a
//! transaction — a leased connection, so the transaction's statements run on one session
//! across HTTP requests. A stream outside a transaction holds no connection between requests.
//! Each response carries a fresh baton (the handle of the stream for the next request); a
//! baton is good for one request. A stream idle for [`STREAM_IDLE`] is dropped and its open
//! transaction rolled back, so an abandoned client cannot hold the database.
//!
//! On SQLite a stream inside a transaction holds the app database's one connection: other
//! requests to that app's database wait for it (up to [`LEASE_WAIT`], then `DATABASE_BUSY`).

pub mod pg;
pub mod proto;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::StatusCode;
use marina_core::Error;
use serde_json::{Value as Json, json};
use tokio::sync::Mutex;

use crate::conn::Conn;
use crate::store::{Store, rollback_in_background};
use crate::value::Value;
use proto::{Cond, PipelineReq, StmtResult, StreamError, StreamReq};

/// A stream unused this long is closed (sqld's default too).
pub const STREAM_IDLE: Duration = Duration::from_secs(10);
/// How long a request waits for the database held by another stream's transaction.
pub const LEASE_WAIT: Duration = Duration::from_secs(15);
/// Most open streams per database.
pub const MAX_STREAMS: usize = 256;
/// Most stored statements per stream.
pub const MAX_STORED_SQL: usize = 256;

/// The executor over one database.
pub struct Hrana {
    store: Store,
    streams: Arc<Mutex<HashMap<String, Stream>>>,
    reaper: tokio::task::AbortHandle,
}

impl Drop for Hrana {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

/// A connection leased by a stream; rolled back if dropped while inside a transaction
/// (a cancelled request, an expired stream).
struct Lease {
    conn: Option<Conn>,
    in_tx: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.in_tx
        {
            rollback_in_background(conn);
        }
    }
}

#[derive(Default)]
struct Stream {
    lease: Option<Lease>,
    sqls: HashMap<i64, String>,
    expires: Option<Instant>,
}

fn proto_error(message: String) -> Error {
    Error::bad_request("HRANA_PROTO", message)
}

impl Hrana {
    /// An executor over `store`.
    pub fn new(store: Store) -> Self {
        let streams: Arc<Mutex<HashMap<String, Stream>>> = Arc::default();
        let weak = Arc::downgrade(&streams);
        let reaper = tokio::spawn(reap(weak)).abort_handle();
        Self { store, streams, reaper }
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How many streams are open.
    pub async fn open_streams(&self) -> usize {
        self.streams.lock().await.len()
    }

    /// Run one pipeline request body; the response body. SQL errors are results inside it;
    /// only a malformed body or an unknown baton is an error.
    ///
    /// # Errors
    /// `HRANA_PROTO` (400) naming the bad field, `HRANA_STREAM_EXPIRED` (400) for an unknown or
    /// used baton, `HRANA_TOO_MANY_STREAMS` (503), `DATABASE_BUSY` (503) when another stream's
    /// transaction holds the database past [`LEASE_WAIT`].
    pub async fn pipeline(&self, body: &Json) -> Result<Json, Error> {
        let req: PipelineReq =
            serde_path_to_error::deserialize(body).map_err(|e| proto_error(format!("{}: {}", e.path(), e.inner())))?;
        let mut stream = match &req.baton {
            Some(b) => self.streams.lock().await.remove(b).ok_or_else(|| {
                Error::bad_request(
                    "HRANA_STREAM_EXPIRED",
                    "the baton names no open stream (it expired after 10 s idle, was closed, or was already used)",
                )
            })?,
            None => Stream::default(),
        };
        let mut results = Vec::with_capacity(req.requests.len());
        let mut closed = false;
        for r in &req.requests {
            if closed {
                results.push(
                    json!({ "type": "error", "error": { "message": "the stream is closed", "code": "STREAM_CLOSED" } }),
                );
                continue;
            }
            match self.one(&mut stream, r).await {
                Ok(Some(resp)) => results.push(json!({ "type": "ok", "response": resp })),
                Ok(None) => {
                    closed = true;
                    results.push(json!({ "type": "ok", "response": { "type": "close" } }));
                }
                Err(Outcome::Stream(e)) => results.push(json!({ "type": "error", "error": e.to_json() })),
                Err(Outcome::Fatal(e)) => return Err(e),
            }
        }
        // Outside a transaction the stream gives its connection back.
        if stream.lease.as_ref().is_some_and(|l| !l.in_tx) {
            stream.lease = None;
        }
        let baton = if closed {
            None
        } else {
            let mut streams = self.streams.lock().await;
            if streams.len() >= MAX_STREAMS {
                return Err(Error::unavailable(
                    "HRANA_TOO_MANY_STREAMS",
                    format!("this database has {MAX_STREAMS} open streams; close streams you no longer use"),
                ));
            }
            let baton = uuid::Uuid::new_v4().simple().to_string();
            stream.expires = Some(Instant::now() + STREAM_IDLE);
            streams.insert(baton.clone(), stream);
            Some(baton)
        };
        Ok(json!({ "baton": baton, "base_url": null, "results": results }))
    }

    async fn lease<'s>(&self, stream: &'s mut Stream) -> Result<&'s mut Lease, Outcome> {
        if stream.lease.is_none() {
            let conn = tokio::time::timeout(LEASE_WAIT, self.store.conn()).await.map_err(|_| {
                Outcome::Fatal(Error::unavailable(
                    "DATABASE_BUSY",
                    format!("another stream's transaction has held this database for over {} s", LEASE_WAIT.as_secs()),
                ))
            })?;
            stream.lease = Some(Lease { conn: Some(conn.map_err(Outcome::Fatal)?), in_tx: false });
        }
        Ok(stream.lease.as_mut().expect("leased above"))
    }

    fn sql_of(stream: &Stream, sql: &Option<String>, id: Option<i64>) -> Result<String, StreamError> {
        match (sql, id) {
            (Some(s), None) => Ok(s.clone()),
            (None, Some(id)) => stream
                .sqls
                .get(&id)
                .cloned()
                .ok_or_else(|| StreamError::new("SQL_NOT_FOUND", format!("no stored SQL with sql_id {id}"))),
            _ => Err(StreamError::new("SQL_INVALID", "give exactly one of sql and sql_id")),
        }
    }

    async fn one(&self, stream: &mut Stream, r: &StreamReq) -> Result<Option<Json>, Outcome> {
        match r {
            StreamReq::Close => {
                stream.lease = None;
                Ok(None)
            }
            StreamReq::StoreSql { sql_id, sql } => {
                if stream.sqls.len() >= MAX_STORED_SQL && !stream.sqls.contains_key(sql_id) {
                    return Err(StreamError::new(
                        "SQL_STORE_FULL",
                        format!("at most {MAX_STORED_SQL} stored statements per stream"),
                    )
                    .into());
                }
                stream.sqls.insert(*sql_id, sql.clone());
                Ok(Some(json!({ "type": "store_sql" })))
            }
            StreamReq::CloseSql { sql_id } => {
                stream.sqls.remove(sql_id);
                Ok(Some(json!({ "type": "close_sql" })))
            }
            StreamReq::Execute { stmt } => {
                let sql = Self::sql_of(stream, &stmt.sql, stmt.sql_id)?;
                let res = self.execute(stream, &sql, stmt).await?;
                Ok(Some(json!({ "type": "execute", "result": res.to_json() })))
            }
            StreamReq::Sequence { sql, sql_id } => {
                let sql = Self::sql_of(stream, sql, *sql_id)?;
                let lease = self.lease(stream).await?;
                let mut in_tx = lease.in_tx;
                match lease.conn.as_mut().expect("a lease holds its connection") {
                    c @ Conn::Sqlite(_) => {
                        let (r, auto) = c
                            .blocking("sequence", move |c| Ok((sqlite::sequence(c, &sql), c.is_autocommit())))
                            .await
                            .map_err(Outcome::Fatal)?;
                        lease.in_tx = !auto;
                        r?;
                    }
                    Conn::Postgres(client) => {
                        let r = pg::sequence(client, &sql, &mut in_tx).await;
                        lease.in_tx = in_tx;
                        r?;
                    }
                }
                Ok(Some(json!({ "type": "sequence" })))
            }
            StreamReq::Describe { sql, sql_id } => {
                let sql = Self::sql_of(stream, sql, *sql_id)?;
                let lease = self.lease(stream).await?;
                let d = match lease.conn.as_mut().expect("a lease holds its connection") {
                    c @ Conn::Sqlite(_) => c
                        .blocking("describe", move |c| Ok(sqlite::describe(c, &sql)))
                        .await
                        .map_err(Outcome::Fatal)??,
                    Conn::Postgres(client) => pg::describe(client, &sql).await?,
                };
                Ok(Some(json!({ "type": "describe", "result": d.to_json() })))
            }
            StreamReq::GetAutocommit => {
                let in_tx = self.lease(stream).await?.in_tx;
                Ok(Some(json!({ "type": "get_autocommit", "is_autocommit": !in_tx })))
            }
            StreamReq::Batch { batch } => {
                let mut outcomes: Vec<Option<bool>> = Vec::with_capacity(batch.steps.len());
                let mut step_results = Vec::with_capacity(batch.steps.len());
                let mut step_errors = Vec::with_capacity(batch.steps.len());
                for step in &batch.steps {
                    let run = match &step.condition {
                        None => true,
                        Some(c) => {
                            let in_tx = self.lease(stream).await?.in_tx;
                            eval(c, &outcomes, !in_tx)?
                        }
                    };
                    if !run {
                        outcomes.push(None);
                        step_results.push(Json::Null);
                        step_errors.push(Json::Null);
                        continue;
                    }
                    let res = match Self::sql_of(stream, &step.stmt.sql, step.stmt.sql_id) {
                        Ok(sql) => self.execute(stream, &sql, &step.stmt).await,
                        Err(e) => Err(Outcome::Stream(e)),
                    };
                    match res {
                        Ok(r) => {
                            outcomes.push(Some(true));
                            step_results.push(r.to_json());
                            step_errors.push(Json::Null);
                        }
                        Err(Outcome::Stream(e)) => {
                            outcomes.push(Some(false));
                            step_results.push(Json::Null);
                            step_errors.push(e.to_json());
                        }
                        Err(fatal) => return Err(fatal),
                    }
                }
                Ok(Some(
                    json!({ "type": "batch", "result": { "step_results": step_results, "step_errors": step_errors } }),
                ))
            }
        }
    }

    async fn execute(&self, stream: &mut Stream, sql: &str, stmt: &proto::Stmt) -> Result<StmtResult, Outcome> {
        let args = stmt.args.iter().map(proto::HValue::to_value).collect::<Result<Vec<Value>, _>>()?;
        let named = stmt
            .named_args
            .iter()
            .map(|n| Ok((n.name.clone(), n.value.to_value()?)))
            .collect::<Result<Vec<(String, Value)>, StreamError>>()?;
        let want_rows = stmt.want_rows;
        let lease = self.lease(stream).await?;
        match lease.conn.as_mut().expect("a lease holds its connection") {
            c @ Conn::Sqlite(_) => {
                let sql = sql.to_string();
                let (r, auto) = c
                    .blocking("execute", move |c| {
                        Ok((sqlite::execute(c, &sql, &args, &named, want_rows), c.is_autocommit()))
                    })
                    .await
                    .map_err(Outcome::Fatal)?;
                lease.in_tx = !auto;
                Ok(r?)
            }
            Conn::Postgres(client) => {
                let mut in_tx = lease.in_tx;
                let r = pg::execute(client, sql, &args, &named, want_rows, &mut in_tx).await;
                lease.in_tx = in_tx;
                Ok(r?)
            }
        }
    }
}

/// A request's failure: reported in its result, or (store unavailable, ...) for the whole
/// pipeline.
enum Outcome {
    Stream(StreamError),
    Fatal(Error),
}

impl From<StreamError> for Outcome {
    fn from(e: StreamError) -> Self {
        Outcome::Stream(e)
    }
}

fn eval(c: &Cond, outcomes: &[Option<bool>], autocommit: bool) -> Result<bool, StreamError> {
    let step = |i: usize| -> Result<Option<bool>, StreamError> {
        outcomes.get(i).copied().ok_or_else(|| {
            StreamError::new(
                "BATCH_COND_INVALID",
                format!("a condition refers to step {i}, which has not run before it"),
            )
        })
    };
    Ok(match c {
        Cond::Ok { step: i } => step(*i)? == Some(true),
        Cond::Error { step: i } => step(*i)? == Some(false),
        Cond::Not { cond } => !eval(cond, outcomes, autocommit)?,
        Cond::And { conds } => {
            let mut all = true;
            for c in conds {
                all &= eval(c, outcomes, autocommit)?;
            }
            all
        }
        Cond::Or { conds } => {
            let mut any = false;
            for c in conds {
                any |= eval(c, outcomes, autocommit)?;
            }
            any
        }
        Cond::IsAutocommit => autocommit,
    })
}

async fn reap(streams: Weak<Mutex<HashMap<String, Stream>>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(streams) = streams.upgrade() else { return };
        let now = Instant::now();
        // Dropping an expired stream drops its lease, which rolls back an open transaction.
        streams.lock().await.retain(|_, s| s.expires.is_none_or(|e| e > now));
    }
}

/// Buntime's pipeline shape (`/database/api/pipeline`): each result's `result` sits directly
/// under the item instead of under `response` (Hrana's).
pub fn to_buntime_shape(mut resp: Json) -> Json {
    if let Some(results) = resp.get_mut("results").and_then(Json::as_array_mut) {
        for r in results {
            if let Some(response) = r.get_mut("response").map(Json::take) {
                let result = response.get("result").cloned().unwrap_or(response);
                if let Some(o) = r.as_object_mut() {
                    o.remove("response");
                    o.insert("result".into(), result);
                }
            }
        }
    }
    resp
}

impl From<StreamError> for Error {
    fn from(e: StreamError) -> Self {
        Error::new(StatusCode::BAD_REQUEST, "SQL_ERROR", e.message).with_data(json!({ "sqlite_code": e.code }))
    }
}
