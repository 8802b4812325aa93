//! `allo-fanout`: the Socket.IO server.

/// mimalloc instead of glibc's malloc: profiles of the open-loop benchmark showed a fifth of
/// this service's CPU in glibc's malloc/free (many small, short-lived buffers per message).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    allo_common::telemetry::init();
    let settings = allo_common::Settings::load()?;
    allo_fanout::serve(settings, allo_common::telemetry::shutdown_signal()).await
}
