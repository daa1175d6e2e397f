//! Runs the Quo sandbox from a shell, for demos and manual testing with curl.
//!
//! `cargo run --example quo_sandbox -- [ADDR] [API_KEY]` (defaults `127.0.0.1:8787`,
//! `sandbox-key`), then e.g.:
//!
//! ```text
//! curl -s -H 'Authorization: sandbox-key' 'http://127.0.0.1:8787/v1/contacts?maxResults=5'
//! curl -s -XPOST localhost:8787/_sandbox/settings -d '{"patch_mode":"replace"}'
//! curl -s -XPOST localhost:8787/_sandbox/faults -d '{"kind":"drop_after_write","count":1}'
//! curl -s localhost:8787/_sandbox/stats
//! ```

use quo_sync::sandbox::{SandboxConfig, SandboxHandle};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "quo_sync=debug".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8787".to_string())
        .parse()
        .map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad address: {e}"),
            )
        })?;
    let mut config = SandboxConfig::default();
    if let Some(key) = args.next() {
        config.api_key = key;
    }
    let sandbox = SandboxHandle::start_on(config, addr).await?;
    println!("Quo sandbox on {} (Ctrl-C to stop)", sandbox.base_url());
    tokio::signal::ctrl_c().await?;
    sandbox.shutdown().await;
    Ok(())
}
