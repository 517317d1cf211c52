//! Files → raw config: reads the config file and every policy file, deserialises them and keeps
//! each file's text and location index for diagnostics. The only module that touches
//! serde_yaml (archived upstream; confined here so it can be replaced in one place).

use std::path::{Path, PathBuf};

use super::diagnostic::{Diagnostic, LocationIndex};
use super::raw::{RawConfig, RawPolicyFile};

/// One file that was read: its name for diagnostics, its text and where its fields are.
#[derive(Debug)]
pub struct Source {
    /// The path as shown to users (relative as given, never made absolute).
    pub display: String,
    /// The path to open.
    pub path: PathBuf,
    /// The file's contents.
    pub text: String,
    /// Field path → line and column.
    pub index: LocationIndex,
}

/// Everything read for one (re)load, before compilation.
#[derive(Debug)]
pub struct Loaded {
    /// Directory relative paths in the config are resolved against.
    pub base_dir: PathBuf,
    /// The gateway config file.
    pub config: Source,
    /// Its contents.
    pub raw: RawConfig,
    /// The policy directory.
    pub policy_dir: PathBuf,
    /// Policy files in evaluation order (by file name).
    pub policies: Vec<(Source, RawPolicyFile)>,
    /// Policy files that could not be read or parsed. Compilation goes on without them so
    /// that every other problem is reported too, and then fails.
    pub errors: Vec<Diagnostic>,
}

/// How many times a load is read again when the files changed under it.
pub(crate) const READS: usize = 5;

/// Reads and deserialises the config and its policy files, reporting every problem found:
/// all from one version of the files, when they are swapped whole under the reader.
///
/// Why: a Kubernetes ConfigMap volume is updated by swapping its `..data` link to a new
/// directory, each file being a link through it. A reload reading while the link swapped
/// compiled some old files with some new ones: a deny rule moved from the first file to the
/// last was in neither, and its path was let through for the next reload's 0.3–0.75 s. The
/// files' layout (where each resolves, which file it is) is taken before and after the read,
/// and a read it changed under is done again.
/// Regression: config::load::tests::a_swapped_volume_is_read_whole
pub fn load(config_path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    read_whole(config_path, &[], load_once)
}

/// Runs `read` (which reads the config at `config_path`, its policy files and maybe files
/// among `also`) until the files' [`layout`] is the same after it as before, at most
/// [`READS`] times; then refuses, so a mix of two versions is never the result.
pub(crate) fn read_whole<T>(
    config_path: &Path,
    also: &[PathBuf],
    mut read: impl FnMut(&Path) -> Result<T, Vec<Diagnostic>>,
) -> Result<T, Vec<Diagnostic>> {
    for _ in 0..READS {
        let before = layout(config_path, also);
        let result = read(config_path);
        if layout(config_path, also) == before {
            return result;
        }
    }
    // Never a mix: the running config stays, and the next change reloads.
    Err(vec![Diagnostic::file_error(
        &config_path.display().to_string(),
        format!(
            "the config or policy files changed while being read, {READS} times in a row: not loaded (write them whole, or swap them less often)"
        ),
    )])
}

/// Where the config file, the policy directory it names, each policy file and each of `also`
/// resolve (through links), and which file each is: equal layouts, files read from one
/// version.
fn layout(config_path: &Path, also: &[PathBuf]) -> Vec<Option<(PathBuf, u64)>> {
    use std::os::unix::fs::MetadataExt as _;
    let resolved = |path: &Path| {
        let real = std::fs::canonicalize(path).ok()?;
        let ino = std::fs::metadata(&real).ok()?.ino();
        Some((real, ino))
    };
    let mut out = vec![resolved(config_path)];
    // The directory as the config names it now: a swap that also moved it shows.
    if let Some(dir) = policy_dir_hint(config_path) {
        let dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join(dir);
        out.push(resolved(&dir));
        if let Ok(files) = policy_files(&dir) {
            out.extend(files.iter().map(|(path, _)| resolved(path)));
        }
    }
    out.extend(also.iter().map(|p| resolved(p)));
    out
}

