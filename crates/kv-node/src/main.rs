//! `kv-node`: parse configuration, set up logging, run the node.

use clap::Parser;
use kv_node::{Config, Flags};

/// mimalloc instead of glibc's malloc: a node allocates per request, per Raft message and per
/// entry across its threads, and glibc's arenas spent about an eighth of its CPU on that
/// (`scripts/profile.sh`: `_int_malloc`, `malloc_consolidate`, `unlink_chunk`...).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before the runtime's threads exist: taking the sockets clears their environment variables.
    let inherited = match kv_node::Inherited::from_env() {
        Ok(sockets) => sockets,
        Err(e) => {
            eprintln!("error: cannot take the inherited sockets: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(node_main(inherited));
    // Blocking tasks still running (a DNS lookup of an unreachable peer, say) must not hold up
    // the exit once the node has shut down.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn node_main(inherited: kv_node::Inherited) -> std::process::ExitCode {
    let flags = Flags::parse();
    let config = match Config::from_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    kv_node::logging::init(&config.log);
    match kv_node::run(config, inherited).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
