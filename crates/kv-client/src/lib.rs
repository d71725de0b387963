//! The client side of the store's HTTP/JSON API. Today it owns the API's wire types
//! ([`api`]), shared by the server (`kv-node`) and every client so both ends agree on one
//! definition; the pooled, routing `Client` builds on them.

pub mod api;
