//! The fan-out of each hosted partition's change history to this node's watches.
//!
//! A watch follows each partition it spans with a feed (`api::watch`). Feeds of partitions this
//! node hosts do not each read storage on every applied entry: one [`Hub`] per group reads the
//! new rows once, after each apply, and hands every row to the feeds it matches (their key or
//! prefix, their client's rights), waking only those. A feed that matches nothing costs a
//! comparison per change, and its position still moves with the hub's, so its cursor stays
//! near the head of the history.
//!
//! A feed *attaches* at a position at or past the hub's head (it catches up from storage
//! first). A feed whose queue grows past [`MAX_QUEUED`] changes or [`MAX_QUEUED_BYTES`] is
//! detached (its consumer lags): it goes back to reading storage from its position, so the
//! hub never buffers without bound. The hub's task runs while the group does; with no feed
//! attached it only follows the applied index.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kv_raft::{Change, ChangeKind, ChangePage, ChangePos, Group, GroupId};
use tokio::sync::Notify;

use crate::auth::Access;
use crate::wire::{ChangeRow, ChangeType, ChangesRequest};

/// Changes queued for one feed before it is detached.
pub const MAX_QUEUED: usize = 1024;
/// Bytes of keys and values queued for one feed before it is detached.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;
/// Rows the hub reads from storage at a time.
const READ_ROWS: usize = 1024;
const READ_BYTES: usize = 4 << 20;

/// A change as watches and peers see it.
pub fn row(position: ChangePos, c: Change) -> ChangeRow {
    ChangeRow {
        position,
        kind: match c.kind {
            ChangeKind::Put => ChangeType::Put,
            ChangeKind::Delete => ChangeType::Delete,
            ChangeKind::Expire => ChangeType::Expire,
        },
        value: (c.kind == ChangeKind::Put).then(|| serde_bytes::ByteBuf::from(c.value)),
        key: c.key,
        version: c.version,
    }
}

/// Whether the history `page` came from no longer reaches `after` (the changes right after it
/// are gone: purged with the log, or never held since a snapshot).
pub fn compacted(page: &ChangePage, after: ChangePos) -> bool {
    after < ChangePos::end_of(page.start.saturating_sub(1))
}

/// Where a read of the changes after `after` leaves its reader: at the page's last row when
/// `limit` or `max_bytes` cut the page (more may follow), else at `head`, read before the page
/// (every change up to it is in the page); never before `after`.
pub fn page_end(
    page: &ChangePage,
    after: ChangePos,
    head: ChangePos,
    limit: usize,
    max_bytes: usize,
) -> (ChangePos, bool) {
    let bytes: usize = page
        .rows
        .iter()
        .map(|(_, c)| c.key.len() + c.value.len())
        .sum();
    let full = page.rows.len() >= limit || bytes >= max_bytes;
    let last = page.rows.last().map(|(pos, _)| *pos);
    let end = match (full, last) {
        (true, Some(last)) => last,
        (_, last) => last.unwrap_or(after).max(head),
    };
    (end.max(after), full)
}

/// The hub of every group that has had a watch on this node.
#[derive(Default)]
pub struct Hubs(Mutex<HashMap<GroupId, Arc<Hub>>>);

impl Hubs {
    /// The hub of `group`, started if it has none (or its last one stopped with its group).
    pub fn of(&self, group: &Group) -> Arc<Hub> {
        let mut hubs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        hubs.retain(|_, hub| !hub.stopped());
        hubs.entry(group.id())
            .or_insert_with(|| Hub::start(group.clone()))
            .clone()
    }
}

/// One group's fan-out.
pub struct Hub {
    state: Mutex<HubState>,
}

struct HubState {
    /// Every change up to here has been handed to the feeds attached.
    head: ChangePos,
    feeds: Vec<Arc<Feed>>,
    /// The group closed here (moved away, node stopping), or its task ended.
    stopped: bool,
}

/// What a feed gets from [`Hub::attach`].
pub enum Attach {
    /// Attached: changes after the position come through the [`Feed`].
    Attached(Attached),
    /// The hub is past the position: read storage up to here first.
    Behind,
    /// The group closed here.
    Stopped,
}

/// An attached feed; dropping it detaches it.
pub struct Attached {
    hub: Arc<Hub>,
    pub feed: Arc<Feed>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.feeds.retain(|f| !Arc::ptr_eq(f, &self.feed));
    }
}

/// One watch's share of a hub: what it matches and what it has been handed.
pub struct Feed {
    request: ChangesRequest,
    access: Access,
    queue: Mutex<Queue>,
    /// Wakes the feed's task: new changes, detached, or the group stopped.
    pub wake: Notify,
}

