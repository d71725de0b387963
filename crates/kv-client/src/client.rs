//! The [`Client`] and its [`ClientBuilder`]: one pooled HTTP client, the routing view and the
//! write session, shared by all clones; every call runs as attempts under one deadline.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, StatusCode, Url};

use crate::api::{ClusterStatus, DeleteResult, JoinRequest, LeaveResult, ScanResult, WriteResult};
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::retry::{self, Backoff, Deadline};
use crate::routing::Router;
use crate::session::{Session, WriteTicket};
use crate::transport::{self, Failure, Reply};

/// Total time a call may take, retries included, unless the builder says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to one node never waits longer than this: a node that does not accept a TCP
/// connection in this time is treated as down and the next one is tried.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A value read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The value's bytes.
    pub data: Bytes,
    /// The key's version: it grows with every write of the key.
    pub version: u64,
    /// Time the key has left, for a key written with a time to live (in whole seconds, rounded
    /// up, as [`crate::api::HEADER_TTL_REMAINING`] says); `None` for a permanent key.
    pub ttl_remaining: Option<Duration>,
}

/// How [`Client::put_with`] writes: with a time to live, and under a precondition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    ttl: Option<Duration>,
    condition: Option<PutCondition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PutCondition {
    Absent,
    Version(u64),
}

impl PutOptions {
    /// The key expires `ttl` after the write (between [`crate::api::MIN_TTL`] and
    /// [`crate::api::MAX_TTL`]) unless refreshed ([`Client::refresh`]) or rewritten; without
    /// it the key is permanent (a write without a TTL makes a key with one permanent).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Only if the key does not exist (`If-None-Match: *`): how a lock or a leader lease is
    /// taken.
    pub fn if_absent(mut self) -> Self {
        self.condition = Some(PutCondition::Absent);
        self
    }

    /// Only if the key is at version `expected` (`If-Match`).
    pub fn if_version(mut self, expected: u64) -> Self {
        self.condition = Some(PutCondition::Version(expected));
        self
    }
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The partition's leader confirms its leadership before answering: the read sees every
    /// write acknowledged before it started.
    #[default]
    Linearizable,
    /// Any replica answers from what it has applied; it may miss recent writes.
    Stale,
}

/// What to scan: keys starting with a prefix, in ascending order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Most keys returned (the server's default when `None`; the server allows 1..=10000).
    pub limit: Option<usize>,
    /// Only keys after this one: pass the `next` of a truncated page to get the following one.
    pub after: Option<String>,
    /// Keys and versions only, without values.
    pub keys_only: bool,
    pub consistency: Consistency,
}

/// Configures a [`Client`]: the nodes to start from, the deadline of each call, whether to
/// route by the partition map, and the credentials: the CA to trust for `https://` endpoints,
/// a client certificate for mutual TLS, and a bearer token.
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = kv_client::Client::builder()
///     .endpoints(["https://node-1.example:7001"])
///     .ca_cert_pem(std::fs::read("certs/ca.crt")?)
///     .client_cert_pem(
///         std::fs::read("certs/client-app.crt")?,
///         std::fs::read("certs/client-app.key")?,
///     )
///     .token(std::env::var("KV_TOKEN")?)
///     .build()?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
///
/// Its `Debug` output never shows the key or the token.
///
/// The TLS settings can also come as one [`TlsConfig`]:
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = kv_client::TlsConfig::new().ca_cert_pem(std::fs::read("certs/ca.crt")?);
/// let client = kv_client::Client::builder()
///     .endpoints(["https://node-1.example:7001"])
///     .tls(tls)
///     .token("kv_app_token")
///     .build()?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    timeout: Duration,
    watch_idle_timeout: Duration,
    discovery: bool,
    credentials: Credentials,
}

/// TLS settings for [`ClientBuilder::tls`]: the CA certificates to trust for `https://`
/// endpoints and, for mutual TLS, a client certificate with its key. Its `Debug` output never
/// shows the key.
#[derive(Clone, Default)]
pub struct TlsConfig {
    ca_pem: Option<Vec<u8>>,
    client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsConfig {
    /// No CA of its own (the system's roots) and no client certificate.
    pub fn new() -> Self {
        TlsConfig::default()
    }

    /// As [`ClientBuilder::ca_cert_pem`].
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// As [`ClientBuilder::client_cert_pem`].
    pub fn client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_cert = Some((cert_pem.into(), key_pem.into()));
        self
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field("client_cert", &self.client_cert.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            endpoints: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            watch_idle_timeout: crate::watch::DEFAULT_WATCH_IDLE_TIMEOUT,
            discovery: true,
            credentials: Credentials::default(),
        }
    }
}

