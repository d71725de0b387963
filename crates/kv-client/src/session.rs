//! Exactly-once writes, the client's half: every client picks a random id, numbers each write,
//! and tells the server which numbers it will never retry again.
//!
//! Every write (put, delete, compare-and-set, create) takes a fresh sequence number when it
//! starts ([`Session::begin_write`]) and keeps it through all its retries, so the server can
//! recognise a retry of a write it already applied (its answer was lost) and answer it with the
//! first outcome. Each attempt also carries `ack_below`, the lowest number still in flight:
//! every write below it has finished (or been given up), so the server may forget its outcome.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::api::{HEADER_ACK_BELOW, HEADER_CLIENT_ID, HEADER_REQUEST_SEQ};

/// One client's write numbering. Invariant: every sequence number handed out and not yet
/// finished is in `in_flight`, so `ack_below` never passes a write that may still be retried.
#[derive(Debug)]
pub(crate) struct Session {
    client_id: u64,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

impl Session {
    /// A session with a random non-zero client id.
    pub(crate) fn new() -> Self {
        let client_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Session {
            client_id,
            next_seq: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
        }
    }

    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Numbers a new write; it stays in flight until the returned ticket is dropped.
    pub(crate) fn begin_write(&self) -> WriteTicket<'_> {
        let mut in_flight = self.lock();
        // Taken under the lock: a number must be in the set before any other write can compute
        // `ack_below`, or that write could tell the server to forget this one.
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        in_flight.insert(seq);
        WriteTicket { session: self, seq }
    }

    /// The lowest sequence number still in flight (the next one to be handed out if none is).
    fn ack_below(&self) -> u64 {
        let in_flight = self.lock();
        in_flight
            .first()
            .copied()
            .unwrap_or_else(|| self.next_seq.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // The set stays consistent even if a holder panicked: each operation is one call.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One numbered write in flight; dropping it (success, failure or cancellation) finishes it.
#[derive(Debug)]
pub(crate) struct WriteTicket<'a> {
    session: &'a Session,
    seq: u64,
}

impl WriteTicket<'_> {
    /// The write's sequence number.
    #[cfg(test)]
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Adds the exactly-once headers to an attempt of this write.
    pub(crate) fn add_headers(&self, headers: &mut HeaderMap) {
        headers.insert(HEADER_CLIENT_ID, HeaderValue::from(self.session.client_id));
        headers.insert(HEADER_REQUEST_SEQ, HeaderValue::from(self.seq));
        headers.insert(
            HEADER_ACK_BELOW,
            HeaderValue::from(self.session.ack_below()),
        );
    }
}

impl Drop for WriteTicket<'_> {
    fn drop(&mut self) {
        self.session.lock().remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(headers: &HeaderMap, name: &str) -> u64 {
        headers[name].to_str().unwrap().parse().unwrap()
    }

    #[test]
    fn client_ids_are_random_and_non_zero() {
        let a = Session::new();
        let b = Session::new();
        assert_ne!(a.client_id(), 0);
        assert_ne!(a.client_id(), b.client_id());
    }

    #[test]
    fn ack_below_is_the_oldest_write_in_flight() {
        let session = Session::new();
        let first = session.begin_write();
        let second = session.begin_write();
        assert_eq!((first.seq(), second.seq()), (1, 2));

        let mut headers = HeaderMap::new();
        second.add_headers(&mut headers);
        assert_eq!(header(&headers, HEADER_CLIENT_ID), session.client_id());
        assert_eq!(header(&headers, HEADER_REQUEST_SEQ), 2);
        assert_eq!(header(&headers, HEADER_ACK_BELOW), 1);

        drop(first);
        second.add_headers(&mut headers);
        assert_eq!(header(&headers, HEADER_ACK_BELOW), 2, "1 finished");

        drop(second);
        assert_eq!(session.ack_below(), 3, "nothing in flight");
        let third = session.begin_write();
        assert_eq!(third.seq(), 3);
    }
}
