//! Who may do what. Two doors:
//!
//! - **Peers** (Raft RPCs, forwarded operations, member views and maps) prove who they are with
//!   a node certificate of the peer CA (`tls`), or, without TLS, with the cluster secret of
//!   `--peer-token-file` in `X-KV-Peer-Token`. Client credentials never open this door.
//! - **Clients** carry `Authorization: Bearer TOKEN`; `--auth-file` lists the tokens (by their
//!   SHA-256, never the token itself), each with a role and, optionally, the key prefixes it is
//!   limited to. Without an auth file every client may do everything.
//!
//! A peer that forwards a client's request names the client in it (`X-KV-Caller`, or the
//! forwarded operation's `caller`), and the node that serves it checks that client's rights
//! itself; only an authenticated peer may name a client, so a client cannot pass for another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kv_ring::NodeId;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::tls::Presented;

/// Header a node sends its peers the cluster secret in (when peers do not use TLS).
pub const HEADER_PEER_TOKEN: &str = "x-kv-peer-token";
/// Header in which a peer names the client it relays a request for.
pub const HEADER_CALLER: &str = "x-kv-caller";

/// A client's role; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads, scans, cluster status, readiness, metrics.
    Readonly,
    /// And writes and deletes.
    Readwrite,
    /// And joining and removing nodes.
    Admin,
}

impl Role {
    /// The name the auth file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Readonly => "readonly",
            Role::Readwrite => "readwrite",
            Role::Admin => "admin",
        }
    }
}

/// One token of the auth file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    /// `sha256:<64 hex digits>` of the token.
    hash: String,
    role: Role,
    /// Key prefixes the token may touch; absent: every key.
    prefixes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// What one client may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub role: Role,
    /// `None`: every key.
    pub prefixes: Option<Vec<Vec<u8>>>,
}

impl Grant {
    /// Whether the grant covers `key`.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.prefixes
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| key.starts_with(p)))
    }

    /// Whether some key with `prefix` may be covered (a scan of it is allowed, and filtered).
    pub fn overlaps(&self, prefix: &[u8]) -> bool {
        self.prefixes.as_ref().is_none_or(|ps| {
            ps.iter()
                .any(|p| p.starts_with(prefix) || prefix.starts_with(p))
        })
    }
}

/// The tokens of an auth file.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Arc<Grant>>,
    by_name: HashMap<String, Arc<Grant>>,
}

/// Why the auth or peer token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct AuthError {
    pub path: PathBuf,
    pub problem: String,
}

impl Tokens {
    /// Parse an auth file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, AuthError> {
        let bad = |problem: String| AuthError {
            path: path.to_path_buf(),
            problem,
        };
        let file: AuthFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut tokens = Tokens::default();
        for entry in file.token {
            let hex = entry.hash.strip_prefix("sha256:").ok_or_else(|| {
                bad(format!(
                    "token {:?}: hash must start with sha256:",
                    entry.name
                ))
            })?;
            let digest = decode_hex32(hex).ok_or_else(|| {
                bad(format!(
                    "token {:?}: hash must be 64 hex digits",
                    entry.name
                ))
            })?;
            let grant = Arc::new(Grant {
                name: entry.name.clone(),
                role: entry.role,
                prefixes: entry
                    .prefixes
                    .map(|ps| ps.into_iter().map(String::into_bytes).collect()),
            });
            if tokens
                .by_name
                .insert(entry.name.clone(), grant.clone())
                .is_some()
            {
                return Err(bad(format!("token name {:?} appears twice", entry.name)));
            }
            if tokens.by_hash.insert(digest, grant).is_some() {
                return Err(bad(format!(
                    "token {:?} has the hash of another",
                    entry.name
                )));
            }
        }
        Ok(tokens)
    }

    /// The grant of the client holding `token`.
    pub fn by_token(&self, token: &str) -> Option<Arc<Grant>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&digest).cloned()
    }

    /// The grant of the token named `name` (a peer relaying for it).
    pub fn by_name(&self, name: &str) -> Option<Arc<Grant>> {
        self.by_name.get(name).cloned()
    }
}