impl ClientBuilder {
    /// Nodes to start from: base URLs such as `http://127.0.0.1:7001` (`http://` is assumed
    /// when no scheme is given). Replaces any set before.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Total time one call may take, all retries included ([`DEFAULT_TIMEOUT`] by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a watch stream may stay silent (the server sends a keep-alive every few
    /// seconds when there is no change) before the watch takes the connection for dead and
    /// opens another ([`DEFAULT_WATCH_IDLE_TIMEOUT`](crate::DEFAULT_WATCH_IDLE_TIMEOUT) by
    /// default).
    pub fn watch_idle_timeout(mut self, timeout: Duration) -> Self {
        self.watch_idle_timeout = timeout;
        self
    }

    /// With `true` (the default) the client learns the partition map from the cluster and sends
    /// each key request straight to its partition's leader. With `false` it sends every request
    /// to the endpoints (the first reachable one) and lets the nodes forward: for nodes behind a
    /// load balancer or NAT, whose advertised addresses the client cannot reach.
    pub fn discovery(mut self, enabled: bool) -> Self {
        self.discovery = enabled;
        self
    }

    /// Trust only the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) for
    /// `https://` endpoints, instead of the system's roots: a node's certificate must be signed
    /// by one of them and name the host (or IP address) the client connects to. Replaces any
    /// set before.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.credentials.ca_pem = Some(pem.into());
        self
    }

    /// Present this certificate to nodes that ask for one (mutual TLS): `cert_pem` holds the
    /// certificate, leaf first, and `key_pem` its private key (PKCS#8, SEC1 or PKCS#1 PEM).
    /// Replaces any set before.
    pub fn client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.credentials.client_cert = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Both TLS settings at once (see [`TlsConfig`]): the same as
    /// [`ca_cert_pem`](Self::ca_cert_pem) and [`client_cert_pem`](Self::client_cert_pem) for
    /// what `tls` holds. Replaces those set before.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.credentials.ca_pem = tls.ca_pem;
        self.credentials.client_cert = tls.client_cert;
        self
    }

    /// Send `Authorization: Bearer <token>` with every request, including the client's own
    /// `GET /v1/cluster`. The token must be printable ASCII without spaces. Over `http://`
    /// endpoints it travels in the clear.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials.token = Some(token.into());
        self
    }

    /// A reqwest builder with this builder's credentials already applied (trusted CAs, client
    /// certificate, the token as a default header) and nothing else, for a program that sends
    /// its own HTTP requests to the nodes beside a [`Client`] (as `kv bench` does) and must
    /// present the same credentials. Fails as [`build`](Self::build) does on bad PEM or token.
    pub fn http_client_builder(&self) -> Result<reqwest::ClientBuilder> {
        self.credentials.apply(reqwest::Client::builder())
    }

    /// Builds the client. Fails with [`Error::InvalidInput`] on no endpoint, a malformed one, a
    /// zero timeout or watch idle timeout, or a token that cannot be sent, and with
    /// [`Error::Tls`] on a CA certificate, client certificate or key that is not valid PEM or a
    /// key that does not belong to its certificate. Does no I/O: the map is learned on the
    /// first request.
    pub fn build(self) -> Result<Client> {
        if self.endpoints.is_empty() {
            return Err(Error::InvalidInput("no endpoints given".into()));
        }
        if self.timeout.is_zero() || self.watch_idle_timeout.is_zero() {
            return Err(Error::InvalidInput("the timeout must be positive".into()));
        }
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e).map(Arc::from))
            .collect::<Result<Vec<Arc<str>>>>()?;
        let http = self
            .http_client_builder()?
            .connect_timeout(self.timeout.min(MAX_CONNECT_TIMEOUT))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("kv-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::InvalidInput(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                router: Router::new(endpoints, self.discovery),
                session: Session::new(),
                timeout: self.timeout,
                watch_idle_timeout: self.watch_idle_timeout,
            }),
        })
    }
}

