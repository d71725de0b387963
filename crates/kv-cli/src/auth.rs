//! Client tokens (`kv auth`): making one, and hashing one the way a node's auth file stores it
//! (`sha256:<64 lowercase hex digits>`). Nodes keep only the hashes, so reading an auth file
//! does not give anyone a token. Tokens travel as `Authorization: Bearer TOKEN`
//! (`--token`, checked here by [`parse_token`]).

use std::fmt::Write as _;
use std::io::BufRead as _;

use anyhow::Context as _;
use base64::Engine as _;
use rand::TryRngCore as _;
use sha2::{Digest as _, Sha256};

use crate::cli::AuthCommand;
use crate::error::CliError;
use crate::output::Outcome;

/// Random bytes in a new token: 256 bits, beyond guessing.
pub const TOKEN_BYTES: usize = 32;

/// Runs one `kv auth` subcommand.
pub fn run(command: &AuthCommand) -> Result<Outcome, CliError> {
    match command {
        AuthCommand::HashToken(args) => {
            let token = if args.token == "-" {
                read_token_from_stdin()?
            } else {
                args.token.clone()
            };
            Ok(Outcome::TokenHash(token_hash(&token)))
        }
        AuthCommand::NewToken => {
            let token = new_token()?;
            let hash = token_hash(&token);
            Ok(Outcome::NewToken { token, hash })
        }
    }
}

/// `token`'s line in an auth file: `sha256:` and the lowercase hex of SHA-256 of its bytes.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest
        .iter()
        .fold(String::from("sha256:"), |mut line, byte| {
            let _ = write!(line, "{byte:02x}");
            line
        })
}

/// A fresh token: `kv_` and [`TOKEN_BYTES`] from the operating system's random source in
/// URL-safe base64 without padding (46 characters, all safe in a header, a URL or a shell;
/// the prefix keeps it from starting with `-`, which a command line would take for a flag).
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .context("reading the system's random source")?;
    Ok(format!(
        "kv_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Checks a token for `--token` and `hash-token`: printable ASCII without spaces, the only
/// tokens an `Authorization` header carries intact.
pub fn parse_token(input: &str) -> Result<String, String> {
    if input.is_empty() || !input.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token is printable ASCII without spaces".to_owned());
    }
    Ok(input.to_owned())
}

fn read_token_from_stdin() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the token from stdin")?;
    let token = line.trim_end_matches(['\n', '\r']);
    parse_token(token).map_err(|why| CliError::Failed(anyhow::anyhow!("the token on stdin: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_in_lowercase_hex() {
        assert_eq!(
            token_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            token_hash(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn new_tokens_are_random_url_safe_and_valid() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 46);
        assert!(a.starts_with("kv_"));
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(parse_token(&a), Ok(a));
    }

    #[test]
    fn tokens_with_spaces_or_non_ascii_are_refused() {
        for bad in ["", "a b", "ü", "tab\t", "\n"] {
            assert!(parse_token(bad).is_err(), "{bad:?}");
        }
    }
}
