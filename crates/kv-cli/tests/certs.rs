//! `kv cert` and `kv auth` through the built binary: the files written, their modes, refusing
//! to replace files, usage errors, and the token hash format nodes read.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::{fails, kv_sync, success};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// `kv <args> --dir <dir>`.
fn kv_cert(dir: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut command = kv_sync(args);
    command.arg("--dir").arg(dir);
    command
}

fn wrote(dir: &Path, names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("wrote {}\n", dir.join(name).display()))
        .collect()
}

/// The common name of the certificate in the PEM file at `path`.
fn common_name(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&pem.contents).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    cn.as_str().unwrap().to_owned()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn cert_commands_write_a_ca_node_and_client_certificate_with_private_keys() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("certs");

    let out = success(&mut kv_cert(&dir, &["cert", "create-ca"]));
    assert_eq!(out, wrote(&dir, &["ca.crt", "ca.key"]));
    let out = success(&mut kv_cert(
        &dir,
        &[
            "cert",
            "create-node",
            "--id",
            "3",
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
        ],
    ));
    assert_eq!(out, wrote(&dir, &["node-3.crt", "node-3.key"]));
    let out = success(&mut kv_cert(
        &dir,
        &["cert", "create-client", "app", "--json"],
    ));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "subject": "app",
            "cert": dir.join("client-app.crt").to_str().unwrap(),
            "key": dir.join("client-app.key").to_str().unwrap(),
        })
    );

    assert_eq!(common_name(&dir.join("ca.crt")), "kv-ca");
    assert_eq!(common_name(&dir.join("node-3.crt")), "node-3");
    assert_eq!(common_name(&dir.join("client-app.crt")), "app");
    for key in ["ca.key", "node-3.key", "client-app.key"] {
        let text = std::fs::read_to_string(dir.join(key)).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        #[cfg(unix)]
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
}

#[test]
fn cert_commands_refuse_to_replace_files_unless_told_to() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    success(&mut kv_cert(dir, &["cert", "create-ca", "--name", "first"]));
    let before = std::fs::read(dir.join("ca.crt")).unwrap();

    let (code, stdout, stderr) = fails(&mut kv_cert(dir, &["cert", "create-ca"]));
    assert_eq!(code, 5);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("ca.crt already exists (pass --overwrite"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), before);
    // A lone key is enough to refuse: the pair must never be mixed.
    std::fs::remove_file(dir.join("ca.crt")).unwrap();
    let (code, _, stderr) = fails(&mut kv_cert(dir, &["cert", "create-ca"]));
    assert_eq!(code, 5);
    assert!(stderr.contains("ca.key already exists"), "{stderr}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let loose = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(dir.join("ca.key"), loose).unwrap();
    }
    success(&mut kv_cert(
        dir,
        &["cert", "create-ca", "--name", "second", "--overwrite"],
    ));
    assert_eq!(common_name(&dir.join("ca.crt")), "second");
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("ca.key")), 0o600);

    // The replaced CA signs the next node; the next create-node must be told to overwrite too.
    success(&mut kv_cert(
        dir,
        &["cert", "create-node", "--id", "1", "--host", "h"],
    ));
    let (code, _, _) = fails(&mut kv_cert(
        dir,
        &["cert", "create-node", "--id", "1", "--host", "h"],
    ));
    assert_eq!(code, 5);
    success(&mut kv_cert(
        dir,
        &[
            "cert",
            "create-node",
            "--id",
            "1",
            "--host",
            "h",
            "--overwrite",
        ],
    ));
}

#[test]
fn cert_commands_sign_with_a_ca_named_by_path() {
    let temp = tempfile::tempdir().unwrap();
    let ca_dir = temp.path().join("client-ca");
    let out_dir = temp.path().join("out");
    success(&mut kv_cert(
        &ca_dir,
        &[
            "cert",
            "create-ca",
            "--name",
            "kv-client-ca",
            "--days",
            "10",
        ],
    ));
    let ca_cert = ca_dir.join("ca.crt");
    let ca_key = ca_dir.join("ca.key");
    success(&mut kv_cert(
        &out_dir,
        &[
            "cert",
            "create-client",
            "ops.team",
            "--ca-cert",
            ca_cert.to_str().unwrap(),
            "--ca-key",
            ca_key.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        common_name(&out_dir.join("client-ops.team.crt")),
        "ops.team"
    );

    // Without a CA where the defaults point: a one-line error saying how to make one.
    let (code, _, stderr) = fails(&mut kv_cert(
        &out_dir,
        &["cert", "create-node", "--id", "2", "--host", "10.0.0.2"],
    ));
    assert_eq!(code, 5);
    assert!(stderr.contains("kv cert create-ca"), "{stderr}");
    // A CA key that is not the CA certificate's.
    let (code, _, stderr) = fails(&mut kv_cert(
        &out_dir,
        &[
            "cert",
            "create-node",
            "--id",
            "2",
            "--host",
            "10.0.0.2",
            "--ca-cert",
            ca_cert.to_str().unwrap(),
            "--ca-key",
            out_dir.join("client-ops.team.key").to_str().unwrap(),
        ],
    ));
    assert_eq!(code, 5);
    assert!(stderr.contains("does not belong"), "{stderr}");
}

#[test]
fn bad_cert_arguments_are_usage_errors() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    success(&mut kv_cert(dir, &["cert", "create-ca"]));
    for bad in [
        &["cert", "create-node", "--id", "0", "--host", "localhost"][..],
        &["cert", "create-node", "--id", "1"],
        &[
            "cert",
            "create-node",
            "--id",
            "1",
            "--host",
            "localhost:7001",
        ],
        &["cert", "create-client", "node-4"],
        &["cert", "create-ca", "--days", "0", "--overwrite"],
    ] {
        let output = kv_cert(dir, bad).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "nothing but the CA was written: {names:?}");
}

#[test]
fn auth_hash_token_prints_the_sha256_line() {
    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(
        success(&mut kv_sync(&["auth", "hash-token", "abc"])),
        format!("{ABC}\n")
    );
    let json = success(&mut kv_sync(&["auth", "hash-token", "abc", "--json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        serde_json::json!({ "hash": ABC })
    );
    let from_stdin = success(kv_sync(&["auth", "hash-token", "-"]).write_stdin("abc\n"));
    assert_eq!(from_stdin, format!("{ABC}\n"));
    let output = kv_sync(&["auth", "hash-token", "a b"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn auth_new_token_prints_a_fresh_token_and_its_hash() {
    let out = success(&mut kv_sync(&["auth", "new-token"]));
    let lines: Vec<&str> = out.lines().collect();
    let [token, hash] = lines[..] else {
        panic!("two lines expected: {out:?}");
    };
    assert_eq!(token.len(), 46);
    assert_eq!(
        success(&mut kv_sync(&["auth", "hash-token", token])),
        format!("{hash}\n")
    );
    let json = success(&mut kv_sync(&["auth", "new-token", "--json"]));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_ne!(json["token"], *token);
    assert!(json["hash"].as_str().unwrap().starts_with("sha256:"));
}