/// Parses `http://host:port[/prefix]`, `https://...` or a bare `host:port` into a base URL
/// without a trailing slash.
fn normalize_endpoint(input: &str) -> Result<String> {
    let text = input.trim();
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let invalid = |why: &str| Error::InvalidInput(format!("invalid endpoint `{text}`: {why}"));
    let url = Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("no query or fragment allowed"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A handle to the cluster. Cheap to clone: clones share one connection pool, one routing view
/// and one write session (client id and sequence numbers).
///
/// Every call retries transient failures (no leader, connection refused or reset) with
/// exponential backoff and jitter, failing over between nodes, until it succeeds, meets an
/// answer that cannot change ([`Error::NotFound`], [`Error::PreconditionFailed`],
/// [`Error::InvalidInput`]) or its deadline passes. Writes carry the exactly-once headers, so a
/// retried write is applied at most once on a server that deduplicates.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) router: Router,
    session: Session,
    pub(crate) timeout: Duration,
    pub(crate) watch_idle_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.session.client_id())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// One logical request, sent as as many attempts as it takes.
struct Call<'a> {
    method: Method,
    /// Path and query, starting with `/`.
    path: String,
    /// The key, for routing to its partition.
    key: Option<&'a str>,
    /// True when only the partition's leader can serve it (writes, linearizable reads): then
    /// the node that served it is the leader.
    leader_only: bool,
    headers: HeaderMap,
    body: Bytes,
    write: Option<WriteTicket<'a>>,
    /// False for membership changes: a `503` is their answer, not a passing state.
    retry_unavailable: bool,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: String) -> Self {
        Call {
            method,
            path,
            key: None,
            leader_only: false,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            write: None,
            retry_unavailable: true,
        }
    }

    fn key(method: Method, key: &'a str, query: &str) -> Result<Self> {
        let mut call = Call::new(method, format!("/v1/kv/{}{query}", key_path(key)?));
        call.key = Some(key);
        call.leader_only = true;
        Ok(call)
    }
}

impl Client {
    /// A builder with no endpoints, [`DEFAULT_TIMEOUT`] and discovery on.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// This client's id in the exactly-once headers (random, non-zero, fixed for its lifetime).
    pub fn client_id(&self) -> u64 {
        self.inner.session.client_id()
    }

    /// Reads `key` linearizably: `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Value>> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Reads `key` from any replica, which may miss recent writes: `None` if it does not exist
    /// there.
    pub async fn get_stale(&self, key: &str) -> Result<Option<Value>> {
        self.get_with(key, Consistency::Stale).await
    }

