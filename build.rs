//! `embed_migrations!` reads `migrations/` at compile time but cargo does not
//! know that, so a new migration file would otherwise not trigger a rebuild.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
