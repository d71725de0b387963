//! What a command prints: one [`Outcome`] per successful command, rendered for people
//! ([`Outcome::human`]) or as one JSON object ([`Outcome::json`]).

use std::fmt::Write as _;
use std::path::PathBuf;

use kv_client::api::{
    ClusterStatus, DeleteResult, ScanItem, ScanResult, WatchEventKind, WriteResult,
};
use kv_client::Watched;
use serde_json::json;

/// The result of a successful command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `get`: the value and its version.
    Value {
        key: String,
        value: kv_client::Value,
    },
    /// `put`, `create`, `cas`: the key's new version.
    Written { key: String, version: u64 },
    /// `delete`: the version the key had when deleted.
    Deleted { key: String, version: u64 },
    /// `scan`.
    Scan(ScanResult),
    /// `cluster status`.
    Status(ClusterStatus),
    /// `cluster join` / `leave`: what was done.
    Done(String),
    /// `cert create-*`: the certificate of `subject` (its common name) and its key, written.
    Issued {
        subject: String,
        cert: PathBuf,
        key: PathBuf,
    },
    /// `auth hash-token`: the token's line for an auth file.
    TokenHash(String),
    /// `auth new-token`: a fresh token and its hash.
    NewToken { token: String, hash: String },
}

impl Outcome {
    /// The output for people. `get` prints the raw value; the others print text lines.
    pub fn human(&self) -> Vec<u8> {
        match self {
            Outcome::Value { value, .. } => value.data.to_vec(),
            Outcome::Written { version, .. } => format!("{version}\n").into_bytes(),
            Outcome::Deleted { version, .. } => format!("deleted version {version}\n").into_bytes(),
            Outcome::Scan(scan) => scan_table(scan).into_bytes(),
            Outcome::Status(status) => status_tables(status).into_bytes(),
            Outcome::Done(message) => format!("{message}\n").into_bytes(),
            Outcome::Issued { cert, key, .. } => {
                format!("wrote {}\nwrote {}\n", cert.display(), key.display()).into_bytes()
            }
            Outcome::TokenHash(hash) => format!("{hash}\n").into_bytes(),
            Outcome::NewToken { token, hash } => format!("{token}\n{hash}\n").into_bytes(),
        }
    }

    /// The output for scripts: one JSON object. `get` gives `{"key","version","value"}` (or
    /// `value_b64`, standard base64, when the value is not UTF-8, as scans do), writes the server's answer
    /// (`{"key","version"}`, deletes with `"deleted":true`), `scan` and `cluster status` the
    /// server's JSON; `cert create-*` `{"subject","cert","key"}` (the paths written), `auth
    /// hash-token` `{"hash"}`, `auth new-token` `{"token","hash"}`.
    pub fn json(&self) -> serde_json::Value {
        let encoded = match self {
            Outcome::Value { key, value } => {
                serde_json::to_value(item(key, value)).map(|mut item| {
                    if let (Some(ttl), Some(fields)) = (value.ttl_remaining, item.as_object_mut()) {
                        fields.insert("ttl_remaining".into(), ttl.as_secs().into());
                    }
                    item
                })
            }
            Outcome::Written { key, version } => serde_json::to_value(WriteResult {
                key: key.clone(),
                version: *version,
            }),
            Outcome::Deleted { key, version } => serde_json::to_value(DeleteResult {
                key: key.clone(),
                deleted: true,
                version: *version,
            }),
            Outcome::Scan(scan) => serde_json::to_value(scan),
            Outcome::Status(status) => serde_json::to_value(status),
            Outcome::Done(message) => Ok(json!({ "ok": true, "message": message })),
            Outcome::Issued { subject, cert, key } => Ok(json!({
                "subject": subject,
                "cert": cert.to_string_lossy(),
                "key": key.to_string_lossy(),
            })),
            Outcome::TokenHash(hash) => Ok(json!({ "hash": hash })),
            Outcome::NewToken { token, hash } => Ok(json!({ "token": token, "hash": hash })),
        };
        encoded.expect("API types always encode as JSON")
    }
}

