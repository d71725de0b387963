//! Property test of the expiry index and the change history: under any interleaving of timed
//! and untimed writes, refreshes, expiries, snapshot imports, log purges and group drops, both
//! engines hold the same records, each one's `(deadline, key)` index lists exactly the records
//! that have a deadline, and each one's change history equals a model built from how the
//! records changed.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_storage::testing::assert_expiry_index_exact;
use kv_storage::{
    Change, ChangeKind, ChangePage, ChangePos, Command, Condition, Engine, GroupId, MemoryEngine,
    Op, Outcome, RedbEngine, WriteBatch,
};
use proptest::prelude::*;

const G: GroupId = GroupId(1);
const OTHER: GroupId = GroupId(2);
const KEYS: [&str; 3] = ["a", "b", "c"];

/// One step; times are small so that deadlines, clocks and versions collide often.
#[derive(Debug, Clone)]
enum Step {
    Put {
        key: usize,
        cond: u8,
    },
    TimedPut {
        key: usize,
        ttl: Option<u64>,
        cond: u8,
        now: u64,
    },
    Delete {
        key: usize,
    },
    TimedDelete {
        key: usize,
        now: u64,
    },
    Refresh {
        key: usize,
        ttl: u64,
        now: u64,
    },
    /// Expire whatever the index lists as due at `now` (what the expirer does), or a guess.
    ExpireDue {
        now: u64,
    },
    ExpireGuess {
        key: usize,
        version: u64,
        now: u64,
    },
    InSession {
        client: u64,
        seq: u64,
        step: Box<Step>,
    },
    /// Replace the group with a snapshot of itself taken from the other engine.
    SnapshotRoundTrip,
    DropOther,
    /// Purge the log through `back` entries before this one.
    Purge {
        back: u64,
    },
}

fn cond(code: u8, version: u64) -> Condition {
    match code % 3 {
        0 => Condition::Always,
        1 => Condition::Absent,
        _ => Condition::Version(version),
    }
}

