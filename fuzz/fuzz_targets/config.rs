//! Config and policy loading (`config::build`: files → YAML → raw config → compiled snapshot).
//! The input is the config file's text, then a NUL byte, then one policy file's text; both are
//! written to a temporary directory (the only entry point reads files) and compiled the way
//! `portcullis check` does, with no async runtime.
//!
//! Contract: never panics and never hangs: every input is either a snapshot or diagnostics,
//! each naming a file and a message, with a line that exists in that file.
//!
//! Inputs naming device, proc or sys files are skipped: what a config points to (certificates,
//! key files) is not what this target fuzzes, and `/dev/zero` would only measure memory.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

struct Dir {
    _dir: tempfile::TempDir,
    config: PathBuf,
    policy: PathBuf,
}

fn dir() -> &'static Dir {
    static DIR: OnceLock<Dir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("policies")).expect("policy dir");
        Dir {
            config: dir.path().join("portcullis.yaml"),
            policy: dir.path().join("policies").join("10-rules.yaml"),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys", "/run"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    let (config, policy) = text.split_once('\0').unwrap_or((text, ""));
    let d = dir();
    std::fs::write(&d.config, config).expect("write config");
    std::fs::write(&d.policy, policy).expect("write policy");
    let diagnostics = match portcullis::config::build(&d.config, None) {
        Ok((_snapshot, warnings)) => warnings,
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a diagnostic");
            errors
        }
    };
    for diag in &diagnostics {
        assert!(!diag.message.is_empty(), "{diag:?}");
        let lines = if diag.file == d.config.display().to_string() {
            yaml_lines(config)
        } else if diag.file == d.policy.display().to_string() {
            yaml_lines(policy)
        } else {
            // Another file the config names (key files, API key files): not ours to count.
            continue;
        };
        assert!(
            diag.line <= lines + 1,
            "{diag:?}: the file has {lines} lines"
        );
    }
});

/// Lines as YAML counts them: a lone CR breaks a line too (YAML 1.2 §5.4), as it does for
/// the parser whose positions the diagnostics carry.
fn yaml_lines(text: &str) -> usize {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .lines()
        .count()
}