/// One read of the config and its policy files ([`load`]).
pub(crate) fn load_once(config_path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    let display = config_path.display().to_string();
    let base_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let (config, raw) = match read_yaml::<RawConfig>(config_path, display) {
        Ok(c) => c,
        Err(d) => {
            // Why: one `check` run shows every problem: a broken config file does not hide
            // the policy files' own errors. Regression: tests (it) check::*
            let mut diagnostics = vec![d];
            if let Some(dir) = policy_dir_hint(config_path) {
                let (_, errors) = read_policies(&base_dir.join(dir));
                // A directory the broken file may not even name is no news.
                diagnostics.extend(errors.into_iter().filter(|d| !d.file.is_empty()));
            }
            return Err(diagnostics);
        }
    };
    let policy_dir = base_dir.join(&raw.policies.dir);
    let (policies, mut diagnostics) = read_policies(&policy_dir);
    if let Some(e) = diagnostics
        .iter_mut()
        .find(|d| d.line == 0 && d.file.is_empty())
    {
        *e = Diagnostic::at(
            &config.display,
            &config.index,
            "policies.dir",
            e.message.clone(),
        );
    }
    Ok(Loaded {
        base_dir,
        config,
        raw,
        policy_dir,
        policies,
        errors: diagnostics,
    })
}

/// Every policy file in `dir`, read, and the problems found (a directory that cannot be read
/// is one problem with an empty file name, for the caller to place).
fn read_policies(dir: &Path) -> (Vec<(Source, RawPolicyFile)>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut policies = Vec::new();
    match policy_files(dir) {
        Ok(files) => {
            for (path, regular) in files {
                let display = path.display().to_string();
                // Why: a `*.yaml` entry that is a dangling link or a directory was skipped, and
                // its rules (a deny among them) silently went; a file truncated to be
                // rewritten was read as no rules while it stayed empty.
                // Regression: tests (it) reload::unreadable_or_empty_policy_file_keeps_the_running_policies
                if !regular {
                    diagnostics.push(Diagnostic::file_error(
                        &display,
                        "not a regular file (a dangling link, a directory or a pipe): its rules cannot be read",
                    ));
                    continue;
                }
                let bytes = match read_bounded(&path, &display) {
                    Ok(bytes) => bytes,
                    Err(d) => {
                        diagnostics.push(d);
                        continue;
                    }
                };
                if bytes.is_empty() {
                    diagnostics.push(Diagnostic::file_error(
                        &display,
                        "empty policy file: taken for one being written (write policy files whole, renaming a finished file into place); a file meant to hold no rules says `rules: []` (which `check` notes)",
                    ));
                    continue;
                }
                // Why: only a 0-byte file was refused; one holding only blank lines, comments
                // or `rules:` with nothing after it (a file being rewritten, a slip) was read
                // as no rules, and the deny rules it held were gone (4,767 denied requests
                // allowed in 3 s under a tester's load). Checked before the file is read as
                // a policy, for this message rather than serde's "missing field".
                // Regression: tests (it) reload::unreadable_or_empty_policy_file_keeps_the_running_policies
                if let Some(why) = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(without_rules_list)
                {
                    diagnostics.push(Diagnostic::file_error(&display, why));
                    continue;
                }
                // The bytes just read, not the file again: the checks above and the
                // policy read are of one version of the file.
                let text = String::from_utf8(bytes.clone()).ok();
                match parse_yaml::<RawPolicyFile>(&path, display.clone(), bytes) {
                    Ok(p) => policies.push(p),
                    Err(d) => {
                        let more = text
                            .map(|text| other_rules_errors(&text, &display, &d))
                            .unwrap_or_default();
                        diagnostics.push(d);
                        diagnostics.extend(more);
                    }
                }
            }
        }
        Err(e) => diagnostics.push(Diagnostic::file_error(
            "",
            format!("cannot read policy directory {}: {e}", dir.display()),
        )),
    }
    (policies, diagnostics)
}