    /// Reads `key` at the given consistency: `None` if it does not exist.
    pub async fn get_with(&self, key: &str, consistency: Consistency) -> Result<Option<Value>> {
        let query = match consistency {
            Consistency::Linearizable => "",
            Consistency::Stale => "?consistency=stale",
        };
        let mut call = Call::key(Method::GET, key, query)?;
        call.leader_only = consistency == Consistency::Linearizable;
        let reply = self.execute(call).await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            _ => Ok(Some(Value {
                version: reply.etag_version()?,
                ttl_remaining: reply
                    .headers
                    .get(crate::api::HEADER_TTL_REMAINING)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_secs),
                data: reply.body,
            })),
        }
    }

    /// Writes `value` under `key`; returns the key's new version.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        self.write_value(key, value.into(), None).await
    }

    /// Writes `value` under `key` as `options` say (a time to live, a precondition); returns
    /// the key's new version, or [`Error::PreconditionFailed`] with the current version.
    pub async fn put_with(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        options: &PutOptions,
    ) -> Result<u64> {
        let condition = options.condition.map(|c| match c {
            PutCondition::Absent => (IF_NONE_MATCH, HeaderValue::from_static("*")),
            PutCondition::Version(v) => (IF_MATCH, etag(v)),
        });
        let query = options
            .ttl
            .map(|ttl| format!("?ttl={}", crate::api::ttl_param(ttl)))
            .unwrap_or_default();
        self.write_value_at(key, &query, value.into(), condition)
            .await
    }

    /// Gives `key` a new time to live, `ttl` from now, keeping its value and version (a lock's
    /// or a lease's keep-alive); returns the version, or `None` if the key does not exist (or
    /// has expired: it cannot be brought back).
    pub async fn refresh(&self, key: &str, ttl: Duration) -> Result<Option<u64>> {
        let query = format!("/refresh?ttl={}", crate::api::ttl_param(ttl));
        let mut call = Call::key(Method::POST, key, &query)?;
        call.write = Some(self.inner.session.begin_write());
        let reply = self.execute(call).await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            _ => Ok(Some(reply.json::<crate::api::RefreshResult>()?.version)),
        }
    }

    /// Writes `value` under `key` only if the key does not exist (`If-None-Match: *`); returns
    /// the new version, or [`Error::PreconditionFailed`] with the existing version.
    pub async fn create(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        let condition = (IF_NONE_MATCH, HeaderValue::from_static("*"));
        self.write_value(key, value.into(), Some(condition)).await
    }

    /// Writes `value` under `key` only if the key is at version `expected` (`If-Match`);
    /// returns the new version, or [`Error::PreconditionFailed`] with the current version
    /// (`None`: the key is absent).
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: u64,
        value: impl Into<Bytes>,
    ) -> Result<u64> {
        let condition = (IF_MATCH, etag(expected));
        self.write_value(key, value.into(), Some(condition)).await
    }

    /// Deletes `key`; returns the version the key had when deleted, or `None` if it did not
    /// exist.
    pub async fn delete(&self, key: &str) -> Result<Option<u64>> {
        let mut call = Call::key(Method::DELETE, key, "")?;
        call.write = Some(self.inner.session.begin_write());
        let reply = self.execute(call).await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            _ => Ok(Some(reply.json::<DeleteResult>()?.version)),
        }
    }

    /// Deletes `key` only if it is at version `expected`; returns the version it had (that is,
    /// `expected`), or [`Error::PreconditionFailed`] with the current version (`None`: the key
    /// is absent).
    pub async fn compare_and_delete(&self, key: &str, expected: u64) -> Result<u64> {
        let mut call = Call::key(Method::DELETE, key, "")?;
        call.headers.insert(IF_MATCH, etag(expected));
        call.write = Some(self.inner.session.begin_write());
        let reply = self.execute(call).await?;
        match reply.status {
            StatusCode::NOT_FOUND => Err(Error::PreconditionFailed { current: None }),
            _ => Ok(reply.json::<DeleteResult>()?.version),
        }
    }

    /// Up to `limit` keys starting with `prefix`, in ascending order, across all partitions
    /// (linearizable). `truncated` says more keys match.
    pub async fn scan(&self, prefix: &str, limit: usize) -> Result<ScanResult> {
        let options = ScanOptions {
            limit: Some(limit),
            ..ScanOptions::default()
        };
        self.scan_with(prefix, &options).await
    }

    /// Keys starting with `prefix` as `options` say.
    pub async fn scan_with(&self, prefix: &str, options: &ScanOptions) -> Result<ScanResult> {
        let mut path = format!("/v1/kv?prefix={}", encode_component(prefix));
        if let Some(limit) = options.limit {
            path.push_str(&format!("&limit={limit}"));
        }
        if let Some(after) = &options.after {
            path.push_str(&format!("&start_after={}", encode_component(after)));
        }
        if options.keys_only {
            path.push_str("&keys_only=true");
        }
        if options.consistency == Consistency::Stale {
            path.push_str("&consistency=stale");
        }
        let reply = self.execute(Call::new(Method::GET, path)).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(reply.into_error());
        }
        reply.json()
    }

    /// Members, partitions, replica sets and each group's Raft state, as the answering node
    /// sees them. Also refreshes this client's routing view.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let call = Call::new(Method::GET, "/v1/cluster".to_owned());
        let reply = self.execute(call).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(reply.into_error());
        }
        let status: ClusterStatus = reply.json()?;
        self.inner.router.install(&status);
        Ok(status)
    }

    /// Asks the cluster to add node `id` at `addr` (`host:port`). A `503` (the cluster cannot
    /// take the change now) is returned at once as [`Error::Unavailable`], not retried.
    pub async fn join(&self, id: u64, addr: &str) -> Result<()> {
        let request = JoinRequest {
            id,
            addr: addr.to_owned(),
            // A node with a peer listener apart publishes its client address itself.
            client_addr: None,
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| Error::InvalidInput(format!("cannot encode the request: {e}")))?;
        let mut call = Call::new(Method::POST, "/v1/cluster/nodes".to_owned());
        call.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        call.body = Bytes::from(body);
        call.retry_unavailable = false;
        self.membership_change(call).await
    }

    /// Asks the cluster to remove node `id`: its partitions are re-replicated onto the other
    /// members, then it leaves every group. Without `force` the node must be up (it drains);
    /// `force` removes a dead node. Waits for the drain within this client's timeout: the
    /// answer's `status` is `removed` when done, `draining` (with the partitions left) when the
    /// time ran out first; call again to keep waiting. A `503` is returned at once as
    /// [`Error::Unavailable`], not retried.
    pub async fn leave(&self, id: u64, force: bool) -> Result<LeaveResult> {
        // Leave two seconds of the deadline for the last check and the answer's way back.
        let wait = self
            .inner
            .timeout
            .saturating_sub(Duration::from_secs(2))
            .as_millis();
        let mut call = Call::new(
            Method::DELETE,
            format!("/v1/cluster/nodes/{id}?force={force}&wait={wait}ms"),
        );
        call.retry_unavailable = false;
        let reply = self.execute(call).await?;
        if reply.status.is_success() {
            reply.json()
        } else {
            Err(reply.into_error())
        }
    }

    async fn membership_change(&self, call: Call<'_>) -> Result<()> {
        let reply = self.execute(call).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(reply.into_error())
        }
    }

    async fn write_value(
        &self,
        key: &str,
        value: Bytes,
        condition: Option<(reqwest::header::HeaderName, HeaderValue)>,
    ) -> Result<u64> {
        self.write_value_at(key, "", value, condition).await
    }

    async fn write_value_at(
        &self,
        key: &str,
        query: &str,
        value: Bytes,
        condition: Option<(reqwest::header::HeaderName, HeaderValue)>,
    ) -> Result<u64> {
        let mut call = Call::key(Method::PUT, key, query)?;
        call.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Some((name, value)) = condition {
            call.headers.insert(name, value);
        }
        call.body = value;
        call.write = Some(self.inner.session.begin_write());
        let reply = self.execute(call).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(reply.into_error());
        }
        Ok(reply.json::<WriteResult>()?.version)
    }

    /// Runs `call` to a definite answer: `Ok` with a `2xx` or `404` reply (which the caller
    /// reads), `Err` for any other answer or once the deadline passes. Transient failures are
    /// retried (same sequence number for writes), each time on the best node known.
    async fn execute(&self, call: Call<'_>) -> Result<Reply> {
        let inner = &*self.inner;
        let router = &inner.router;
        let deadline = Deadline::after(inner.timeout);
        let mut backoff = Backoff::new();
        let mut last = Error::Timeout;
        // Nodes that could not be reached during this call, for the final message.
        let mut unreachable: Vec<Arc<str>> = Vec::new();
        loop {
            if router.wants_map() {
                router.refresh(&inner.http, deadline).await;
            }
            let route = router.route(call.key.map(str::as_bytes));
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Err(last);
            }
            let mut headers = call.headers.clone();
            if let Some(write) = &call.write {
                write.add_headers(&mut headers);
            }
            if let Some(epoch) = route.epoch {
                headers.insert(crate::api::HEADER_EPOCH, HeaderValue::from(epoch));
            }
            let sent = transport::send(
                &inner.http,
                call.method.clone(),
                &route.target.base,
                &call.path,
                headers,
                call.body.clone(),
                remaining,
            )
            .await;
            match sent {
                Ok(reply) => {
                    router.answered(&route.target);
                    let status = reply.status;
                    if status.is_success()
                        || status == StatusCode::NOT_FOUND
                        || status == StatusCode::PRECONDITION_FAILED
                    {
                        // A write or linearizable read is only served by the leader.
                        if let (true, Some(p), Some(node)) =
                            (call.leader_only, route.partition, reply.served_by())
                        {
                            router.observe_leader(p, node);
                        }
                        if status == StatusCode::PRECONDITION_FAILED {
                            return Err(reply.into_error());
                        }
                        return Ok(reply);
                    }
                    if status == StatusCode::MISDIRECTED_REQUEST {
                        // Routed by an older map: the answer carries the new routes; go by
                        // them at once (if they are new to this client: else back off).
                        if let Ok(misdirected) = reply.json::<crate::api::Misdirected>() {
                            last = Error::Unavailable(misdirected.message.clone());
                            if router.install_routes(&misdirected.routes) {
                                continue;
                            }
                        }
                    }
                    if !(call.retry_unavailable && retry::is_retryable(status)) {
                        return Err(reply.into_error());
                    }
                    if let (Some(p), Some(leader)) = (route.partition, reply.error_body().leader) {
                        router.observe_leader(p, leader);
                    }
                    last = reply.into_error();
                }
                Err(Failure::Connect(message) | Failure::Lost(message)) => {
                    router.suspect(&route.target);
                    if !unreachable.contains(&route.target.base) {
                        unreachable.push(Arc::clone(&route.target.base));
                    }
                    last = Error::Transport(match unreachable.len() {
                        1 => message,
                        2 => format!("{message} (and 1 other node)"),
                        n => format!("{message} (and {} other nodes)", n - 1),
                    });
                }
                Err(Failure::TimedOut) => last = Error::Timeout,
                // Another attempt would meet the same certificates.
                Err(Failure::Tls(message)) => return Err(Error::Tls(message)),
            }
            if deadline.passed() {
                return Err(last);
            }
            router.refresh(&inner.http, deadline).await;
            if !backoff.wait(deadline).await {
                return Err(last);
            }
        }
    }
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::try_from(format!("\"{version}\"")).expect("a quoted number is a valid header")
}