fn leaf() -> impl Strategy<Value = Step> {
    let key = 0..KEYS.len();
    let now = 0u64..40;
    prop_oneof![
        (key.clone(), any::<u8>()).prop_map(|(key, cond)| Step::Put { key, cond }),
        (
            key.clone(),
            prop::option::of(0u64..20),
            any::<u8>(),
            now.clone()
        )
            .prop_map(|(key, ttl, cond, now)| Step::TimedPut {
                key,
                ttl,
                cond,
                now
            }),
        key.clone().prop_map(|key| Step::Delete { key }),
        (key.clone(), now.clone()).prop_map(|(key, now)| Step::TimedDelete { key, now }),
        (key.clone(), 0u64..20, now.clone()).prop_map(|(key, ttl, now)| Step::Refresh {
            key,
            ttl,
            now
        }),
        now.clone().prop_map(|now| Step::ExpireDue { now }),
        (key, 0u64..30, now).prop_map(|(key, version, now)| Step::ExpireGuess {
            key,
            version,
            now
        }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => leaf(),
        2 => (0u64..2, 0u64..4, leaf()).prop_map(|(client, seq, step)| Step::InSession {
            client,
            seq,
            step: Box::new(step),
        }),
        1 => Just(Step::SnapshotRoundTrip),
        1 => Just(Step::DropOther),
        1 => (0u64..8).prop_map(|back| Step::Purge { back }),
    ]
}

/// The commands of `step` at log `index`, given the engine's current state.
fn commands(engine: &dyn Engine, step: &Step, index: u64) -> Vec<Command> {
    let key = |k: usize| KEYS[k].as_bytes().to_vec();
    let version = |k: usize| {
        engine
            .get(G, KEYS[k].as_bytes())
            .unwrap()
            .map_or(index.saturating_sub(1), |r| r.version)
    };
    match step {
        Step::Put { key: k, cond: c } => vec![Command::Put {
            key: key(*k),
            value: index.to_le_bytes().to_vec(),
            cond: cond(*c, version(*k)),
        }],
        Step::TimedPut {
            key: k,
            ttl,
            cond: c,
            now,
        } => vec![Command::TimedPut {
            key: key(*k),
            value: index.to_le_bytes().to_vec(),
            expires_at: ttl.map(|t| now + t),
            cond: cond(*c, version(*k)),
            now: *now,
        }],
        Step::Delete { key: k } => vec![Command::Delete {
            key: key(*k),
            cond: Condition::Always,
        }],
        Step::TimedDelete { key: k, now } => vec![Command::TimedDelete {
            key: key(*k),
            cond: Condition::Always,
            now: *now,
        }],
        Step::Refresh { key: k, ttl, now } => vec![Command::Refresh {
            key: key(*k),
            expires_at: now + ttl,
            cond: Condition::Always,
            now: *now,
        }],
        Step::ExpireDue { now } => engine
            .expired(G, *now, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(key, version)| Command::Expire {
                key,
                version,
                now: *now,
            })
            .collect(),
        Step::ExpireGuess {
            key: k,
            version,
            now,
        } => vec![Command::Expire {
            key: key(*k),
            version: *version,
            now: *now,
        }],
        Step::InSession { client, seq, step } => commands(engine, step, index)
            .into_iter()
            .map(|command| Command::Once {
                client: *client,
                seq: *seq,
                ack_below: 0,
                command: Box::new(command),
            })
            .collect(),
        Step::SnapshotRoundTrip | Step::DropOther | Step::Purge { .. } => Vec::new(),
    }
}

fn apply(engine: &dyn Engine, group: GroupId, index: u64, cmds: &[Command]) -> Vec<Outcome> {
    let batch = WriteBatch::new(group, false).op(Op::Apply {
        commands: cmds.iter().map(|c| (index, c.clone())).collect(),
        applied: index.to_le_bytes().to_vec(),
    });
    engine.write(&[batch]).unwrap().remove(0)
}

fn dump(engine: &dyn Engine, group: GroupId) -> Vec<(Vec<u8>, kv_storage::Record)> {
    engine
        .scan(group, b"", None, usize::MAX, usize::MAX, None)
        .unwrap()
}

/// The model of a group's change history: start and rows.
#[derive(Debug, Default)]
struct History {
    start: u64,
    rows: BTreeMap<ChangePos, Change>,
}

impl History {
    fn new() -> History {
        History {
            start: 1,
            rows: BTreeMap::new(),
        }
    }

    /// Record what the commands of the entry at `index` did, read from the records before and
    /// after it: a key whose version moved was written, a key that vanished was removed (by
    /// an expiry if its command was one). The commands of an entry touch distinct keys, so a
    /// key's command gives the row's ordinal.
    fn record(
        &mut self,
        index: u64,
        cmds: &[Command],
        before: &[(Vec<u8>, kv_storage::Record)],
        after: &[(Vec<u8>, kv_storage::Record)],
    ) {
        let before: BTreeMap<_, _> = before.iter().cloned().collect();
        let after: BTreeMap<_, _> = after.iter().cloned().collect();
        for (sub, cmd) in cmds.iter().enumerate() {
            let key = cmd.key();
            let change = match (before.get(key), after.get(key)) {
                (old, Some(new)) if old.map(|r| r.version) != Some(new.version) => Change {
                    kind: ChangeKind::Put,
                    key: key.to_vec(),
                    version: new.version,
                    value: new.value.clone(),
                },
                (Some(old), None) => Change {
                    kind: if matches!(inner(cmd), Command::Expire { .. }) {
                        ChangeKind::Expire
                    } else {
                        ChangeKind::Delete
                    },
                    key: key.to_vec(),
                    version: old.version,
                    value: Vec::new(),
                },
                _ => continue,
            };
            let sub = u32::try_from(sub).unwrap();
            self.rows.insert(ChangePos { index, sub }, change);
        }
    }

    fn purge(&mut self, through: u64) {
        self.rows.retain(|p, _| p.index > through);
        self.start = self.start.max(through + 1);
    }

    fn page(&self) -> ChangePage {
        ChangePage {
            start: self.start,
            rows: self.rows.iter().map(|(p, c)| (*p, c.clone())).collect(),
        }
    }
}

fn inner(cmd: &Command) -> &Command {
    match cmd {
        Command::Once { command, .. } => inner(command),
        other => other,
    }
}

/// The whole history of `group`, read in pages of at most `limit` rows.
fn paged_history(engine: &dyn Engine, group: GroupId, limit: usize) -> ChangePage {
    let mut cursor = ChangePos::end_of(0);
    let mut all = ChangePage {
        start: 0,
        rows: Vec::new(),
    };
    loop {
        let page = engine.changes(group, cursor, limit, 4).unwrap();
        all.start = page.start;
        let Some((last, _)) = page.rows.last() else {
            return all;
        };
        cursor = *last;
        all.rows.extend(page.rows);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_expiry_index_stays_exact_and_both_engines_agree(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let redb: Arc<dyn Engine> = Arc::new(RedbEngine::open(&dir.path().join("n.redb")).unwrap());
        let memory: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let engines = [memory, redb];
        let mut history = History::new();
        let mut other = History::new();
        for e in &engines {
            apply(e.as_ref(), OTHER, 1, &[Command::TimedPut {
                key: b"other".to_vec(),
                value: Vec::new(),
                expires_at: Some(3),
                cond: Condition::Always,
                now: 0,
            }]);
        }
        other.record(1, &[Command::Delete { key: b"other".to_vec(), cond: Condition::Always }], &[], &dump(engines[0].as_ref(), OTHER));
        for (step, index) in steps.iter().zip(1u64..) {
            match step {
                Step::SnapshotRoundTrip => {
                    // Each engine takes the other's snapshot: the streams must be equal too.
                    let mut streams = Vec::new();
                    for e in &engines {
                        let mut s = Vec::new();
                        e.export_group(G, &mut s, 0).unwrap();
                        streams.push(s);
                    }
                    prop_assert_eq!(&streams[0], &streams[1]);
                    for (e, s) in engines.iter().zip(streams.iter().rev()) {
                        e.import_group(G, &mut s.as_slice(), b"snap", index).unwrap();
                    }
                    // Both held the same history, and the snapshots carry it.
                }
                Step::DropOther => {
                    for e in &engines {
                        e.drop_group(OTHER).unwrap();
                    }
                    other = History::new();
                }
                Step::Purge { back } => {
                    let through = index.saturating_sub(*back);
                    for e in &engines {
                        let batch = WriteBatch::new(G, false)
                            .op(Op::PurgeLog { through })
                            .op(Op::HistoryStart { index: through + 1 });
                        e.write(&[batch]).unwrap();
                    }
                    history.purge(through);
                }
                _ => {
                    // Both engines hold the same state, so the commands are the same.
                    let cmds = commands(engines[0].as_ref(), step, index);
                    let before = dump(engines[0].as_ref(), G);
                    let outcomes: Vec<_> = engines
                        .iter()
                        .map(|e| apply(e.as_ref(), G, index, &cmds))
                        .collect();
                    history.record(index, &cmds, &before, &dump(engines[0].as_ref(), G));
                    prop_assert_eq!(&outcomes[0], &outcomes[1]);
                    if let Step::ExpireDue { now } = step {
                        let all_expired = outcomes[0].iter().all(|o| matches!(o, Outcome::Expired { .. }));
                        prop_assert!(all_expired, "{:?}", outcomes[0]);
                        prop_assert_eq!(engines[0].expired(G, *now, usize::MAX).unwrap(), vec![]);
                    }
                }
            }
            prop_assert_eq!(dump(engines[0].as_ref(), G), dump(engines[1].as_ref(), G));
            for e in &engines {
                assert_expiry_index_exact(e.as_ref(), G);
                assert_expiry_index_exact(e.as_ref(), OTHER);
                let all = e.changes(G, ChangePos::end_of(0), usize::MAX, usize::MAX).unwrap();
                prop_assert_eq!(&all, &history.page());
                prop_assert_eq!(&paged_history(e.as_ref(), G, 2), &all);
                let others = e.changes(OTHER, ChangePos::end_of(0), usize::MAX, usize::MAX).unwrap();
                prop_assert_eq!(others, other.page());
            }
        }
    }
}
