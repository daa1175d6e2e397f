//! Build script: rebuild when a migration is added (`sqlx::migrate!` embeds each backend's
//! folder at compile time), and stamp the git commit into `--version` and `quo_sync_build_info`.
//!
//! The commit comes from `QUO_SYNC_GIT_COMMIT` when set (a container build has no `.git`: pass
//! it as a build argument), else from `git`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=migrations/sqlite");
    println!("cargo:rerun-if-changed=migrations/postgres");
    println!("cargo:rerun-if-env-changed=QUO_SYNC_GIT_COMMIT");
    let commit = std::env::var("QUO_SYNC_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself and the branch file it points at.
            if let Some(file) = git(&["rev-parse", "--git-path", "HEAD"]) {
                println!("cargo:rerun-if-changed={file}");
            }
            if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(file) = git(&["rev-parse", "--git-path", &reference])
            {
                println!("cargo:rerun-if-changed={file}");
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=QUO_SYNC_GIT_COMMIT={commit}");
}
