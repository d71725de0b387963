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
    Record {
        version,
        value: value.as_bytes().to_vec(),
    }
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
        .scan(group, b"", None, usize::MAX, usize::MAX)
        .unwrap()
}
