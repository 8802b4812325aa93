//! `allo-api`: serves the HTTP API, or (`allo-api token <user>`) prints a dev token.

use allo_common::Settings;
use allo_common::auth::TokenKeys;
use allo_common::config::Environment;
use allo_common::ids::UserId;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "allo-api", about = "Allo HTTP ingress")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a bearer token for USER signed with the configured secret (for development).
    Token {
        user: String,
        /// Roles to put in the token (e.g. `moderator`); repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Hours until the token expires.
        #[arg(long, default_value_t = 24)]
        ttl_hours: i64,
    },
}

/// mimalloc instead of glibc's malloc: profiles of the open-loop benchmark showed a fifth of
/// this service's CPU in glibc's malloc/free (many small, short-lived buffers per message).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    match cli.command {
        Some(Cmd::Token {
            user,
            roles,
            ttl_hours,
        }) => {
            let user = UserId::parse(&user).map_err(|e| anyhow::anyhow!("user: {e}"))?;
            // Minting is a dev tool: outside dev mode tokens come from the identity provider.
            if settings.environment != Environment::Dev {
                anyhow::bail!(
                    "allo-api token mints tokens in dev mode only (ALLO_ENVIRONMENT=dev)"
                );
            }
            let keys = TokenKeys::from_settings(&settings)?;
            println!(
                "{}",
                keys.mint(&user, &roles, chrono::Duration::hours(ttl_hours))?
            );
            Ok(())
        }
        None => {
            allo_common::telemetry::init();
            allo_common::runtime::build(&settings)?.block_on(allo_api::serve(
                settings,
                allo_common::telemetry::shutdown_signal(),
            ))
        }
    }
}
