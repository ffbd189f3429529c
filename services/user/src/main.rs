//! The user service on its own, `user-service`: with no command it migrates (unless
//! `MIGRATE_ON_START=false`) and serves until SIGTERM; `--help` lists the others
//! (`common::service`).

/// The allocator of every binary of ours (why: `shop`'s `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::service::main::<user::Config>().await
}