/// `key` as one URL path segment: every byte but the unreserved ones percent-encoded, `/`
/// included, so no key is split, merged or normalized on the way (`a/../b` stays one key).
/// Only `.` and `..` cannot be sent: URLs remove such segments even when percent-encoded.
pub(crate) fn key_path(key: &str) -> Result<String> {
    if key == "." || key == ".." {
        return Err(Error::InvalidInput(format!(
            "the key {key:?} cannot be addressed in a URL"
        )));
    }
    Ok(encode_component(key))
}

/// Percent-encodes every byte except `A-Z a-z 0-9 - . _ ~`.
pub(crate) fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized_or_refused() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7001").unwrap(),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            normalize_endpoint(" https://kv.example/api/ ").unwrap(),
            "https://kv.example/api"
        );
        for bad in ["", "ftp://x", "http://x/?a=1", "http://[::1"] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builder_refuses_no_endpoint_and_zero_timeout() {
        assert!(matches!(
            Client::builder().build(),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            Client::builder()
                .endpoints(["127.0.0.1:1"])
                .timeout(Duration::ZERO)
                .build(),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            Client::builder()
                .endpoints(["127.0.0.1:1"])
                .watch_idle_timeout(Duration::ZERO)
                .build(),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn builder_refuses_bad_credentials_and_hides_them() {
        let builder = || Client::builder().endpoints(["https://127.0.0.1:1"]);
        assert!(matches!(
            builder().ca_cert_pem("junk").build(),
            Err(Error::Tls(_))
        ));
        assert!(matches!(
            builder().client_cert_pem("junk", "junk").build(),
            Err(Error::Tls(_))
        ));
        assert!(matches!(
            builder().token("two words").build(),
            Err(Error::InvalidInput(_))
        ));
        let with_secrets = builder()
            .client_cert_pem("cert", "PRIVATE-KEY-BYTES")
            .token("s3cret");
        let debug = format!("{with_secrets:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("PRIVATE"),
            "{debug}"
        );
        assert!(builder().token("s3cret").build().is_ok());
    }

    #[test]
    fn keys_become_one_path_segment() {
        assert_eq!(key_path("user/42").unwrap(), "user%2F42");
        assert_eq!(key_path("a b?c#d%").unwrap(), "a%20b%3Fc%23d%25");
        assert_eq!(key_path("ü").unwrap(), "%C3%BC");
        assert_eq!(key_path("a/../b").unwrap(), "a%2F..%2Fb");
        assert!(key_path("..").is_err());
        assert!(key_path(".").is_err());
        // The URL keeps the segment as it is.
        let url = Url::parse(&format!("http://h/v1/kv/{}", key_path("a/../b").unwrap())).unwrap();
        assert_eq!(url.path(), "/v1/kv/a%2F..%2Fb");
    }
}
