//! `kv cert ...`: makes certificates with [`certs`] and writes each as `<dir>/<name>.crt` and
//! `<dir>/<name>.key`. Keys are created readable by their owner only (mode 0600 on unix).
//! Nothing is replaced without `--overwrite`, and nothing is written when either file exists:
//! a certificate must never end up beside another certificate's key.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};

use crate::certs::{self, Ca, Issued};
use crate::cli::{CertCommand, CertFiles, CertSigner};
use crate::error::CliError;
use crate::output::Outcome;

/// Mode of a written key: its owner may read and write it, nobody else anything.
#[cfg(unix)]
const KEY_MODE: u32 = 0o600;

/// Runs one `kv cert` subcommand.
pub fn run(command: &CertCommand) -> Result<Outcome, CliError> {
    let outcome = match command {
        CertCommand::CreateCa(args) => {
            let issued = certs::create_ca(&args.name, args.days)?;
            write(&args.files, "ca", &args.name, &issued)?
        }
        CertCommand::CreateNode(args) => {
            let ca = load_ca(&args.signer, &args.files.dir)?;
            let name = certs::node_name(args.id);
            let issued = certs::create_node(&ca, args.id, &args.hosts, args.days)?;
            write(&args.files, &name, &name, &issued)?
        }
        CertCommand::CreateClient(args) => {
            let ca = load_ca(&args.signer, &args.files.dir)?;
            let issued = certs::create_client(&ca, &args.name, args.days)?;
            write(
                &args.files,
                &format!("client-{}", args.name),
                &args.name,
                &issued,
            )?
        }
    };
    Ok(outcome)
}

/// The CA named by `--ca-cert` and `--ca-key`, by default `ca.crt` and `ca.key` in `dir`.
fn load_ca(signer: &CertSigner, dir: &Path) -> anyhow::Result<Ca> {
    let cert_path = signer.ca_cert.clone().unwrap_or_else(|| dir.join("ca.crt"));
    let key_path = signer.ca_key.clone().unwrap_or_else(|| dir.join("ca.key"));
    let read = |path: &Path, what: &str| {
        fs::read_to_string(path).with_context(|| {
            format!(
                "reading the CA {what} {} (make a CA with `kv cert create-ca`, or name it with --ca-cert and --ca-key)",
                path.display()
            )
        })
    };
    let cert = read(&cert_path, "certificate")?;
    let key = read(&key_path, "key")?;
    Ca::from_pem(&cert, &key).with_context(|| format!("using the CA {}", cert_path.display()))
}

/// Writes `issued` as `<stem>.crt` and `<stem>.key` in the directory of `files`.
fn write(files: &CertFiles, stem: &str, subject: &str, issued: &Issued) -> anyhow::Result<Outcome> {
    let cert = files.dir.join(format!("{stem}.crt"));
    let key = files.dir.join(format!("{stem}.key"));
    if !files.overwrite {
        for path in [&cert, &key] {
            if path
                .try_exists()
                .with_context(|| format!("checking {}", path.display()))?
            {
                bail!(
                    "{} already exists (pass --overwrite to replace it)",
                    path.display()
                );
            }
        }
    }
    fs::create_dir_all(&files.dir)
        .with_context(|| format!("creating the directory {}", files.dir.display()))?;
    write_file(&key, &issued.key_pem, true, files.overwrite)?;
    write_file(&cert, &issued.cert_pem, false, files.overwrite)?;
    Ok(Outcome::Issued {
        subject: subject.to_owned(),
        cert,
        key,
    })
}

/// Writes `contents` to `path`: a new file unless `overwrite`; with `secret`, readable by its
/// owner only, also when it replaces a file that was not.
fn write_file(path: &Path, contents: &str, secret: bool, overwrite: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        // Even if the file appeared since the check, it is not replaced.
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(KEY_MODE);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // The mode above applies only to a file created now; a replaced one keeps its own.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(KEY_MODE))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