/// A policy file without a `rules:` list: taken for one being written.
const NO_RULES_LIST: &str = "no `rules:` list (only blank lines, comments, or `rules:` with nothing after it): taken for a file being written (write policy files whole, renaming a finished file into place); a file meant to hold no rules says `rules: []` (which `check` notes)";

/// Why a policy file's YAML (valid YAML) holds no `rules:` list, where serde's own error
/// ("missing field", "invalid type") would not say what is wrong; `None` when it has one,
/// maybe empty (`rules: []`), or when serde names the problem better (`rules: 5` at its line).
///
/// Why: a file that was a list of rules (the `rules:` line forgotten) or a bare word was told
/// it held "only blank lines, comments, or `rules:` with nothing after it", and `rules: 5`
/// the same, with no line.
/// Regression: tests (it) policy::check_names_what_a_policy_file_holds_instead_of_a_rules_list
fn without_rules_list(text: &str) -> Option<String> {
    use serde_yaml::Value;
    // Never parsed into values unless its aliases expand within bounds.
    if !super::diagnostic::expands_within_bounds(text) {
        return None;
    }
    let value = serde_yaml::from_str::<Value>(text).ok()?;
    let mut value = &value;
    while let Value::Tagged(tagged) = value {
        value = &tagged.value;
    }
    match value {
        Value::Null => Some(NO_RULES_LIST.to_owned()),
        Value::Mapping(map) => match map.get("rules") {
            None | Some(Value::Null) => Some(NO_RULES_LIST.to_owned()),
            Some(_) => None,
        },
        Value::Sequence(_) => Some(
            "the file is a list, not a mapping: a policy file holds its rules under a `rules:` key (`rules:` on its own line, the `- name: …` items under it)"
                .to_owned(),
        ),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => Some(
            "the file is a single value, not a mapping: a policy file holds its rules under a `rules:` key (`rules:` on its own line, the `- name: …` items under it)"
                .to_owned(),
        ),
        Value::Tagged(_) => None,
    }
}

/// The errors of a policy file's other rules, after the first error `first` (serde stops at
/// it): each rule read on its own, located at its field (or the rule).
///
/// Why: `check` showed one error per file, so fixing a file took one run per mistake.
/// Regression: tests (it) policy::check_reports_an_error_in_every_rule
fn other_rules_errors(text: &str, display: &str, first: &Diagnostic) -> Vec<Diagnostic> {
    let Ok(index) = LocationIndex::build(text) else {
        return Vec::new();
    };
    let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Vec::new();
    };
    let Some(rules) = value.get("rules").and_then(serde_yaml::Value::as_sequence) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let base = format!("rules[{i}]");
        let reported = first.path == base
            || first
                .path
                .strip_prefix(&base)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['));
        if reported {
            continue;
        }
        // Through text again, for serde_yaml's field path (`match.paths: …`); its position is
        // in that text, so the field is located in the file instead.
        let Ok(alone) = serde_yaml::to_string(rule) else {
            continue;
        };
        if let Err(e) = serde_yaml::from_str::<super::raw::RawRule>(&alone) {
            let d = Diagnostic::from_yaml(display, &e);
            let field = if d.path.is_empty() {
                base
            } else {
                format!("{base}.{}", d.path)
            };
            out.push(Diagnostic::at(display, &index, &field, d.message));
        }
    }
    out
}

