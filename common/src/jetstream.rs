//! Stream and consumer provisioning, idempotent at every start: creates what is missing and
//! updates what exists, so a config change takes effect on the next start of any binary.
//!
//! nats-server 2.9 silently ignores several newer settings; only settings 2.9 honours are used.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use crate::config::Settings;
use crate::ops::Pool;
use crate::partition::Partition;
use crate::subjects::Subjects;

#[derive(Debug, thiserror::Error)]
#[error("could not provision {what}: {source}")]
pub struct ProvisionError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn failed<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
) -> impl FnOnce(E) -> ProvisionError {
    let what = what.to_string();
    move |e| ProvisionError {
        what,
        source: Box::new(e),
    }
}

/// The command stream: work-queue retention (a command is gone once acked), file storage,
/// a duplicate window for `Nats-Msg-Id`, and a bound on the backlog (new commands are refused,
/// not old ones dropped, when it is full).
pub fn command_stream_config(settings: &Settings, subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: subjects.command_stream(),
        description: Some("Allo commands, consumed by the worker pools".into()),
        subjects: vec![subjects.all_commands()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_messages: settings.jetstream.command_max_messages,
        max_message_size: (settings.limits.body_max_bytes * 2) as i32,
        duplicate_window: Duration::from_secs(settings.jetstream.duplicate_window_secs),
        num_replicas: settings.jetstream.replicas,
        ..Default::default()
    }
}

/// The event stream: limits retention with a max age; the Postgres event log is the record,
/// this is the feed. Holds conversation events and user-addressed notices.
pub fn event_stream_config(settings: &Settings, subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: subjects.event_stream(),
        description: Some("Allo committed events, per conversation and per user".into()),
        subjects: vec![
            subjects.all_events(),
            subjects.all_users(),
            subjects.all_moderators(),
        ],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(settings.jetstream.event_max_age_secs),
        duplicate_window: Duration::from_secs(120),
        num_replicas: settings.jetstream.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// The rate-limit stream: one subject per (user, window), at most `rate_max_per_window`
/// messages each, new ones refused (`discard_new_per_subject`), gone after two windows. A
/// refused publish is a request over the limit, on any replica. File storage, so budgets and
/// the stream itself survive a NATS restart.
pub fn rate_stream_config(settings: &Settings, subjects: &Subjects) -> stream::Config {
    let window = Duration::from_secs(settings.limits.rate_window_secs.max(1));
    stream::Config {
        name: subjects.rate_stream(),
        description: Some("Allo per-user command rate counters".into()),
        subjects: vec![subjects.all_rates()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        // One message is a lease of several tokens (see `ingress::lease_size`).
        max_messages_per_subject: settings.limits.rate_max_per_window
            / crate::ingress::lease_size(settings.limits.rate_max_per_window) as i64,
        max_age: window * 2,
        duplicate_window: window,
        num_replicas: settings.jetstream.replicas,
        ..Default::default()
    }
}

/// One partition of a pool: a durable pull consumer, served by one of the pool's processes at a
/// time (crate::partition). `max_deliver` is one more than the configured deliveries: the
/// extra delivery only dead-letters the command, so a command that crashes its worker every
/// time still ends with a readable status. `max_ack_pending` applies to each partition.
pub fn partition_consumer_config(
    settings: &Settings,
    subjects: &Subjects,
    pool: Pool,
    partition: Partition,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects.partition_consumer(pool, partition)),
        description: Some(format!(
            "Allo {} pool, partition {partition}",
            pool.as_str()
        )),
        filter_subject: subjects.partition_commands(pool, partition),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait(),
        max_deliver: settings.jetstream.max_deliver + 1,
        max_ack_pending: settings.jetstream.max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), ProvisionError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(_) => {
            js.update_stream(config)
                .await
                .map_err(failed(&format!("stream {name}")))?;
        }
        Err(e) if is_stream_not_found(&e) => {
            js.create_stream(config)
                .await
                .map_err(failed(&format!("stream {name}")))?;
        }
        Err(e) => return Err(failed(&format!("stream {name}"))(e)),
    }
    Ok(())
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// How long a starting service keeps trying to provision before it gives up. Right after a
/// JetStream cluster elects its leaders (a fresh start, a node coming back, a quorum lost for
/// a moment) creating replicated streams fails or times out for a few seconds, and services
/// starting together can race to create the same stream; a service that exited on the first
/// failure needed a supervisor to come up at all.
const PROVISION_PATIENCE: Duration = Duration::from_secs(60);

