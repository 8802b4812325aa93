//! `sqlx::migrate!` embeds `migrations/` at compile time, and cargo does not see a new file
//! there by itself: without this, adding a migration could build binaries that lack it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