/// `sha256:<hex>` of `token`, as the auth file stores it.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::from("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether two secrets are equal, in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (a, b): ([u8; 32], [u8; 32]) = (Sha256::digest(a).into(), Sha256::digest(b).into());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The node's credentials and rules, reloaded on SIGHUP ([`Auth::reload`]).
pub struct Auth {
    auth_file: Option<PathBuf>,
    peer_token_file: Option<PathBuf>,
    /// Peers prove themselves with node certificates.
    peers_tls: bool,
    /// /ready, /metrics and /v1/cluster need no token.
    pub metrics_public: bool,
    tokens: RwLock<Option<Arc<Tokens>>>,
    peer_token: RwLock<Option<Vec<u8>>>,
}

impl Auth {
    /// Read the auth and peer token files the flags name.
    pub fn load(
        auth_file: Option<PathBuf>,
        peer_token_file: Option<PathBuf>,
        peers_tls: bool,
        metrics_public: bool,
    ) -> Result<Arc<Auth>, AuthError> {
        let auth = Auth {
            auth_file,
            peer_token_file,
            peers_tls,
            metrics_public,
            tokens: RwLock::new(None),
            peer_token: RwLock::new(None),
        };
        auth.reload()?;
        Ok(Arc::new(auth))
    }

    /// Read the files again; on any error the old ones stay in force.
    pub fn reload(&self) -> Result<(), AuthError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| AuthError {
                path: path.to_path_buf(),
                problem: e.to_string(),
            })
        };
        let tokens = match &self.auth_file {
            Some(path) => Some(Arc::new(Tokens::parse(&read(path)?, path)?)),
            None => None,
        };
        let peer_token = match &self.peer_token_file {
            Some(path) => {
                let secret = read(path)?.trim().as_bytes().to_vec();
                if secret.len() < 16 {
                    return Err(AuthError {
                        path: path.clone(),
                        problem: "the peer token must be at least 16 bytes".into(),
                    });
                }
                Some(secret)
            }
            None => None,
        };
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        *self.peer_token.write().unwrap_or_else(|p| p.into_inner()) = peer_token;
        Ok(())
    }

    /// The cluster secret this node sends its peers, if any.
    pub fn peer_token(&self) -> Option<Vec<u8>> {
        self.peer_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn tokens(&self) -> Option<Arc<Tokens>> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether client requests need tokens.
    pub fn tokens_required(&self) -> bool {
        self.auth_file.is_some()
    }

    /// The rights of the client a peer names in a forwarded operation.
    pub fn access_of(&self, caller: Option<&str>) -> Result<Access, ApiError> {
        let Some(tokens) = self.tokens() else {
            return Ok(Access::All);
        };
        let grant = caller
            .and_then(|name| tokens.by_name(name))
            .ok_or_else(|| forbidden("a forwarded operation must name a known client".into()))?;
        Ok(Access::Grant(grant))
    }

    /// Whether anything guards the peer routes.
    pub fn peers_guarded(&self) -> bool {
        self.peers_tls || self.peer_token_file.is_some()
    }
}

/// How a request's sender proved it is a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerProof {
    /// It did not.
    None,
    /// A node certificate of the peer CA, of a member.
    Member(NodeId),
    /// A node certificate of the peer CA, of a node that is not a member (a joining node).
    Stranger(NodeId),
    /// The cluster secret.
    Token,
    /// Peer routes are not guarded (no TLS, no peer token): anyone passes as a peer.
    Unguarded,
}

/// Who sent a request, as the `authenticate` guard of the API established it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: PeerProof,
    /// The client acting, by its token or named by a peer; `None` with no auth file too.
    pub client: Option<Arc<Grant>>,
    /// Whether client requests need tokens.
    tokens_required: bool,
    metrics_public: bool,
}