/// The policy directory a config file that failed to load names, when it can still be read
/// as YAML (`policies.dir`), or the default when it cannot say.
pub(crate) fn policy_dir_hint(config_path: &Path) -> Option<PathBuf> {
    let text = super::files::read_to_string(config_path).ok()?;
    if !super::diagnostic::expands_within_bounds(&text) {
        return None;
    }
    let named = serde_yaml::from_str::<serde_yaml::Value>(&text)
        .ok()
        .and_then(|v| v.get("policies")?.get("dir")?.as_str().map(PathBuf::from));
    Some(named.unwrap_or_else(|| super::raw::RawPolicies::default().dir))
}

/// Reads only the gateway config file (no policies, nothing compiled): what is needed before
/// the runtime starts (logging, worker threads).
pub fn read_config(path: &Path) -> Result<RawConfig, Diagnostic> {
    read_yaml::<RawConfig>(path, path.display().to_string()).map(|(_, raw)| raw)
}

/// Whether a directory entry named `name` is a policy file: `*.yaml` or `*.yml` in any case,
/// not hidden (a name starting with `.`). The loader and the watcher read names alike.
///
/// Why one rule: the watcher matched lower case only, so `20-u.YAML`, loaded, was never
/// watched: an edit turning it to deny waited for some other change.
/// Regression: config::reload::tests::only_what_a_reload_reads_wakes_it
pub fn is_policy_name(name: &[u8]) -> bool {
    let lower = |ext: &[u8]| {
        name.len() > ext.len() && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
    };
    !name.starts_with(b".") && (lower(b".yaml") || lower(b".yml"))
}

/// The `*.yaml` and `*.yml` entries (in any case) directly in `dir` but hidden ones (a name starting with
/// `.`), sorted by file name, each with whether it is a regular file (followed through links).
fn policy_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // Any case: `30-routes.YAML` was skipped without a word ([`is_policy_name`]).
        // Why: editors keep their own files beside the one being edited: Emacs's lock
        // `.#10-routes.yaml` (a dangling link while a buffer has unsaved changes) failed
        // every reload, and a `.10-routes.yaml.swp.yaml` copy doubled every rule name.
        // Hidden files are not policies, as shell globs and Kubernetes' `..data` agree.
        // Regression: tests (it) reload::hidden_files_are_not_policies
        if path
            .file_name()
            .is_some_and(|n| is_policy_name(n.as_encoded_bytes()))
        {
            let regular = path.is_file();
            files.push((path, regular));
        }
    }
    files.sort();
    Ok(files)
}

/// Whether a field at `path` may hold a secret: anything under an API key or introspection
/// authenticator, a key list or a JWK, a shared secret, a password, a token. (A message still
/// lists what was expected: `expected one of `jwks_url`, …` says what a typo meant.)
fn may_hold_a_secret(path: &str) -> bool {
    path.split(['.', '[']).any(|seg| {
        [
            "api_key",
            "introspection",
            "keys",
            "jwk",
            "secret",
            "password",
            "token",
            "hmac",
            "client_secret",
        ]
        .contains(&seg.trim_end_matches(']'))
    })
}

/// A file that is not UTF-8 text, located at its first invalid byte (a binary file, or one
/// saved in Latin-1).
///
/// Regression: tests/fixtures/invalid/policy-not-utf8 (it was reported at line 0).
fn not_text(display: &str, bytes: &[u8], error: std::str::Utf8Error) -> Diagnostic {
    let valid = &bytes[..error.valid_up_to()];
    let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    // The valid prefix is UTF-8: its column counts characters, as the YAML parser's do.
    let column = std::str::from_utf8(&valid[line_start..]).map_or(0, |l| l.chars().count()) + 1;
    Diagnostic {
        severity: super::Severity::Error,
        file: display.to_owned(),
        line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
        column,
        path: String::new(),
        message: "not UTF-8 text: YAML files must be UTF-8".into(),
    }
}

/// Reads one YAML file into `T`, keeping its text and field locations for diagnostics (also
/// used for files a config points to, such as API key files).
pub fn read_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    display: String,
) -> Result<(Source, T), Diagnostic> {
    let bytes = read_bounded(path, &display)?;
    parse_yaml(path, display, bytes)
}

