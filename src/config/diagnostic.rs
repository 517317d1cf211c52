//! Config problems, each located at a file, line, column and field path.

use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Whether a diagnostic stops the config from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// The config loads, but something is probably wrong.
    Warning,
}

/// One problem in one file, printed `file:line:column: path: message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file as given on the command line or found under the policy directory.
    pub file: String,
    /// 1-based line; 0 when the problem is the file as a whole.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// Field path in the YAML (`listeners[0].address`), empty for the whole file.
    pub path: String,
    /// What is wrong, lowercase, never containing secret material.
    pub message: String,
}

/// A mistake in one field of a config section, found by the code that compiles the section:
/// the field's path relative to what that code was given, and a message. Every compile
/// function reports these; the config compiler puts the section's path in front
/// ([`FieldError::under`]) and locates the result in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path (`keys[0].pem_file`); empty for the section as a whole.
    pub field: String,
    /// What is wrong, lowercase, never containing secret material.
    pub message: String,
}

/// Field paths of a YAML document mapped to where each value starts, so that problems found
/// after deserialisation (unknown upstream, unreadable file) still point at a line.
///
/// Why a map: every rule asks it whether a field is written, and a scan of every entry made
/// loading quadratic (8,000 rules took seconds to check and to reload).
/// Regression: bench/policy.rs `config_compile` (a speed, so a benchmark, not a test)
#[derive(Debug, Default)]
pub struct LocationIndex {
    /// Each path at its first place in the file.
    entries: std::collections::HashMap<String, (usize, usize)>,
}

// === impl FieldError ===