/// What an operation may touch, on a client's behalf.
#[derive(Debug, Clone)]
pub enum Access {
    /// Everything (no auth file).
    All,
    Grant(Arc<Grant>),
}

impl Access {
    /// Whether `key` may be touched.
    pub fn covers(&self, key: &[u8]) -> bool {
        match self {
            Access::All => true,
            Access::Grant(g) => g.covers(key),
        }
    }

    /// The name a forwarded operation carries, so the serving node checks the same rights.
    pub fn caller_name(&self) -> Option<String> {
        match self {
            Access::All => None,
            Access::Grant(g) => Some(g.name.clone()),
        }
    }

    /// Check `role` and the key prefixes for `key` (if any).
    pub fn require(&self, role: Role, key: Option<&[u8]>) -> Result<(), ApiError> {
        let Access::Grant(g) = self else {
            return Ok(());
        };
        if g.role < role {
            return Err(forbidden(format!(
                "token {:?} is {}; this needs {}",
                g.name,
                g.role.as_str(),
                role.as_str()
            )));
        }
        if let Some(key) = key {
            if !g.covers(key) {
                return Err(forbidden(format!(
                    "token {:?} may not touch key {:?}",
                    g.name,
                    String::from_utf8_lossy(key)
                )));
            }
        }
        Ok(())
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::Forbidden(message)
}

impl Caller {
    /// Whether the sender proved it is a member peer (or peers are unguarded).
    pub fn is_peer(&self) -> bool {
        matches!(
            self.peer,
            PeerProof::Member(_) | PeerProof::Token | PeerProof::Unguarded
        )
    }

    /// Refuse anything but a member peer: 401 without peer credentials, 403 with those of a
    /// node that is not a member.
    pub fn require_peer(&self) -> Result<(), ApiError> {
        match self.peer {
            PeerProof::Member(_) | PeerProof::Token | PeerProof::Unguarded => Ok(()),
            PeerProof::Stranger(n) => Err(forbidden(format!("node {n} is not a member"))),
            PeerProof::None => Err(ApiError::Unauthorized(
                "peer routes need peer credentials (a node certificate or the cluster secret)"
                    .into(),
            )),
        }
    }

    /// What the client may touch, requiring at least `role`: 401 without a token where
    /// tokens are required, 403 when the token's role is too weak.
    pub fn access(&self, role: Role) -> Result<Access, ApiError> {
        if !self.tokens_required {
            return Ok(Access::All);
        }
        let Some(grant) = &self.client else {
            return Err(ApiError::Unauthorized(
                "this needs a token: Authorization: Bearer TOKEN".into(),
            ));
        };
        let access = Access::Grant(grant.clone());
        access.require(role, None)?;
        Ok(access)
    }