struct Queue {
    rows: VecDeque<ChangeRow>,
    bytes: usize,
    /// Every matching change up to here is in `rows` or was taken.
    position: ChangePos,
    /// Queued too much: no more changes come; read storage from `position`.
    detached: bool,
    /// The history was cut under the feed (a snapshot installed here).
    compacted: bool,
    stopped: bool,
}

/// What [`Feed::take`] hands over.
pub struct Taken {
    pub rows: Vec<ChangeRow>,
    pub position: ChangePos,
    pub detached: bool,
    pub compacted: bool,
    pub stopped: bool,
}

impl Feed {
    /// Everything queued, and where the feed is.
    pub fn take(&self) -> Taken {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.bytes = 0;
        Taken {
            rows: q.rows.drain(..).collect(),
            position: q.position,
            detached: q.detached,
            compacted: q.compacted,
            stopped: q.stopped,
        }
    }
}

impl Hub {
    fn start(group: Group) -> Arc<Hub> {
        let applied = group.applied_index();
        let head = ChangePos::end_of(*applied.borrow());
        let hub = Arc::new(Hub {
            state: Mutex::new(HubState {
                head,
                feeds: Vec::new(),
                stopped: false,
            }),
        });
        tokio::spawn(run(group, applied, Arc::clone(&hub)));
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Attach a feed for `request`'s keys at `position`, if the hub has handed out nothing
    /// past it.
    pub fn attach(
        self: &Arc<Self>,
        request: &ChangesRequest,
        access: &Access,
        position: ChangePos,
    ) -> Attach {
        let mut state = self.lock();
        if state.stopped {
            return Attach::Stopped;
        }
        if position < state.head {
            return Attach::Behind;
        }
        let feed = Arc::new(Feed {
            request: request.clone(),
            access: access.clone(),
            queue: Mutex::new(Queue {
                rows: VecDeque::new(),
                bytes: 0,
                position,
                detached: false,
                compacted: false,
                stopped: false,
            }),
            wake: Notify::new(),
        });
        state.feeds.push(Arc::clone(&feed));
        Attach::Attached(Attached {
            hub: Arc::clone(self),
            feed,
        })
    }

    /// Hand `rows` (after the head, in order) to the feeds they match and move the head to
    /// `head`.
    fn deliver(&self, rows: &[(ChangePos, Change)], head: ChangePos) {
        let mut state = self.lock();
        for feed in &state.feeds {
            let mut q = feed.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.detached {
                continue;
            }
            let mut woken = false;
            for (pos, change) in rows {
                if *pos <= q.position {
                    continue;
                }
                if feed.request.matches(&change.key) && feed.access.covers(&change.key) {
                    if q.rows.len() >= MAX_QUEUED || q.bytes >= MAX_QUEUED_BYTES {
                        q.detached = true;
                        woken = true;
                        break;
                    }
                    q.bytes += change.key.len() + change.value.len();
                    q.rows.push_back(row(*pos, change.clone()));
                    woken = true;
                }
                q.position = *pos;
            }
            if !q.detached {
                q.position = q.position.max(head);
            }
            drop(q);
            if woken {
                feed.wake.notify_one();
            }
        }
        state.head = state.head.max(head);
    }

    /// Tell every feed something ended (`compacted`: the history was cut; else the group
    /// stopped here) and let them go.
    fn end_feeds(&self, compacted: bool, head: ChangePos) {
        let mut state = self.lock();
        for feed in state.feeds.drain(..) {
            let mut q = feed.queue.lock().unwrap_or_else(|p| p.into_inner());
            match compacted {
                true => q.compacted = true,
                false => q.stopped = true,
            }
            drop(q);
            feed.wake.notify_one();
        }
        state.head = state.head.max(head);
        if !compacted {
            state.stopped = true;
        }
    }
}

/// The hub's task: after each apply, read the new rows once and deliver them.
async fn run(group: Group, mut applied: tokio::sync::watch::Receiver<u64>, hub: Arc<Hub>) {
    loop {
        if applied.changed().await.is_err() {
            hub.end_feeds(false, ChangePos::end_of(0));
            return;
        }
        let target = ChangePos::end_of(*applied.borrow_and_update());
        let mut head = {
            let mut state = hub.lock();
            // Nobody to hand rows to: the head follows the applied index without reading (a
            // feed attaching later catches up from storage).
            if state.feeds.is_empty() {
                state.head = state.head.max(target);
                continue;
            }
            state.head
        };
        while head < target {
            let page = match group.changes(head, READ_ROWS, READ_BYTES).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(group = %group.id(), error = %e, "watch hub stopped");
                    hub.end_feeds(false, head);
                    return;
                }
            };
            if compacted(&page, head) {
                hub.end_feeds(true, target);
                break;
            }
            let (next, _) = page_end(&page, head, target, READ_ROWS, READ_BYTES);
            hub.deliver(&page.rows, next);
            head = next;
        }
    }
}
