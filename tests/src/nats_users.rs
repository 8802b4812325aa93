//! The NATS users of the shipped `nats.conf` and their passwords, so a stack can run on a
//! server that requires them. scripts/test.sh exports the passwords it generated
//! (`ALLO_NATS_<ROLE>_PASSWORD`); a NATS without auth ignores them.

use std::collections::HashMap;

/// Service roles of nats.conf, each with its own user `allo-<role>`.
pub const ROLES: [&str; 5] = ["api", "workers", "fanout", "subscriber", "admin"];

/// Role -> password. Empty: connect without credentials.
#[derive(Clone, Debug, Default)]
pub struct NatsUsers(HashMap<String, String>);

impl NatsUsers {
    /// The passwords scripts/test.sh exported, if any.
    pub fn from_env() -> Self {
        Self(
            ROLES
                .iter()
                .filter_map(|role| {
                    let password = std::env::var(password_var(role)).ok()?;
                    Some((role.to_string(), password))
                })
                .collect(),
        )
    }

    /// Fresh random passwords for every role (a test's own server). nats-server parses the
    /// value as a config value: the leading letters keep it a string, never a number.
    pub fn generated() -> Self {
        Self(
            ROLES
                .iter()
                .map(|role| {
                    (
                        role.to_string(),
                        format!("pw{}", uuid::Uuid::new_v4().simple()),
                    )
                })
                .collect(),
        )
    }

    pub fn password(&self, role: &str) -> Option<&str> {
        self.0.get(role).map(String::as_str)
    }

    /// What a server started from nats.conf needs in its environment.
    pub fn server_env(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(role, password)| (password_var(role), password.clone()))
            .collect()
    }

    /// `ALLO_NATS_USER` / `ALLO_NATS_PASSWORD` for the service binary `bin` (`allo-api`, ...).
    pub fn service_env(&self, bin: &str) -> Vec<(String, String)> {
        let role = bin.strip_prefix("allo-").unwrap_or(bin);
        match self.password(role) {
            Some(password) => vec![
                ("ALLO_NATS_USER".into(), format!("allo-{role}")),
                ("ALLO_NATS_PASSWORD".into(), password.to_string()),
            ],
            None => Vec::new(),
        }
    }

    /// Connects as `role` (without credentials when none is known), with that user's inbox
    /// prefix as the services use it.
    pub async fn connect(
        &self,
        url: &str,
        role: &str,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        match self.password(role) {
            Some(password) => {
                let user = format!("allo-{role}");
                async_nats::ConnectOptions::with_user_and_password(
                    user.clone(),
                    password.to_string(),
                )
                .custom_inbox_prefix(allo_common::jetstream::inbox_prefix(&user))
                .connect(allo_common::jetstream::server_list(url))
                .await
            }
            None => async_nats::connect(allo_common::jetstream::server_list(url)).await,
        }
    }
}

fn password_var(role: &str) -> String {
    format!("ALLO_NATS_{}_PASSWORD", role.to_ascii_uppercase())
}