/// A file's bytes, unless it is larger than [`super::files::MAX_BYTES`] or no regular file.
///
/// Why: a policy file was read whole, whatever its size: a log or a disk image saved as
/// `policies/huge.yaml` (or a file still growing) was read into memory on every reload, and
/// parsed, by the running gateway. Regression: tests::a_yaml_file_over_the_size_limit_is_refused
fn read_bounded(path: &Path, display: &str) -> Result<Vec<u8>, Diagnostic> {
    super::files::read(path)
        .map_err(|e| Diagnostic::file_error(display, format!("cannot read file: {e}")))
}

/// [`read_yaml`] of bytes already read from `path`.
fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    display: String,
    bytes: Vec<u8>,
) -> Result<(Source, T), Diagnostic> {
    let text =
        String::from_utf8(bytes).map_err(|e| not_text(&display, e.as_bytes(), e.utf8_error()))?;
    // Why: a byte-order mark (Windows editors write one) made the config file "more than one
    // document", with no line, and the gateway would not start. Regression: tests (it)
    // check::a_byte_order_mark_is_read_as_nothing
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    };
    let index = LocationIndex::build(&text).map_err(|(line, column, message)| {
        // Prefer libyaml's wording and position (serde_yaml parsing to an untyped value
        // reports syntax only); fall back to the indexer's, which alone places a repeated key.
        let duplicate = message.starts_with(super::diagnostic::DUPLICATE_KEY);
        // A file whose aliases expand too far is never parsed into values.
        let bomb = message.starts_with(super::diagnostic::TOO_MANY_ALIASED);
        let parsed = if bomb {
            Ok(serde_yaml::Value::Null)
        } else {
            serde_yaml::from_str::<serde_yaml::Value>(&text)
        };
        match parsed {
            // Why not serde_yaml's repeated key: it is met before the syntax error and placed
            // at 1:1 (`server:` twice, the second `server: [` unclosed, read `1:1: duplicate
            // entry`); the indexer's syntax error names the line that is broken.
            // Regression: tests (it) check::a_syntax_error_is_placed_even_after_a_repeated_key
            Err(e) if !duplicate && !e.to_string().starts_with("duplicate entry") => {
                Diagnostic::from_yaml_in(&display, &text, &e)
            }
            _ => Diagnostic {
                severity: super::Severity::Error,
                file: display.clone(),
                line,
                column,
                path: String::new(),
                message: if duplicate || bomb {
                    message
                } else {
                    format!("invalid YAML: {message}")
                },
            },
        }
    })?;
    // An empty file is an empty mapping, not an error about `null`.
    let value = if text.trim().is_empty() {
        serde_yaml::from_str("{}")
    } else {
        serde_yaml::from_str(&text)
    }
    .map_err(|e| {
        let mut d = Diagnostic::from_yaml_in(&display, &text, &e);
        // Why: an API key pasted into the config's inline `keys` (or a secret where a
        // field's name belongs) was quoted by the parser's message in the log, `check`,
        // `POST /reload` and `GET /config`. Where secrets live, the value is not shown.
        // Regression: tests::a_value_where_secrets_live_is_not_quoted
        if may_hold_a_secret(&d.path) {
            d.message = crate::secret::without_values(&d.message);
        } else {
            d.message = crate::secret::without_quoted_strings(&d.message);
        }
        d
    })?;
    Ok((
        Source {
            display,
            path: path.to_path_buf(),
            text,
            index,
        },
        value,
    ))
}