impl FieldError {
    /// A mistake in `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same mistake with its path under `prefix` (`under("jwt")` turns `keys[0]` into
    /// `jwt.keys[0]`, and `[2]` into `jwt[2]`).
    #[must_use]
    pub fn under(mut self, prefix: &str) -> Self {
        self.field = match (prefix.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => prefix.to_owned(),
            (false, false) if self.field.starts_with('[') => format!("{prefix}{}", self.field),
            (false, false) => format!("{prefix}.{}", self.field),
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

// === impl Diagnostic ===

impl Diagnostic {
    /// An error about a whole file (unreadable, not YAML).
    pub fn file_error(file: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: file.to_owned(),
            line: 0,
            column: 0,
            path: String::new(),
            message: message.into(),
        }
    }

    /// An error at `path`, located through `index` (at the closest enclosing field found).
    pub fn at(file: &str, index: &LocationIndex, path: &str, message: impl Into<String>) -> Self {
        let (line, column) = index.locate(path);
        Self {
            severity: Severity::Error,
            file: file.to_owned(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// The same diagnostic as a warning.
    #[must_use]
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    /// Converts a serde_yaml error, which carries its own position and field path.
    pub fn from_yaml(file: &str, error: &serde_yaml::Error) -> Self {
        let text = error.to_string();
        let (line, column, body) = match error.location() {
            Some(loc) => {
                let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                let body = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
                (loc.line(), loc.column(), body)
            }
            None => (0, 0, text),
        };
        // serde_yaml prefixes the message with the field path (`a.b[0]: message`) unless the
        // error is at the root; a path never contains spaces.
        let (path, message) = match body.split_once(": ") {
            Some((p, m)) if !p.is_empty() && !p.contains(' ') => (p.to_owned(), m.to_owned()),
            _ => (String::new(), body),
        };
        Self {
            severity: Severity::Error,
            file: file.to_owned(),
            line,
            column,
            path,
            message: plain_types(&without_positions(&message, line, column)),
        }
    }

    /// [`Self::from_yaml`] for an error in `text`: one serde_yaml gives no position for (a
    /// second document) is placed where it starts.
    ///
    /// Why: `rules: …` then `---` and more rules was `file:0:0`, naming no line, in a file
    /// an operator may have concatenated from two. Regression: tests::second_document_is_located
    pub fn from_yaml_in(file: &str, text: &str, error: &serde_yaml::Error) -> Self {
        let mut d = Self::from_yaml(file, error);
        if d.line == 0
            && let Some(line) = second_document(text)
        {
            (d.line, d.column) = (line, 1);
            d.message = "a second YAML document (`---`): a file holds one".into();
        }
        // Why: a tab gave "found character that cannot start any token", which does not say
        // what the character is; YAML indents with spaces only.
        // Regression: tests::a_tab_is_named
        if d.line > 0
            && text
                .lines()
                .nth(d.line - 1)
                .and_then(|l| l.chars().nth(d.column.saturating_sub(1)))
                == Some('\t')
        {
            d.message
                .push_str(" (a tab: YAML indents with spaces, and a tab starts no value)");
        }
        d
    }

    /// Whether this diagnostic rejects the config.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // A whole file's problem has no position: `file: error: …`, as compilers write it,
        // rather than a line 0 no editor can go to.
        match self.line {
            0 => write!(f, "{}: {level}: ", self.file)?,
            line => write!(f, "{}:{line}:{}: {level}: ", self.file, self.column)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// The line (from 1) where a second YAML document starts, if `text` has one: its `---`
/// after the first document's content, or a second `---`.
fn second_document(text: &str) -> Option<usize> {
    let mut started = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        if marker {
            if started {
                return Some(i + 1);
            }
            started = true;
            continue;
        }
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') {
            started = true;
        }
    }
    None
}

/// serde names Rust types in its messages; say what a config author writes instead.
/// The message without ` at line L column C` where that is the position already shown, and
/// with `line L column C` shortened to `L:C` elsewhere (libyaml repeats them in its text).
fn without_positions(message: &str, line: usize, column: usize) -> String {
    let own = format!(" at line {line} column {column}");
    let mut m = message.replacen(&own, "", 1);
    while let Some(at) = m.find("line ") {
        let rest = &m[at + 5..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Some(after) = rest.get(digits..).and_then(|r| r.strip_prefix(" column ")) else {
            break;
        };
        let col_digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || col_digits == 0 {
            break;
        }
        let short = format!("{}:{}", &rest[..digits], &after[..col_digits]);
        let end = at + 5 + digits + " column ".len() + col_digits;
        m.replace_range(at..end, &short);
    }
    m
}

fn plain_types(message: &str) -> String {
    let mut m = message.to_owned();
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
    ] {
        m = m.replace(rust, plain);
    }
    // Why: `expected struct RawApiKeyFile` names an internal type a user cannot act on.
    // Regression: tests::internal_type_names_are_not_shown
    for (rust, plain) in [
        ("expected struct ", "expected a mapping"),
        ("expected enum ", "expected one of the documented forms"),
    ] {
        while let Some(at) = m.find(rust) {
            let name_len = m[at + rust.len()..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(m.len() - at - rust.len());
            m.replace_range(at..at + rust.len() + name_len, plain);
        }
    }
    m
}

// === impl LocationIndex ===

impl LocationIndex {
    /// Indexes `text`, or reports its YAML syntax error as (line, column, message). Syntax is
    /// checked before deserialising, because serde_yaml may report a type error in a partly
    /// parsed document rather than the syntax error that caused it.
    pub fn build(text: &str) -> Result<Self, (usize, usize, String)> {
        let mut builder = IndexBuilder::default();
        let mut parser = Parser::new_from_str(text);
        if let Err(e) = parser.load(&mut builder, false) {
            let m = e.marker();
            return Err((m.line(), m.col() + 1, e.info().to_owned()));
        }
        // Why: a file of a few KB whose aliases name lists of aliases (a "billion laughs")
        // expands, when parsed into values, into gigabytes: a 54 KB policy file made the
        // running gateway abort out of memory on reload. Refused before any such parse, by
        // the values it would expand into: at most a million more than its bytes.
        // Regression: tests::an_alias_bomb_is_refused_before_it_expands
        let limit = expansion_limit(text);
        if builder.expansion.total > limit {
            return Err((
                0,
                0,
                format!(
                    "{TOO_MANY_ALIASED} into more than {limit} values (anchors and aliases \
                     repeating lists of lists): not read"
                ),
            ));
        }
        // Why: serde reports a repeated key at the start of its mapping (or at 1:1); a reader
        // needs the line of the second one. Regression: tests::duplicate_keys_are_located
        if let Some((line, column, key)) = builder.duplicate {
            return Err((line, column, format!("{DUPLICATE_KEY} `{key}`")));
        }
        let mut entries = std::collections::HashMap::with_capacity(builder.entries.len());
        for (path, line, column) in builder.entries {
            entries.entry(path).or_insert((line, column));
        }
        Ok(Self { entries })
    }

    /// Whether the file spells `path` itself (a field written, even as `[]`).
    pub fn has(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Line and column (1-based) of `path`, or of its closest indexed ancestor, or (0, 0).
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(&(l, c)) = self.entries.get(p) {
                return (l, c);
            }
            match p.rfind(['.', '[']) {
                Some(i) if i > 0 => p = &p[..i],
                _ if !p.is_empty() => p = "",
                _ => return (0, 0),
            }
        }
    }
}

/// Walks parser events keeping the current path: mapping keys joined by `.`, sequence items as
/// `[i]`, the same spelling serde_yaml uses in its errors.
#[derive(Default)]
struct IndexBuilder {
    entries: Vec<(String, usize, usize)>,
    stack: Vec<Frame>,
    /// The first key repeated in its mapping: line, column, key.
    duplicate: Option<(usize, usize, String)>,
    /// A mapping item just started: its entry moves to its first key, whose mark is exact.
    pending_item: Option<usize>,
    /// How many values the file holds once its aliases are expanded.
    expansion: Expansion,
}

/// How a repeated mapping key's message starts.
pub const DUPLICATE_KEY: &str = "duplicate key";

/// How the message of a file whose aliases expand too far starts.
pub const TOO_MANY_ALIASED: &str = "YAML aliases expand";

/// The most values a file of `text` may expand into: a million more than its bytes.
fn expansion_limit(text: &str) -> u64 {
    1_000_000 + u64::try_from(text.len()).unwrap_or(u64::MAX)
}

/// Whether `text`'s aliases expand within bounds ([`LocationIndex::build`] refuses the
/// others), or it does not parse (then nothing will expand it): what must hold before it is
/// parsed into values.
pub fn expands_within_bounds(text: &str) -> bool {
    struct Counter(Expansion);
    impl MarkedEventReceiver for Counter {
        fn on_event(&mut self, ev: Event, _: Marker) {
            self.0.on_event(&ev);
        }
    }
    let mut counter = Counter(Expansion::default());
    let _ = Parser::new_from_str(text).load(&mut counter, false);
    counter.0.total <= expansion_limit(text)
}

/// The values a YAML document holds with its aliases expanded, counted from its events
/// without expanding anything (an alias adds the size of the value it names).
#[derive(Default)]
struct Expansion {
    /// The size of each anchored value, by anchor id.
    sizes: std::collections::HashMap<usize, u64>,
    /// The collections open: their anchor id (0: none) and their size so far.
    open: Vec<(usize, u64)>,
    /// Values in all, expanded.
    total: u64,
}

impl Expansion {
    fn add(&mut self, n: u64) {
        self.total = self.total.saturating_add(n);
        if let Some((_, size)) = self.open.last_mut() {
            *size = size.saturating_add(n);
        }
    }

    fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::Scalar(_, _, anchor, _) => {
                self.add(1);
                if *anchor > 0 {
                    self.sizes.insert(*anchor, 1);
                }
            }
            Event::Alias(anchor) => {
                let n = self.sizes.get(anchor).copied().unwrap_or(1);
                self.add(n);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.total = self.total.saturating_add(1);
                self.open.push((*anchor, 1));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, size)) = self.open.pop() {
                    if anchor > 0 {
                        self.sizes.insert(anchor, size);
                    }
                    if let Some((_, parent)) = self.open.last_mut() {
                        *parent = parent.saturating_add(size);
                    }
                }
            }
            _ => {}
        }
    }
}

enum Frame {
    /// In a mapping; `Some(key)` once the key has been read and its value is next; the keys
    /// seen so far.
    Map(String, Option<String>, Vec<String>),
    /// In a sequence at the next item index.
    Seq(String, usize),
}

impl IndexBuilder {
    /// The path of the value that starts now, advancing the parent's state.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq(base, i)) => {
                let p = format!("{base}[{i}]");
                *i += 1;
                Some(p)
            }
            Some(Frame::Map(base, key, _)) => key.take().map(|k| {
                if base.is_empty() {
                    k
                } else {
                    format!("{base}.{k}")
                }
            }),
        }
    }

    /// Whether the next scalar is a mapping key.
    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map(_, None, _)))
    }
}

