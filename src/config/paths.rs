//! Relative paths in the configuration (`source.path`, `ledger.path`, every `*_file`) name
//! files beside the configuration file, not in whatever folder the process was started from:
//! a container, a systemd unit and a shell in another folder then read the same files.
//!
//! This changed in 0.2 (#22). A path that worked before keeps working: when the file is not
//! beside the configuration but is in the working directory, that one is used and a warning
//! says so (`path_from_working_directory`), so the operator can fix the config at leisure.

use std::path::{Path, PathBuf};

/// Where one configured path was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPath {
    /// The dotted key (`source.path`, `source.rest.auth.token_file`).
    pub key: String,
    /// The path as used.
    pub path: PathBuf,
    /// True when the file was found only relative to the working directory (the old rule).
    pub from_working_directory: bool,
}

/// Resolves `path` (the value of `key`) against `base`, the configuration file's folder;
/// falls back to `cwd` when only that holds the file.
pub fn resolve(base: &Path, cwd: &Path, key: &str, path: &Path) -> ResolvedPath {
    if path.is_absolute() {
        return ResolvedPath {
            key: key.to_string(),
            path: path.to_path_buf(),
            from_working_directory: false,
        };
    }
    let beside_config = base.join(path);
    let in_cwd = cwd.join(path);
    let fallback = !beside_config.exists() && in_cwd.exists() && beside_config != in_cwd;
    ResolvedPath {
        key: key.to_string(),
        path: if fallback { in_cwd } else { beside_config },
        from_working_directory: fallback,
    }
}

/// Resolves every string value under a key ending in `_file` in `table` (the REST source's
/// table, whose keys the REST adapter defines), recording each under `prefix.key`.
pub fn resolve_table(
    base: &Path,
    cwd: &Path,
    prefix: &str,
    table: &mut toml::Table,
    out: &mut Vec<ResolvedPath>,
) {
    for (name, value) in table.iter_mut() {
        let key = format!("{prefix}.{name}");
        match value {
            toml::Value::Table(inner) => resolve_table(base, cwd, &key, inner, out),
            toml::Value::String(text) if name.ends_with("_file") && !text.trim().is_empty() => {
                let resolved = resolve(base, cwd, &key, Path::new(text.trim()));
                *text = resolved.path.display().to_string();
                out.push(resolved);
            }
            _ => {}
        }
    }
}

/// The folder relative paths are read against: the configuration file's own (absolute).
pub fn config_dir(file: &Path, cwd: &Path) -> PathBuf {
    let absolute = cwd.join(file);
    match absolute.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => cwd.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_beside_the_config_and_fall_back_to_the_working_directory() {
        let config = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        std::fs::write(config.path().join("both.csv"), "").unwrap();
        std::fs::write(cwd.path().join("both.csv"), "").unwrap();
        std::fs::write(cwd.path().join("old.csv"), "").unwrap();
        let (base, cwd) = (config.path(), cwd.path());
        let both = resolve(base, cwd, "source.path", Path::new("both.csv"));
        assert_eq!(both.path, base.join("both.csv"));
        assert!(!both.from_working_directory);
        let old = resolve(base, cwd, "source.path", Path::new("old.csv"));
        assert_eq!(
            old.path,
            cwd.join("old.csv"),
            "a path that worked keeps working"
        );
        assert!(old.from_working_directory);
        let new = resolve(base, cwd, "ledger.path", Path::new("data/ledger.db"));
        assert_eq!(
            new.path,
            base.join("data/ledger.db"),
            "a new file goes beside the config"
        );
        let absolute = resolve(base, cwd, "ledger.path", Path::new("/var/lib/q.db"));
        assert_eq!(absolute.path, Path::new("/var/lib/q.db"));
        assert_eq!(
            config_dir(Path::new("quo-sync.toml"), cwd),
            cwd.to_path_buf()
        );
        assert_eq!(
            config_dir(Path::new("config/quo-sync.toml"), cwd),
            cwd.join("config")
        );
    }

    #[test]
    fn file_keys_in_the_rest_table_are_resolved() {
        let base = Path::new("/etc/quo-sync");
        let mut table: toml::Table = toml::from_str(
            "base_url = \"https://crm\"\n[auth]\nkind = \"bearer\"\ntoken_file = \"secrets/token\"\n",
        )
        .unwrap();
        let mut out = Vec::new();
        resolve_table(
            base,
            Path::new("/nowhere"),
            "source.rest",
            &mut table,
            &mut out,
        );
        assert_eq!(
            table["auth"]["token_file"].as_str(),
            Some("/etc/quo-sync/secrets/token")
        );
        assert_eq!(out[0].key, "source.rest.auth.token_file");
        assert_eq!(table["base_url"].as_str(), Some("https://crm"));
    }
}
