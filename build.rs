// Rebuild when a migration is added: `sqlx::migrate!` embeds each backend's folder at compile time.
fn main() {
    println!("cargo:rerun-if-changed=migrations/sqlite");
    println!("cargo:rerun-if-changed=migrations/postgres");
}