impl MarkedEventReceiver for IndexBuilder {
    /// Map entries are indexed at their key (where a reader looks for a field), sequence items
    /// and the root at their value.
    fn on_event(&mut self, ev: Event, mark: Marker) {
        self.expansion.on_event(&ev);
        let (line, column) = (mark.line(), mark.col() + 1);
        let in_seq_or_root = !matches!(self.stack.last(), Some(Frame::Map(..)));
        match ev {
            Event::Scalar(value, ..) => {
                if self.expects_key() {
                    if let Some(Frame::Map(base, key, seen)) = self.stack.last_mut() {
                        let p = if base.is_empty() {
                            value.clone()
                        } else {
                            format!("{base}.{value}")
                        };
                        if seen.contains(&value) {
                            self.duplicate.get_or_insert((line, column, p.clone()));
                        } else {
                            seen.push(value.clone());
                        }
                        self.entries.push((p, line, column));
                        *key = Some(value);
                    }
                    if let Some(i) = self.pending_item.take()
                        && let Some(e) = self.entries.get_mut(i)
                    {
                        (e.1, e.2) = (line, column);
                    }
                } else if let Some(p) = self.next_value_path()
                    && in_seq_or_root
                {
                    self.entries.push((p, line, column));
                }
            }
            Event::Alias(_) => {
                let _ = self.next_value_path();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.expects_key() {
                    // Complex keys are not used in our files; index nothing below.
                    self.stack
                        .push(Frame::Map(String::from("?"), None, Vec::new()));
                    return;
                }
                let p = self.next_value_path().unwrap_or_default();
                if in_seq_or_root {
                    if matches!(ev, Event::MappingStart(..)) {
                        self.pending_item = Some(self.entries.len());
                    }
                    self.entries.push((p.clone(), line, column));
                }
                if matches!(ev, Event::SequenceStart(..)) {
                    self.stack.push(Frame::Seq(p, 0));
                } else {
                    self.stack.push(Frame::Map(p, None, Vec::new()));
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "billion laughs" file (an anchored list, then a list of aliases to it) is refused
    /// from its events, before anything expands it; a file using a few aliases is read.
    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let a0 = vec!["x"; 1500].join(", ");
        let a1 = vec!["*a0"; 1500].join(", ");
        let bomb =
            format!("rules:\n  - name: r\n    match: {{hosts: &a0 [{a0}], paths: &a1 [{a1}]}}\n");
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert!(!expands_within_bounds(&bomb));
        let e = LocationIndex::build(&bomb).expect_err("refused");
        assert!(e.2.starts_with(TOO_MANY_ALIASED), "{e:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, &bomb).unwrap();
        let d = crate::config::load::read_yaml::<crate::config::raw::RawPolicyFile>(
            &path,
            "p.yaml".into(),
        )
        .expect_err("refused");
        assert!(d.message.starts_with(TOO_MANY_ALIASED), "{d:?}");
        let fine = "common: &m {paths: [\"/a/**\"]}\nrules:\n  - {name: a, match: *m, effect: deny}\n  - {name: b, match: *m, effect: deny}\n";
        assert!(expands_within_bounds(fine));
        assert!(LocationIndex::build(fine).is_ok());
    }

    #[test]
    fn a_whole_file_problem_names_no_position() {
        let d = Diagnostic::file_error("policies/20-x.yaml", "empty policy file");
        assert_eq!(
            d.to_string(),
            "policies/20-x.yaml: error: empty policy file"
        );
        let mut d = d;
        (d.line, d.column) = (3, 5);
        assert_eq!(
            d.to_string(),
            "policies/20-x.yaml:3:5: error: empty policy file"
        );
    }

    #[test]
    fn field_errors_nest_under_their_section() {
        let cases = [
            ("", "keys[0].pem", "keys[0].pem"),
            ("jwt", "keys[0].pem", "jwt.keys[0].pem"),
            ("jwt", "[2]", "jwt[2]"),
            ("authenticators.a.jwt", "", "authenticators.a.jwt"),
            ("", "", ""),
        ];
        for (prefix, field, want) in cases {
            let e = FieldError::new(field, "m").under(prefix);
            assert_eq!(e.field, want, "{prefix:?} + {field:?}");
            assert_eq!(e.message, "m");
        }
        assert_eq!(FieldError::new("a", "bad").to_string(), "a: bad");
        assert_eq!(FieldError::new("", "bad").to_string(), "bad");
    }

    #[test]
    fn duplicate_keys_are_located() {
        let text = "a: 1\nb:\n  x: 1\n  y: 2\n  x: 3\nc: [{k: 1, k: 2}]\n";
        let (line, column, message) = LocationIndex::build(text).err().unwrap();
        assert_eq!((line, column), (5, 3));
        assert_eq!(message, "duplicate key `b.x`");
        let (line, _, message) = LocationIndex::build("a: 1\nb: 2\na: 3\n").err().unwrap();
        assert_eq!((line, &*message), (3, "duplicate key `a`"));
        // The same key in sibling mappings is no duplicate.
        assert!(LocationIndex::build("l:\n  - {n: 1}\n  - {n: 2}\n").is_ok());
    }

    #[test]
    fn index_locates_nested_fields() {
        let text = "listeners:\n  - name: a\n    address: 1.2.3.4:5\nupstreams:\n  web:\n    url: http://x\n";
        let idx = LocationIndex::build(text).unwrap();
        assert_eq!(idx.locate("listeners[0].address"), (3, 5));
        assert_eq!(idx.locate("listeners[0]"), (2, 5));
        assert_eq!(idx.locate("upstreams.web.url"), (6, 5));
        // Unknown leaf: falls back to the closest ancestor.
        assert_eq!(idx.locate("upstreams.web.nope"), (5, 3));
        assert_eq!(idx.locate("missing"), (1, 1));
    }

    #[test]
    fn repeated_positions_are_dropped() {
        assert_eq!(
            without_positions(
                "did not find expected ',' or ']' at line 4 column 1, while parsing a flow sequence at line 3 column 12",
                4,
                1
            ),
            "did not find expected ',' or ']', while parsing a flow sequence at 3:12"
        );
        assert_eq!(without_positions("plain", 1, 1), "plain");
    }

    #[test]
    fn internal_type_names_are_not_shown() {
        for (raw, want) in [
            (
                "invalid type: sequence, expected struct RawConfig",
                "invalid type: sequence, expected a mapping",
            ),
            (
                "invalid type: string \"x\", expected enum RawKey",
                "invalid type: string \"x\", expected one of the documented forms",
            ),
            (
                "expected struct RawA or struct RawB",
                "expected a mapping or struct RawB",
            ),
            ("expected u64", "expected a whole number"),
        ] {
            assert_eq!(plain_types(raw), want);
        }
        let two = plain_types("expected struct A, expected struct B");
        assert_eq!(two, "expected a mapping, expected a mapping");
    }

    #[test]
    fn a_tab_is_named() {
        let text = "rules:\n\t- name: a\n";
        let err = serde_yaml::from_str::<serde_yaml::Value>(text).unwrap_err();
        let d = Diagnostic::from_yaml_in("p.yaml", text, &err);
        assert_eq!(d.line, 2, "{d}");
        assert!(
            d.message
                .ends_with("(a tab: YAML indents with spaces, and a tab starts no value)"),
            "{d}"
        );
        // Anything else at an error's position is left as it was.
        let text = "rules: [\n";
        let err = serde_yaml::from_str::<serde_yaml::Value>(text).unwrap_err();
        assert!(
            !Diagnostic::from_yaml_in("p.yaml", text, &err)
                .message
                .contains("tab")
        );
    }

    #[test]
    fn second_document_is_located() {
        for (text, line) in [
            ("rules: []\n---\nrules: []\n", Some(2)),
            ("# head\n---\nrules: []\n--- # more\nrules: []\n", Some(4)),
            ("---\n---\n", Some(2)),
            ("---\nrules: []\n", None),
            ("rules: ['---']\n", None),
        ] {
            assert_eq!(second_document(text), line, "{text:?}");
        }
        let text = "rules: []\n---\nrules: []\n";
        let err = serde_yaml::from_str::<serde_yaml::Value>(text).unwrap_err();
        let d = Diagnostic::from_yaml_in("p.yaml", text, &err);
        assert_eq!(
            d.to_string(),
            "p.yaml:2:1: error: a second YAML document (`---`): a file holds one"
        );
    }

    #[test]
    fn yaml_error_split_into_path_and_message() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[expect(dead_code, reason = "only deserialised")]
        struct T {
            a: Vec<U>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[expect(dead_code, reason = "only deserialised")]
        struct U {
            b: u32,
        }
        let err = serde_yaml::from_str::<T>("a:\n  - b: 1\n  - c: 2\n").unwrap_err();
        let d = Diagnostic::from_yaml("f.yaml", &err);
        assert_eq!((d.line, d.column), (3, 5));
        assert_eq!(d.path, "a[1]");
        assert!(d.message.starts_with("unknown field `c`"), "{}", d.message);
        assert_eq!(d.to_string().split(": ").next(), Some("f.yaml:3:5"));
    }
}
