//! The Rust client of the kv store, and the HTTP API's wire types.
//!
//! It owns the client side of the HTTP/JSON API: one pooled HTTP client, the partition map
//! learned from `GET /v1/cluster` so each key request goes straight to its partition's leader
//! (`routing`), retries with exponential backoff and jitter under one deadline per call,
//! failing over between nodes (`retry`), and exactly-once writes (a random client id and a
//! sequence number per write, `session`). It also owns the wire types ([`api`]), shared with
//! the server (`kv-node`) so both ends agree on one definition. It knows nothing of the
//! server's internals: Raft, storage and placement are seen only through the API.
//!
//! Start from [`Client::builder`]; every call returns [`Result`] with one [`Error`] enum.
//!
//! For a cluster that serves TLS, give `https://` endpoints and the CA that signed the nodes'
//! certificates ([`ClientBuilder::ca_cert_pem`]); where the nodes ask for client certificates,
//! add one ([`ClientBuilder::client_cert_pem`]); where they ask for a token,
//! [`ClientBuilder::token`] sends it as `Authorization: Bearer` (`credentials`). TLS is
//! rustls with the aws-lc-rs provider.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kv_client::Error> {
//! use std::time::Duration;
//!
//! let client = kv_client::Client::builder()
//!     .endpoints(["http://127.0.0.1:7001", "http://127.0.0.1:7002"])
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//! let version = client.put("greeting", "hello").await?;
//! let value = client.get("greeting").await?.expect("just written");
//! assert_eq!(value.version, version);
//! match client.compare_and_set("greeting", version, "hi").await {
//!     Ok(new_version) => println!("now at {new_version}"),
//!     Err(kv_client::Error::PreconditionFailed { current }) => println!("lost a race: {current:?}"),
//!     Err(other) => return Err(other),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Client::watch`] and [`Client::watch_key`] follow changes as they happen: a [`Watch`]
//! stream of [`Watched`] items (the cursor, and the change) read from the server's
//! Server-Sent Events, which reconnects by itself from the last cursor.
//!
//! Exactly-once writes need the server's per-client deduplication (headers
//! [`api::HEADER_CLIENT_ID`], [`api::HEADER_REQUEST_SEQ`], [`api::HEADER_ACK_BELOW`]); without
//! it, a write whose answer was lost and that is retried may be applied twice.

pub mod api;
mod client;
mod credentials;
mod error;
mod retry;
mod routing;
mod session;
mod sse;
mod transport;
mod watch;

pub use client::{
    Client, ClientBuilder, Consistency, PutOptions, ScanOptions, TlsConfig, Value, DEFAULT_TIMEOUT,
};
pub use error::{one_line, Error, Result};
pub use watch::{Watch, Watched, DEFAULT_WATCH_IDLE_TIMEOUT};