#[cfg(test)]
mod tests {
    /// A policy file over the limit is refused by name, unread, and one at the limit is read.
    #[test]
    fn a_yaml_file_over_the_size_limit_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        let config = root.path().join("portcullis.yaml");
        std::fs::write(
            &config,
            "listeners: [{name: l, address: \"127.0.0.1:0\"}]\npolicies: {dir: policies}\n",
        )
        .unwrap();
        let policy = dir.join("big.yaml");
        // A valid policy padded with a comment to the limit, then one byte more.
        let mut text = b"rules: []\n#".to_vec();
        text.resize(
            usize::try_from(crate::config::files::MAX_BYTES).unwrap() - 1,
            b'x',
        );
        text.push(b'\n');
        std::fs::write(&policy, &text).unwrap();
        let read = |config| match super::load_once(config) {
            Ok(loaded) => (loaded.policies.len(), loaded.errors),
            Err(errors) => panic!("{errors:?}"),
        };
        let (policies, errors) = read(&config);
        assert_eq!((policies, errors.len()), (1, 0), "{errors:?}");
        text.push(b'\n');
        std::fs::write(&policy, &text).unwrap();
        let (policies, errors) = read(&config);
        assert_eq!((policies, errors.len()), (0, 1), "{errors:?}");
        assert!(errors[0].file.ends_with("big.yaml"), "{errors:?}");
        assert!(
            errors[0].message.contains("larger than 16 MiB"),
            "{errors:?}"
        );
    }

    /// A file the config reads besides its policies (an API key file), swapped to a new
    /// version between the policies' read and its own, is read again with them: the result
    /// is one version of both.
    #[test]
    fn a_referenced_file_swapped_during_a_build_is_read_again() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        // The key file in a volume swapped whole; the policies beside it, edited in place at
        // the same moment (so only the key file's layout can tell).
        let vol = root.path().join("vol");
        for (d, version) in [("..v1", "a"), ("..v2", "b")] {
            std::fs::create_dir_all(vol.join(d)).unwrap();
            std::fs::write(vol.join(d).join("keys.yaml"), format!("# {version}\n")).unwrap();
        }
        symlink("..v1", vol.join("..data")).unwrap();
        symlink("..data/keys.yaml", vol.join("keys.yaml")).unwrap();
        std::fs::create_dir(root.path().join("policies")).unwrap();
        let policy = root.path().join("policies/p.yaml");
        std::fs::write(&policy, "# a\nrules: []\n").unwrap();
        let config = root.path().join("portcullis.yaml");
        std::fs::write(&config, "policies: {dir: policies}\n").unwrap();
        let keys = vol.join("keys.yaml");
        let mut reads = 0;
        let got = super::read_whole(&config, std::slice::from_ref(&keys), |_| {
            reads += 1;
            let p = std::fs::read_to_string(&policy).unwrap();
            if reads == 1 {
                // The update, between the two reads.
                std::fs::write(&policy, "# b\nrules: []\n").unwrap();
                symlink("..v2", vol.join("..data_tmp")).unwrap();
                std::fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
            }
            let k = std::fs::read_to_string(&keys).unwrap();
            Ok((p, k))
        })
        .unwrap();
        assert_eq!(reads, 2, "read again");
        assert_eq!(
            got.0.lines().next(),
            got.1.lines().next(),
            "one version: {got:?}"
        );
    }

    #[test]
    fn a_swapped_volume_is_read_whole() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        let vol = root.path().join("policies");
        std::fs::create_dir(&vol).unwrap();
        const FILES: usize = 60;
        // A new directory for each update, as the kubelet makes (version a or b by turns).
        const DIRS: usize = 16;
        for d in 0..DIRS {
            let version = if d % 2 == 0 { "a" } else { "b" };
            let dir = vol.join(format!("..v-{d}"));
            std::fs::create_dir(&dir).unwrap();
            for i in 0..FILES {
                std::fs::write(
                    dir.join(format!("{i:03}.yaml")),
                    format!("# version {version}\nrules:\n  - {{name: r{i}, match: {{paths: [\"/{i}/**\"]}}, effect: deny}}\n"),
                )
                .unwrap();
            }
        }
        symlink("..v-0", vol.join("..data")).unwrap();
        for i in 0..FILES {
            symlink(
                format!("..data/{i:03}.yaml"),
                vol.join(format!("{i:03}.yaml")),
            )
            .unwrap();
        }
        let config = root.path().join("portcullis.yaml");
        std::fs::write(
            &config,
            "listeners: [{name: l, address: \"127.0.0.1:0\"}]\npolicies: {dir: policies}\n",
        )
        .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let to = format!("..v-{}", (n + 1) % DIRS);
                    let tmp = vol.join("..data_tmp");
                    let _ = std::fs::remove_file(&tmp);
                    symlink(to, &tmp).unwrap();
                    std::fs::rename(&tmp, vol.join("..data")).unwrap();
                    n += 1;
                    // Now quick, now slow: some reads see a swap, some do not.
                    let pause = if n % 4 < 2 { 1 } else { 100 };
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                }
            })
        };
        let (mut mixed, mut whole, mut refused) = (0, 0, 0);
        for _ in 0..60 {
            // Files that kept changing while read are refused (the running config stays).
            let Ok(loaded) = super::load(&config) else {
                refused += 1;
                continue;
            };
            whole += 1;
            assert_eq!(loaded.policies.len(), FILES);
            let first = loaded.policies[0].0.text.lines().next().unwrap().to_owned();
            if loaded
                .policies
                .iter()
                .any(|(s, _)| !s.text.starts_with(&first))
            {
                mixed += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        whole -= mixed;
        assert_eq!(
            mixed, 0,
            "loads that mixed the two versions ({whole} whole, {refused} refused)"
        );
        assert!(whole > 0, "{refused} refused");
    }

    /// A key pasted into the config's inline `keys` is refused without being quoted; a
    /// mistake elsewhere still shows what was written.
    #[test]
    fn a_value_where_secrets_live_is_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let read = |text: &str| {
            let path = dir.path().join("c.yaml");
            std::fs::write(&path, text).unwrap();
            super::read_yaml::<crate::config::raw::RawConfig>(&path, "c.yaml".into())
                .err()
                .unwrap()
        };
        let d = read(
            "listeners: [{name: l, address: \"127.0.0.1:0\"}]\nauthenticators:\n  k:\n    api_key:\n      keys: [pck_PASTEDSECRET]\n",
        );
        assert!(d.path.contains("keys"), "{d:?}");
        assert!(!d.message.contains("PASTEDSECRET"), "{d:?}");
        let d = read("listeners: [{name: l, address: \"nowhere\"}]\n");
        assert!(d.message.contains("nowhere"), "{d:?}");
        // Wherever else a key may be pasted.
        let head = "listeners: [{name: l, address: \"127.0.0.1:0\"}]\nauthenticators:\n  k:\n";
        for body in [
            "    api_key:\n      pck_PASTEDSECRET: 1\n",
            "    api_key: pck_PASTEDSECRET\n",
            "    api_key:\n      from: [pck_PASTEDSECRET]\n",
            "    jwt:\n      providers:\n        - issuer: https://i.example\n          audiences: [a]\n          keys: [pck_PASTEDSECRET]\n",
            "    jwt:\n      providers:\n        - issuer: https://i.example\n          audiences: [a]\n          keys: [{jwk: '{\"kty\":\"oct\",\"k\":\"pck_PASTEDSECRET\"}'}]\n",
        ] {
            let d = read(&format!("{head}{body}"));
            assert!(!d.message.contains("PASTEDSECRET"), "{body}: {d:?}");
        }
        // A typo among a JWT provider's key sources still says what was expected.
        let d = read(
            "listeners: [{name: l, address: \"127.0.0.1:0\"}]\nauthenticators:\n  u:\n    jwt:\n      providers:\n        - issuer: https://i.example\n          audiences: [a]\n          keys: [{jwks_uri: {url: \"https://i.example/k\"}}]\n",
        );
        assert!(d.message.contains("jwks_url"), "{d:?}");
    }
}