/// A value in the shape of a scan item: text when it is UTF-8, base64 otherwise.
fn item(key: &str, value: &kv_client::Value) -> ScanItem {
    use base64::Engine as _;
    let (text, b64) = match std::str::from_utf8(&value.data) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(&value.data)),
        ),
    };
    ScanItem {
        key: key.to_owned(),
        version: value.version,
        value: text,
        value_b64: b64,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A value on one table cell: as is when it is printable text on one line, quoted with
/// escapes when it holds control characters, `0x...` when it is not text.
fn cell(item: &ScanItem) -> String {
    match (&item.value, item.value_bytes()) {
        (Some(text), _) if !text.chars().any(char::is_control) => text.clone(),
        (Some(text), _) => format!("{text:?}"),
        (None, Some(bytes)) => format!("0x{}", hex(&bytes)),
        (None, None) => String::new(),
    }
}

/// One line of `kv watch` for people: `put KEY VERSION VALUE` (the value as a scan shows it),
/// `delete KEY VERSION`, `expire KEY VERSION`; `None` for a message that only moved the cursor.
/// A key with control characters is quoted with escapes, as values are.
pub fn watch_line(item: &Watched) -> Option<String> {
    let event = item.event.as_ref()?;
    let key = if event.key.chars().any(|c| c.is_control() || c == ' ') || event.key.is_empty() {
        format!("{:?}", event.key)
    } else {
        event.key.clone()
    };
    let mut line = format!("{} {key} {}", event.kind, event.version);
    if event.kind == WatchEventKind::Put {
        let value = cell(&ScanItem {
            key: String::new(),
            version: event.version,
            value: event.value.clone(),
            value_b64: event.value_b64.clone(),
        });
        line.push(' ');
        line.push_str(&value);
    }
    Some(line)
}

/// One line of `kv watch --json`: the change as the server sent it (`type`, `key`, `version`,
/// and `value`, or `value_b64` when it is not UTF-8) with the `cursor` after it; a message that
/// only moved the cursor is `{"cursor":..}`, so the last line always holds the cursor to pass
/// to `--since`.
pub fn watch_json(item: &Watched) -> serde_json::Value {
    let mut object = match &item.event {
        Some(event) => serde_json::to_value(event).expect("API types always encode as JSON"),
        None => json!({}),
    };
    if let Some(fields) = object.as_object_mut() {
        fields.insert("cursor".into(), item.cursor.clone().into());
    }
    object
}

/// Rows aligned in columns, two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, text) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(text);
            } else {
                let _ = write!(line, "{text:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn scan_table(scan: &ScanResult) -> String {
    if scan.items.is_empty() {
        return String::new();
    }
    let mut rows = vec![vec![
        "KEY".to_owned(),
        "VERSION".to_owned(),
        "VALUE".to_owned(),
    ]];
    rows.extend(
        scan.items
            .iter()
            .map(|i| vec![i.key.clone(), i.version.to_string(), cell(i)]),
    );
    table(&rows)
}

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn status_tables(status: &ClusterStatus) -> String {
    let mut out = format!(
        "{} members, {} partitions, replication factor {} (as seen by node {})\n\n",
        status.members.len(),
        status.partitions,
        status.replication_factor,
        status.node
    );
    let mut members = vec![vec!["MEMBER".to_owned(), "ADDRESS".to_owned()]];
    members.extend(
        status
            .members
            .iter()
            .map(|m| vec![m.id.to_string(), m.addr.clone()]),
    );
    out.push_str(&table(&members));
    out.push('\n');
    let mut partitions = vec![[
        "PARTITION",
        "REPLICAS",
        "LEARNERS",
        "LEADER",
        "TERM",
        "APPLIED",
    ]
    .map(str::to_owned)
    .to_vec()];
    let mut groups: Vec<_> = status.groups.iter().collect();
    groups.sort_by_key(|g| g.partition.map_or(-1, i64::from));
    partitions.extend(groups.into_iter().map(|g| {
        vec![
            g.partition
                .map_or_else(|| "meta".to_owned(), |p| p.to_string()),
            ids(&g.replicas),
            if g.learners.is_empty() {
                "-".to_owned()
            } else {
                ids(&g.learners)
            },
            optional(g.leader),
            g.term.to_string(),
            optional(g.applied_index),
        ]
    }));
    out.push_str(&table(&partitions));
    if !status.moves.is_empty() {
        out.push('\n');
        let mut moves = vec![["MOVE", "FROM", "TO", "PHASE", "LEARNERS", "SECONDS"]
            .map(str::to_owned)
            .to_vec()];
        moves.extend(status.moves.iter().map(|m| {
            let learners: Vec<String> = m
                .learners
                .iter()
                .map(|l| format!("{}@{}/{}", l.node, optional(l.matched), l.target))
                .collect();
            vec![
                m.partition.to_string(),
                ids(&m.from),
                ids(&m.to),
                m.phase.clone(),
                if learners.is_empty() {
                    "-".to_owned()
                } else {
                    learners.join(",")
                },
                format!("{:.1}", m.elapsed_ms as f64 / 1000.0),
            ]
        }));
        out.push_str(&table(&moves));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_client::api::{GroupStatus, Member};

    fn status() -> ClusterStatus {
        ClusterStatus {
            node: 2,
            members: vec![
                Member {
                    id: 1,
                    addr: "127.0.0.1:7001".into(),
                },
                Member {
                    id: 2,
                    addr: "127.0.0.1:7002".into(),
                },
            ],
            partitions: 2,
            replication_factor: 2,
            vnodes: 64,
            epoch: Some(1),
            moves: Vec::new(),
            groups: vec![
                GroupStatus {
                    partition: Some(1),
                    replicas: vec![2, 1],
                    voters: vec![],
                    learners: vec![],
                    leader: None,
                    term: 0,
                    role: "none".into(),
                    last_log_index: None,
                    commit_index: None,
                    applied_index: None,
                    replication: None,
                },
                GroupStatus {
                    partition: Some(0),
                    replicas: vec![1, 2],
                    voters: vec![],
                    learners: vec![3],
                    leader: Some(1),
                    term: 4,
                    role: "follower".into(),
                    last_log_index: Some(12),
                    commit_index: Some(12),
                    applied_index: Some(11),
                    replication: None,
                },
            ],
        }
    }

    #[test]
    fn status_prints_members_and_partitions_as_tables() {
        let text = String::from_utf8(Outcome::Status(status()).human()).unwrap();
        let expected = "\
2 members, 2 partitions, replication factor 2 (as seen by node 2)

MEMBER  ADDRESS
1       127.0.0.1:7001
2       127.0.0.1:7002

PARTITION  REPLICAS  LEARNERS  LEADER  TERM  APPLIED
0          1,2       3         1       4     11
1          2,1       -         -       0     -
";
        assert_eq!(text, expected);
    }

    #[test]
    fn scan_table_shows_text_escaped_text_and_hex() {
        let scan = ScanResult {
            items: vec![
                ScanItem {
                    key: "a".into(),
                    version: 3,
                    value: Some("plain".into()),
                    value_b64: None,
                },
                ScanItem {
                    key: "bb".into(),
                    version: 12,
                    value: Some("two\nlines".into()),
                    value_b64: None,
                },
                ScanItem {
                    key: "c".into(),
                    version: 4,
                    value: None,
                    value_b64: Some("/wA=".into()),
                },
            ],
            truncated: false,
            next: None,
        };
        let text = String::from_utf8(Outcome::Scan(scan).human()).unwrap();
        let expected = "\
KEY  VERSION  VALUE
a    3        plain
bb   12       \"two\\nlines\"
c    4        0xff00
";
        assert_eq!(text, expected);
    }

    #[test]
    fn get_prints_raw_bytes_or_json_with_text_or_hex() {
        let value = kv_client::Value {
            data: vec![0xff, 0x01].into(),
            version: 9,
            ttl_remaining: None,
        };
        let outcome = Outcome::Value {
            key: "k".into(),
            value,
        };
        assert_eq!(outcome.human(), [0xff, 0x01]);
        assert_eq!(
            outcome.json(),
            json!({"key": "k", "version": 9, "value_b64": "/wE="})
        );
        let text = Outcome::Value {
            key: "k".into(),
            value: kv_client::Value {
                data: "hi".into(),
                version: 2,
                ttl_remaining: Some(std::time::Duration::from_secs(30)),
            },
        };
        assert_eq!(
            text.json(),
            json!({"key": "k", "version": 2, "value": "hi", "ttl_remaining": 30})
        );
    }

    #[test]
    fn watch_prints_one_line_per_change_and_json_with_the_cursor() {
        use kv_client::api::WatchEvent;
        let watched = |kind, key: &str, value: Option<&str>, value_b64: Option<&str>| Watched {
            cursor: "p0:3".into(),
            event: Some(WatchEvent {
                kind,
                key: key.into(),
                version: 12,
                value: value.map(str::to_owned),
                value_b64: value_b64.map(str::to_owned),
            }),
        };
        let put = watched(WatchEventKind::Put, "app/x", Some("text"), None);
        assert_eq!(watch_line(&put).unwrap(), "put app/x 12 text");
        assert_eq!(
            watch_json(&put),
            json!({"cursor": "p0:3", "type": "put", "key": "app/x", "version": 12, "value": "text"})
        );
        let binary = watched(WatchEventKind::Put, "b", None, Some("/wCh"));
        assert_eq!(watch_line(&binary).unwrap(), "put b 12 0xff00a1");
        assert_eq!(watch_json(&binary)["value_b64"], "/wCh");
        let multiline = watched(WatchEventKind::Put, "a b", Some("x\ny"), None);
        assert_eq!(watch_line(&multiline).unwrap(), "put \"a b\" 12 \"x\\ny\"");
        let deleted = watched(WatchEventKind::Delete, "app/x", None, None);
        assert_eq!(watch_line(&deleted).unwrap(), "delete app/x 12");
        assert_eq!(
            watch_json(&deleted),
            json!({"cursor": "p0:3", "type": "delete", "key": "app/x", "version": 12})
        );
        let expired = watched(WatchEventKind::Expire, "app/x", None, None);
        assert_eq!(watch_line(&expired).unwrap(), "expire app/x 12");
        let moved = Watched {
            cursor: "p0:4".into(),
            event: None,
        };
        assert_eq!(watch_line(&moved), None);
        assert_eq!(watch_json(&moved), json!({"cursor": "p0:4"}));
    }

    #[test]
    fn writes_print_the_version() {
        let written = Outcome::Written {
            key: "k".into(),
            version: 7,
        };
        assert_eq!(written.human(), b"7\n");
        assert_eq!(written.json(), json!({"key": "k", "version": 7}));
        let deleted = Outcome::Deleted {
            key: "k".into(),
            version: 8,
        };
        assert_eq!(
            deleted.json(),
            json!({"key": "k", "deleted": true, "version": 8})
        );
    }
}