    /// Status pages (/ready, /metrics, /v1/cluster): a token unless `--metrics-public`.
    pub fn may_read_status(&self) -> Result<(), ApiError> {
        if self.metrics_public || self.is_peer() && !matches!(self.peer, PeerProof::Unguarded) {
            return Ok(());
        }
        self.access(Role::Readonly).map(|_| ())
    }
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Some(t.trim()))
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer TOKEN`".into()))
}

impl Auth {
    /// Who sent a request that presented `presented` on its connection and `headers`;
    /// `member` says whether a node id is a member this node knows (every node id passes
    /// while this node joins and knows no members yet). A token that is given but unknown is
    /// refused (401); what each route needs is checked by the route.
    pub(crate) fn caller(
        &self,
        presented: &Presented,
        headers: &HeaderMap,
        member: impl Fn(NodeId) -> bool,
    ) -> Result<Caller, ApiError> {
        let auth = self;
        let peer = if auth.peers_tls {
            match presented.node {
                Some(n) if member(n) => PeerProof::Member(n),
                Some(n) => PeerProof::Stranger(n),
                None => PeerProof::None,
            }
        } else if let Some(secret) = auth.peer_token() {
            match headers.get(HEADER_PEER_TOKEN) {
                Some(sent) if same_secret(sent.as_bytes(), &secret) => PeerProof::Token,
                Some(_) => return Err(ApiError::Unauthorized("wrong peer token".into())),
                None => PeerProof::None,
            }
        } else {
            PeerProof::Unguarded
        };
        let tokens = auth.tokens();
        let mut client = None;
        if let Some(tokens) = &tokens {
            if let Some(token) = bearer(headers)? {
                client = Some(
                    tokens
                        .by_token(token)
                        .ok_or_else(|| ApiError::Unauthorized("unknown token".into()))?,
                );
            }
            let proven_peer = matches!(peer, PeerProof::Member(_) | PeerProof::Token);
            if let (true, Some(name)) = (proven_peer, headers.get(HEADER_CALLER)) {
                let name = name.to_str().unwrap_or_default();
                client = tokens.by_name(name);
            }
        }
        Ok(Caller {
            peer,
            client,
            tokens_required: auth.tokens_required(),
            metrics_public: auth.metrics_public,
        })
    }
}

/// Middleware of the peer routes: member peers only.
pub async fn peers_only(req: Request, next: Next) -> Response {
    let allowed = req
        .extensions()
        .get::<Caller>()
        .map(Caller::require_peer)
        .unwrap_or_else(|| Err(ApiError::Internal("no caller on a peer route".into())));
    match allowed {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Middleware of the map peers poll: any node certificate of the peer CA, member or not.
pub async fn nodes_only(req: Request, next: Next) -> Response {
    let allowed = match req.extensions().get::<Caller>().map(|c| c.peer) {
        Some(PeerProof::Stranger(_)) => Ok(()),
        Some(_) => req
            .extensions()
            .get::<Caller>()
            .map(Caller::require_peer)
            .unwrap_or(Ok(())),
        None => Err(ApiError::Internal("no caller on a peer route".into())),
    };
    match allowed {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Middleware of the status pages: a token unless `--metrics-public`.
pub async fn status_readers(req: Request, next: Next) -> Response {
    let allowed = req
        .extensions()
        .get::<Caller>()
        .map(Caller::may_read_status)
        .unwrap_or_else(|| Err(ApiError::Internal("no caller on a status route".into())));
    match allowed {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> String {
        format!(
            r#"
[[token]]
name = "app"
hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"   # abc
role = "readwrite"
prefixes = ["app/"]

[[token]]
name = "ops"
hash = "{}"
role = "admin"
"#,
            hash_token("s3cret")
        )
    }

    #[test]
    fn tokens_are_found_by_their_hash_and_limited_to_their_prefixes() {
        let tokens = Tokens::parse(&file(), Path::new("auth.toml")).unwrap();
        let app = tokens.by_token("abc").unwrap();
        assert_eq!((app.name.as_str(), app.role), ("app", Role::Readwrite));
        assert!(app.covers(b"app/x") && !app.covers(b"other/x"));
        assert!(app.overlaps(b"") && app.overlaps(b"app/x/") && !app.overlaps(b"other/"));
        let ops = tokens.by_token("s3cret").unwrap();
        assert_eq!(ops.role, Role::Admin);
        assert!(ops.covers(b"anything"));
        assert!(tokens.by_token("nope").is_none());
        assert_eq!(tokens.by_name("ops"), Some(ops));
        assert_eq!(
            hash_token("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_auth_files_are_refused() {
        for text in [
            "[[token]]\nname = \"a\"\nhash = \"md5:00\"\nrole = \"admin\"\n",
            "[[token]]\nname = \"a\"\nhash = \"sha256:00\"\nrole = \"admin\"\n",
            "[[token]]\nname = \"a\"\nhash = \"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\nrole = \"root\"\n",
            "[[token]]\nname = \"a\"\nhash = \"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\nrole = \"admin\"\nprefix = [\"a/\"]\n",
        ] {
            assert!(Tokens::parse(text, Path::new("auth.toml")).is_err(), "{text}");
        }
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abc", b"abd"));
    }
}
