//! Shared fixtures of the conformance cases: group ids, commands, and one-line writes.

use crate::{Command, Condition, Engine, GroupId, Op, Outcome, Record, WriteBatch};

pub(super) const G1: GroupId = GroupId(1);
pub(super) const G2: GroupId = GroupId(2);
/// The last group id: a backend that computes "the next group" must not overflow here.
pub(super) const GMAX: GroupId = GroupId(u64::MAX);

pub(super) fn entry(group: GroupId, index: u64) -> Vec<u8> {
    format!("{group}/{index}").into_bytes()
}

pub(super) fn entries(
    group: GroupId,
    indexes: impl IntoIterator<Item = u64>,
) -> Vec<(u64, Vec<u8>)> {
    indexes.into_iter().map(|i| (i, entry(group, i))).collect()
}

pub(super) fn append(engine: &dyn Engine, group: GroupId, indexes: impl IntoIterator<Item = u64>) {
    let batch = WriteBatch::new(group, true).op(Op::AppendLog {
        entries: entries(group, indexes),
    });
    engine.write(&[batch]).unwrap();
}

pub(super) fn write_one(engine: &dyn Engine, group: GroupId, op: Op) -> Vec<Outcome> {
    let mut out = engine
        .write(&[WriteBatch::new(group, false).op(op)])
        .unwrap();
    assert_eq!(out.len(), 1, "one outcome list per batch");
    out.remove(0)
}

pub(super) fn put(key: &str, value: &str, cond: Condition) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cond,
    }
}

pub(super) fn delete(key: &str, cond: Condition) -> Command {
    Command::Delete {
        key: key.as_bytes().to_vec(),
        cond,
    }
}

/// Apply one command at `index`, recording `applied = index`.
pub(super) fn apply(engine: &dyn Engine, group: GroupId, index: u64, cmd: Command) -> Outcome {
    let mut out = write_one(
        engine,
        group,
        Op::Apply {
            commands: vec![(index, cmd)],
            applied: index.to_le_bytes().to_vec(),
        },
    );
    assert_eq!(out.len(), 1, "one outcome per command");
    out.remove(0)
}

pub(super) fn get(engine: &dyn Engine, group: GroupId, key: &str) -> Option<Record> {
    engine.get(group, key.as_bytes()).unwrap()
}

pub(super) fn record(version: u64, value: &str) -> Record {
    Record::new(version, value.as_bytes())
}

pub(super) fn scan_keys(
    engine: &dyn Engine,
    group: GroupId,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<String> {
    engine
        .scan(
            group,
            prefix.as_bytes(),
            after.map(str::as_bytes),
            limit,
            usize::MAX,
            None,
        )
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect()
}

/// Fill `group` with `keys`, each written at its own index starting at `first_index`.
pub(super) fn fill(engine: &dyn Engine, group: GroupId, first_index: u64, keys: &[&str]) {
    let commands = keys
        .iter()
        .zip(first_index..)
        .map(|(k, i)| (i, put(k, &format!("{group}:{k}"), Condition::Always)))
        .collect();
    write_one(
        engine,
        group,
        Op::Apply {
            commands,
            applied: b"filled".to_vec(),
        },
    );
}

/// Everything stored in a group's key/value data.
pub(super) fn dump(engine: &dyn Engine, group: GroupId) -> Vec<(Vec<u8>, Record)> {
    engine
        .scan(group, b"", None, usize::MAX, usize::MAX, None)
        .unwrap()
}

/// A snapshot stream as the first version (before deadlines) wrote it, byte by byte: one
/// record ("k", version 7, "v"), one session (client 1, seq 2, `Written { version: 7 }`),
/// the trailer.
pub(crate) fn snapshot_from_before_deadlines() -> Vec<u8> {
    let mut s = b"KVSNAP01".to_vec();
    s.extend([
        1, 1, 0, 0, 0, b'k', 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, b'v',
    ]);
    s.extend([
        2, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0,
    ]);
    s.extend([1, 7, 0, 0, 0, 0, 0, 0, 0]);
    s.extend([0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let crc = crc32fast::hash(&s);
    s.extend(crc.to_le_bytes());
    s
}

/// The leader's clock in the TTL cases, unix ms.
pub(super) const NOW: u64 = 1_700_000_000_000;

pub(super) fn timed_put(
    key: &str,
    value: &str,
    expires_at: Option<u64>,
    cond: Condition,
    now: u64,
) -> Command {
    Command::TimedPut {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        expires_at,
        cond,
        now,
    }
}

pub(super) fn timed_delete(key: &str, cond: Condition, now: u64) -> Command {
    Command::TimedDelete {
        key: key.as_bytes().to_vec(),
        cond,
        now,
    }
}

pub(super) fn refresh(key: &str, expires_at: u64, cond: Condition, now: u64) -> Command {
    Command::Refresh {
        key: key.as_bytes().to_vec(),
        expires_at,
        cond,
        now,
    }
}

pub(super) fn expire(key: &str, version: u64, now: u64) -> Command {
    Command::Expire {
        key: key.as_bytes().to_vec(),
        version,
        now,
    }
}

/// A record with a deadline.
pub(super) fn expiring(version: u64, value: &str, expires_at: u64) -> Record {
    Record {
        expires_at: Some(expires_at),
        ..record(version, value)
    }
}

/// Every key of `group` that the expiry index lists, with its version, earliest first.
pub(super) fn all_expiring(engine: &dyn Engine, group: GroupId) -> Vec<(String, u64)> {
    engine
        .expired(group, u64::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), v))
        .collect()
}
