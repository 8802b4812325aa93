//! What one API replica takes on at once: a global cap on requests in flight (past it, 503
//! `overloaded` at once instead of queueing), a timeout on every request, a per-user cap on
//! held `Prefer: wait` requests, and a per-user read budget. Health routes are exempt so probes
//! see the truth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allo_common::ids::UserId;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Shared by every request of the replica.
pub struct Admission {
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    waits: Mutex<HashMap<UserId, usize>>,
    waits_per_user: usize,
    reads: Mutex<HashMap<UserId, Bucket>>,
    reads_per_sec: f64,
    reads_burst: f64,
}

/// A token bucket: `tokens` as of `at`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Users' read buckets kept before full ones are forgotten (a full bucket is the same as none).
const READ_BUCKETS_KEPT: usize = 10_000;

impl Admission {
    pub fn new(limits: &allo_common::config::Limits) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(limits.api_max_in_flight)),
            timeout: Duration::from_secs(limits.request_timeout_secs),
            waits: Mutex::default(),
            waits_per_user: limits.waits_per_user,
            reads: Mutex::default(),
            reads_per_sec: f64::from(limits.reads_per_user_per_sec),
            reads_burst: f64::from(limits.reads_burst),
        }
    }

    /// Spends one of `user`'s read tokens; `Err(seconds)` until the next one when none is left.
    pub fn take_read(&self, user: &UserId) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(mut reads) = self.reads.lock() else {
            return Ok(());
        };
        if reads.len() >= READ_BUCKETS_KEPT {
            let (rate, burst) = (self.reads_per_sec, self.reads_burst);
            reads.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = reads.entry(user.clone()).or_insert(Bucket {
            tokens: self.reads_burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.reads_per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.reads_burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.reads_per_sec).ceil().max(1.0) as u64)
        }
    }

    /// A slot for one held `Prefer: wait`, released when dropped; `None` when the user holds
    /// `waits_per_user` already (the request is then answered without waiting).
    pub fn hold_wait(self: &Arc<Self>, user: &UserId) -> Option<WaitSlot> {
        let mut waits = self.waits.lock().ok()?;
        let held = waits.entry(user.clone()).or_default();
        if *held >= self.waits_per_user {
            return None;
        }
        *held += 1;
        Some(WaitSlot {
            admission: self.clone(),
            user: user.clone(),
        })
    }
}

pub struct WaitSlot {
    admission: Arc<Admission>,
    user: UserId,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        if let Ok(mut waits) = self.admission.waits.lock()
            && let Some(held) = waits.get_mut(&self.user)
        {
            *held = held.saturating_sub(1);
            if *held == 0 {
                waits.remove(&self.user);
            }
        }
    }
}

/// The middleware: cap, then timeout.
pub async fn admit(
    State(admission): State<Arc<Admission>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    let Ok(_permit) = admission.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("allo_http_overloaded_total").increment(1);
        return ApiError::Overloaded.into_response();
    };
    match tokio::time::timeout(admission.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut.into_response(),
    }
}
