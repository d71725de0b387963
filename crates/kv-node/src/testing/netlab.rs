//! A network of hosts on one machine for partition tests: one network namespace per node,
//! each with its own address on a bridge that lives in a namespace of its own (the "hub"), and
//! one more link from the test process's namespace to the hub so the test reaches every node.
//! Cutting a node off drops its packets to and from its peers with iptables inside its
//! namespace (dropped, not refused: the peers see silence, as with a pulled cable), while the
//! test can still talk to it.
//!
//! Needs root, `ip` (iproute2) and `iptables`; [`NetLab::available`] says whether this machine
//! has them. Everything is deleted on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// The namespaces, links and addresses of one test cluster.
pub struct NetLab {
    tag: String,
    /// The first three octets of the lab's /24 subnet.
    subnet: String,
    nodes: Vec<u64>,
}

/// Names are short (interface names have at most 15 bytes) and unique per process and lab.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetLab {
    /// Whether this machine can build a lab (root, iproute2, iptables).
    pub fn available() -> bool {
        let probe = format!("kvprobe{}", std::process::id() % 100_000);
        let ok = run(&["ip", "netns", "add", &probe]).is_ok()
            && run(&["ip", "netns", "exec", &probe, "iptables", "-L", "-n"]).is_ok();
        let _ = run(&["ip", "netns", "del", &probe]);
        ok
    }

    /// A hub and one namespace per node id, each node at [`NetLab::ip`].
    pub fn new(nodes: &[u64]) -> Result<NetLab> {
        let seq = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = NetLab {
            tag: format!("{:x}{seq:x}", pid % 0x10000),
            subnet: format!("10.{}.{}", 100 + (pid / 256) % 100, (pid % 256 + seq) % 256),
            nodes: nodes.to_vec(),
        };
        lab.build().inspect_err(|_| lab.teardown())?;
        Ok(lab)
    }

    fn hub(&self) -> String {
        format!("kv{}h", self.tag)
    }

    /// The namespace of node `id`.
    pub fn namespace(&self, id: u64) -> String {
        format!("kv{}n{id}", self.tag)
    }

    /// Node `id`'s address.
    pub fn ip(&self, id: u64) -> String {
        format!("{}.{id}", self.subnet)
    }

    fn build(&self) -> Result<()> {
        let hub = self.hub();
        run(&["ip", "netns", "add", &hub])?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for id in &self.nodes {
            let ns = self.namespace(*id);
            let (outer, inner) = (
                format!("kv{}a{id}", self.tag),
                format!("kv{}b{id}", self.tag),
            );
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            run(&["ip", "link", "set", &outer, "netns", &hub])?;
            run(&["ip", "link", "set", &inner, "netns", &ns])?;
            run(&["ip", "-n", &hub, "link", "set", &outer, "master", "br0"])?;
            run(&["ip", "-n", &hub, "link", "set", &outer, "up"])?;
            let addr = format!("{}/24", self.ip(*id));
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            run(&["ip", "-n", &ns, "link", "set", &inner, "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        // The test process's own link into the hub.
        let (outer, inner) = (format!("kv{}r", self.tag), format!("kv{}t", self.tag));
        run(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        run(&["ip", "link", "set", &inner, "netns", &hub])?;
        run(&["ip", "-n", &hub, "link", "set", &inner, "master", "br0"])?;
        run(&["ip", "-n", &hub, "link", "set", &inner, "up"])?;
        let addr = format!("{}.254/24", self.subnet);
        run(&["ip", "addr", "add", &addr, "dev", &outer])?;
        run(&["ip", "link", "set", &outer, "up"])?;
        Ok(())
    }

    /// The command that runs `program` inside node `id`'s namespace.
    pub fn command(&self, id: u64, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns")
            .arg("exec")
            .arg(self.namespace(id))
            .arg(program);
        cmd
    }

    /// Drop every packet between node `id` and the other nodes, both ways; the test process
    /// still reaches it.
    pub fn isolate(&self, id: u64) -> Result<()> {
        let ns = self.namespace(id);
        for peer in self.nodes.iter().filter(|p| **p != id) {
            let ip = self.ip(*peer);
            run(&[
                "ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP",
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP",
            ])?;
        }
        Ok(())
    }

    /// Undo every [`NetLab::isolate`].
    pub fn heal(&self) -> Result<()> {
        for id in &self.nodes {
            run(&[
                "ip",
                "netns",
                "exec",
                &self.namespace(*id),
                "iptables",
                "-F",
            ])?;
        }
        Ok(())
    }

    fn teardown(&self) {
        let _ = run(&["ip", "link", "del", &format!("kv{}r", self.tag)]);
        for id in &self.nodes {
            let _ = run(&["ip", "netns", "del", &self.namespace(*id)]);
        }
        let _ = run(&["ip", "netns", "del", &self.hub()]);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.teardown();
    }
}
