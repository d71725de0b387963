//! Where the node's listening sockets come from: bound here from `--listen` / `--listen-peer`,
//! or inherited from the process that started this one (systemd socket activation:
//! `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`); and the report of the addresses they are
//! bound to (`--listen-addr-file`), for whoever started the node on port 0.
//!
//! An inherited socket stands in for the node's own bind, so it must be bound to the address
//! the flag names (any port, if the flag says port 0): the advertised addresses and the cluster
//! map are checked against the flags before anything listens.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::config::Config;

/// The `LISTEN_FDNAMES` names of the two listeners.
const CLIENTS: &str = "clients";
const PEERS: &str = "peers";

/// Listening sockets the process that started this one handed over.
#[derive(Debug, Default)]
pub struct Inherited {
    clients: Option<std::net::TcpListener>,
    peers: Option<std::net::TcpListener>,
}

impl Inherited {
    /// No inherited sockets: the node binds its own.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// Take the TCP sockets passed by the systemd protocol: `LISTEN_FDS` of them from fd 3 on,
    /// for this process if `LISTEN_PID` names one. Named `clients` and `peers` in
    /// `LISTEN_FDNAMES`, or else the first serves clients and the second peers.
    ///
    /// It clears those variables, as the protocol asks, so call it before other threads start.
    pub fn from_env() -> anyhow::Result<Inherited> {
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        std::env::remove_var("LISTEN_FDNAMES");
        let names: Vec<&str> = names.split(':').collect();
        let mut inherited = Inherited::default();
        for (index, role) in roles(fds.len(), &names)?.into_iter().enumerate() {
            let fd = index + 3;
            let socket = fds
                .take_tcp_listener(index)
                .with_context(|| format!("inherited fd {fd} ({role})"))?
                .ok_or_else(|| anyhow!("inherited fd {fd} ({role}) was already taken"))?;
            let slot = match role {
                CLIENTS => &mut inherited.clients,
                _ => &mut inherited.peers,
            };
            if slot.replace(socket).is_some() {
                bail!("two inherited sockets are named {role:?} (LISTEN_FDNAMES)");
            }
        }
        Ok(inherited)
    }
}

/// The role of each of `count` inherited sockets: by their names when every one is named
/// `clients` or `peers`, else by position (systemd names unnamed sockets after their unit).
fn roles<'a>(count: usize, names: &[&'a str]) -> anyhow::Result<Vec<&'a str>> {
    if count > 2 {
        bail!("{count} sockets inherited (LISTEN_FDS); kv-node takes at most two: clients, then peers");
    }
    let named = names.len() == count && names.iter().all(|n| *n == CLIENTS || *n == PEERS);
    Ok(match named {
        true => names.to_vec(),
        false => [CLIENTS, PEERS][..count].to_vec(),
    })
}

/// The node's listeners, bound or inherited.
pub(crate) struct Listeners {
    pub clients: TcpListener,
    /// With a peer listener apart (`--listen-peer`).
    pub peers: Option<TcpListener>,
    /// Which of them came from the parent process, for the startup line: `clients`, `peers`,
    /// `clients,peers` or `none`.
    pub inherited: &'static str,
}

impl Listeners {
    /// Take the inherited sockets the configuration has a listener for and bind the others.
    pub async fn open(config: &Config, inherited: Inherited) -> anyhow::Result<Listeners> {
        let Inherited { clients, peers } = inherited;
        if peers.is_some() && config.listen_peer.is_none() {
            bail!("a socket for peers was inherited, but --listen-peer is not set (give it the socket's address)");
        }
        let from_parent = (clients.is_some(), peers.is_some());
        let clients = match clients {
            Some(socket) => adopt(socket, CLIENTS, "--listen", config.listen)?,
            None => TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?,
        };
        let peers = match (config.listen_peer, peers) {
            (Some(at), Some(socket)) => Some(adopt(socket, PEERS, "--listen-peer", at)?),
            (Some(at), None) => Some(
                TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen for peers on {at}"))?,
            ),
            (None, _) => None,
        };
        let inherited = match from_parent {
            (true, true) => "clients,peers",
            (true, false) => CLIENTS,
            (false, true) => PEERS,
            (false, false) => "none",
        };
        Ok(Listeners {
            clients,
            peers,
            inherited,
        })
    }
}

/// An inherited socket as the listener `flag` configures at `at`.
fn adopt(
    socket: std::net::TcpListener,
    role: &str,
    flag: &str,
    at: SocketAddr,
) -> anyhow::Result<TcpListener> {
    let bound = socket.local_addr()?;
    let fits = bound == at || (at.port() == 0 && bound.ip() == at.ip());
    if !fits {
        bail!("the inherited {role} socket is bound to {bound}, but {flag} is {at}: give {flag} the socket's address");
    }
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket)?)
}

/// What `--listen-addr-file` holds once the node listens: the bound addresses.
#[derive(Debug, Serialize)]
pub(crate) struct ListenAddrs {
    pub listen: SocketAddr,
    pub listen_peer: Option<SocketAddr>,
}

impl ListenAddrs {
    /// Remove a file left by an earlier run, so that whoever waits for it never reads an old
    /// address.
    pub async fn clear(path: &Path) -> anyhow::Result<()> {
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Write the file whole or not at all (a temporary beside it, renamed), so a reader that
    /// sees it can parse it.
    pub async fn write(&self, path: &Path) -> anyhow::Result<()> {
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("--listen-addr-file {} names no file", path.display()))?;
        let mut temporary = name.to_os_string();
        temporary.push(".tmp");
        let temporary = path.with_file_name(temporary);
        let json = serde_json::to_vec(self)?;
        tokio::fs::write(&temporary, json)
            .await
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        tokio::fs::rename(&temporary, path).await.with_context(|| {
            format!(
                "cannot rename {} to {}",
                temporary.display(),
                path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_sockets_take_their_roles_by_name_or_else_by_position() {
        assert_eq!(roles(0, &[""]).unwrap(), Vec::<&str>::new());
        assert_eq!(roles(1, &[""]).unwrap(), [CLIENTS]);
        assert_eq!(roles(2, &["peers", "clients"]).unwrap(), [PEERS, CLIENTS]);
        assert_eq!(roles(1, &["peers"]).unwrap(), [PEERS]);
        // systemd's default names (the unit's), or too few names: by position.
        assert_eq!(
            roles(2, &["kv.socket", "kv.socket"]).unwrap(),
            [CLIENTS, PEERS]
        );
        assert_eq!(roles(2, &["peers"]).unwrap(), [CLIENTS, PEERS]);
        assert!(roles(3, &[""]).is_err());
    }

    #[test]
    fn an_inherited_socket_must_be_where_its_flag_says() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = socket.local_addr().unwrap();
        let elsewhere = SocketAddr::from(([127, 0, 0, 1], bound.port() ^ 1));
        let err = adopt(socket.try_clone().unwrap(), CLIENTS, "--listen", elsewhere)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--listen"), "{err}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(adopt(socket.try_clone().unwrap(), CLIENTS, "--listen", bound).is_ok());
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        assert!(adopt(socket, CLIENTS, "--listen", any_port).is_ok());
    }
}
