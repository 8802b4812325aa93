//! `allo-fanout`: the Socket.IO server.

/// mimalloc instead of glibc's malloc: profiles of the open-loop benchmark showed a fifth of
/// this service's CPU in glibc's malloc/free (many small, short-lived buffers per message).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_arena_eager_commit` (its header's enum; the Rust bindings name no
/// constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets mimalloc's options before anything allocates: the first allocation reserves mimalloc's
/// first arena with the options of that moment, and Rust's runtime allocates before `main`.
/// Commit arena memory as it is used, not up front: with eager commit, mimalloc on Linux never
/// gives back the pages that connection set-up used and freed, which held ~8 KB per idle socket
/// and 10 MB at start (bench/README.md, "Where a socket's memory goes").
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

#[cfg(target_os = "linux")]
extern "C" fn allocator_options() {
    // SAFETY: stores one option value; runs before `main`, on the only thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

fn main() -> anyhow::Result<()> {
    allo_common::telemetry::init();
    let settings = allo_common::Settings::load()?;
    allo_common::runtime::build(&settings)?.block_on(allo_fanout::serve(
        settings,
        allo_common::telemetry::shutdown_signal(),
    ))
}
