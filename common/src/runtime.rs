//! The tokio runtime every binary runs on, sized by `Settings::runtime_threads`.
//!
//! A binary loads its settings first, then builds the runtime from them, so the thread count
//! lives in the same configuration as everything else (`ALLO_RUNTIME_THREADS`).

use crate::Settings;

/// A multi-threaded runtime with I/O and timers: `runtime_threads` workers, or one per core
/// when it is 0.
pub fn build(settings: &Settings) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if settings.runtime_threads > 0 {
        builder.worker_threads(settings.runtime_threads);
    }
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_has_the_configured_number_of_workers() {
        let settings = Settings {
            runtime_threads: 1,
            ..Settings::default()
        };
        let runtime = build(&settings).expect("runtime");
        assert_eq!(runtime.metrics().num_workers(), 1);
        let settings = Settings {
            runtime_threads: 3,
            ..Settings::default()
        };
        assert_eq!(
            build(&settings).expect("runtime").metrics().num_workers(),
            3
        );
    }
}
