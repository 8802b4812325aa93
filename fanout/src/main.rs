//! `allo-fanout`: the Socket.IO server.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    allo_common::telemetry::init();
    let settings = allo_common::Settings::load()?;
    allo_fanout::serve(settings, allo_common::telemetry::shutdown_signal()).await
}