/// What a starting service provisions. Every service needs the streams; only workers pull
/// commands, so only they create the pools' consumers (a work-queue stream keeps what is
/// published before then). Services starting together therefore do not all race to create
/// the same consumers, and a worker of a newer version owns their configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provision {
    Streams,
    StreamsAndConsumers,
}

/// Creates or updates the streams and, for [`Provision::StreamsAndConsumers`], every partition
/// consumer of every pool, retrying with back-off for up to [`PROVISION_PATIENCE`].
pub async fn provision(
    js: &jetstream::Context,
    settings: &Settings,
    what: Provision,
) -> Result<(), ProvisionError> {
    let deadline = tokio::time::Instant::now() + PROVISION_PATIENCE;
    let mut pause = Duration::from_millis(250);
    loop {
        match provision_once(js, settings, what).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot provision JetStream yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn provision_once(
    js: &jetstream::Context,
    settings: &Settings,
    what: Provision,
) -> Result<(), ProvisionError> {
    let subjects = Subjects::of(settings);
    ensure_stream(js, command_stream_config(settings, &subjects)).await?;
    ensure_stream(js, event_stream_config(settings, &subjects)).await?;
    ensure_stream(js, rate_stream_config(settings, &subjects)).await?;
    if what == Provision::Streams {
        return Ok(());
    }
    let stream = js
        .get_stream(subjects.command_stream())
        .await
        .map_err(failed("command stream"))?;
    for pool in Pool::ALL {
        // A work-queue stream refuses overlapping filters: the unpartitioned consumer of
        // earlier versions goes first (drain before upgrading: docs/scaling.md).
        let _ = stream
            .delete_consumer(&subjects.legacy_pool_consumer(pool))
            .await;
        for partition in subjects.all_partitions() {
            // On 2.9 creating an existing durable updates it, which is what a restart wants.
            stream
                .create_consumer(partition_consumer_config(
                    settings, &subjects, pool, partition,
                ))
                .await
                .map_err(failed(&format!(
                    "consumer {}",
                    subjects.partition_consumer(pool, partition)
                )))?;
        }
    }
    Ok(())
}

/// `_INBOX_<user>`: the reply subjects of one NATS user (see nats.conf).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// Connects to NATS with a name that shows in `nats-server` monitoring, as this service's
/// NATS user when one is configured.
pub async fn connect(
    settings: &Settings,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = if settings.nats_user.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        // Each service's replies come to its own inbox prefix, which nats.conf lets only that
        // user subscribe to: nobody else can read a worker's pulled commands off `_INBOX.>`.
        async_nats::ConnectOptions::with_user_and_password(
            settings.nats_user.clone(),
            settings.nats_password.clone(),
        )
        .custom_inbox_prefix(inbox_prefix(&settings.nats_user))
    };
    options
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(server_list(&settings.nats_url))
        .await
}

/// `ALLO_NATS_URL` may list several servers, comma-separated, as NATS tools take them: a
/// service then starts (and reconnects) through any node of a cluster that answers, not only
/// the first. async-nats parses a `&str` as one address, so the list is split here.
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::server_list;

    #[test]
    fn a_comma_separated_nats_url_is_every_server_of_the_list() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4223,nats://c:4224"),
            ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
        assert_eq!(server_list("nats://a:4222"), ["nats://a:4222"]);
    }
}
