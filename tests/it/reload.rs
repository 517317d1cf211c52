//! Hot reload: a bad file never replaces a working config, a good one applies without dropping
//! a request, restart-only changes are refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::support::{ALLOW_ALL, Setup, eventually, get};

#[tokio::test]
async fn bad_policy_reload_keeps_old_config_and_reports_file_line() {
    let gw = Setup::default().start().await;
    let before = gw.app().version();
    gw.write(
        "policies/10-all.yaml",
        "rules:\n  - name: all\n    match:\n      paths: [\"/**\"]\n    effect: alow\n    upstream: echo\n",
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("10-all.yaml:5:13"), "file:line:col in {body}");
    assert!(body.contains("rules[0].effect"), "field path in {body}");
    // The same diagnostic, structured, for tools.
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let d = &parsed["diagnostics"][0];
    assert!(
        d["file"].as_str().unwrap().ends_with("10-all.yaml"),
        "{body}"
    );
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(5), Some(13)),
        "{body}"
    );
    assert_eq!(d["severity"], "error", "{body}");
    assert_eq!(gw.app().version(), before, "old snapshot kept");
    let (s, _, _) = get(gw.addr(), "/still/served").await;
    assert_eq!(s, StatusCode::OK);
    let (_, config) = gw.admin_get("/config").await;
    assert!(config.contains("10-all.yaml:5:13"), "{config}");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["last_reload_diagnostics"][0]["line"], 5, "{config}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(metrics.contains(r#"portcullis_config_reloads_total{outcome="failed"} 1"#));

    // Fixing the file clears the error.
    gw.write(
        "policies/10-all.yaml",
        ALLOW_ALL.replace("name: all", "name: all2"),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("applied"));
    let (_, config) = gw.admin_get("/config").await;
    assert!(config.contains("\"last_reload_error\":null"), "{config}");
}

#[tokio::test]
async fn semantic_error_in_config_reload_is_reported_with_line() {
    let gw = Setup::default().start().await;
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    let broken = config.replacen("url: http://", "url: ftp://", 1);
    gw.write("portcullis.yaml", broken);
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("portcullis.yaml:8:5: error: upstreams.echo.url"),
        "{body}"
    );
    let (s, _, _) = get(gw.addr(), "/x").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn watched_policy_change_takes_effect() {
    let gw = watched_gateway().await;
    gw.write(
        "policies/05-block.yaml",
        "rules:\n  - name: block\n    match: {paths: [\"/blocked/**\"]}\n    effect: deny\n",
    );
    let addr = gw.addr();
    let applied = answers_soon(addr, "/blocked/x", StatusCode::FORBIDDEN).await;
    assert!(applied, "new rule applied from the file watcher");
    assert_eq!(get(gw.addr(), "/other").await.0, StatusCode::OK);
}

/// A deny written while another file in the policies directory changes faster than the
/// watcher's debounce (every 20 ms here, against the tests' 50 ms; a sync tool's state file)
/// takes effect during the churn, not after it: a file the loader does not read wakes no
/// reload and holds none back. Before, the deny waited as long as the churn lasted.
#[tokio::test]
async fn a_deny_applies_while_the_directory_keeps_changing() {
    let gw = watched_gateway().await;
    let notes = gw.path("policies/notes.txt");
    let churning = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let churn = {
        let churning = std::sync::Arc::clone(&churning);
        tokio::spawn(async move {
            // 8 s at most, ended early once the deny is seen.
            for i in 0..400 {
                if !churning.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::fs::write(&notes, format!("{i}\n")).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.write(
        "policies/05-block.yaml",
        "rules:\n  - name: block\n    match: {paths: [\"/blocked/**\"]}\n    effect: deny\n",
    );
    let addr = gw.addr();
    let applied = eventually(Duration::from_secs(3), || async move {
        get(addr, "/blocked/x").await.0 == StatusCode::FORBIDDEN
    })
    .await;
    let still_churning = !churn.is_finished();
    churning.store(false, std::sync::atomic::Ordering::Relaxed);
    churn.await.unwrap();
    assert!(applied, "the deny waited for the churn to end");
    assert!(still_churning, "the churn outlasted the wait");
}

/// The policies directory replaced whole, as a release swaps it (a new directory renamed
/// into place), is read, and the new directory's later edits are watched too.
#[tokio::test]
async fn a_replaced_policies_directory_is_still_watched() {
    let gw = watched_gateway().await;
    let (dir, next) = next_policies(&gw);
    std::fs::write(
        next.join("05-block.yaml"),
        "rules:\n  - name: block\n    match: {paths: [\"/blocked/**\"]}\n    effect: deny\n",
    )
    .unwrap();
    std::fs::rename(&dir, gw.path("policies.old")).unwrap();
    std::fs::rename(&next, &dir).unwrap();
    let addr = gw.addr();
    let applied = answers_soon(addr, "/blocked/x", StatusCode::FORBIDDEN).await;
    assert!(applied, "the swapped-in directory was read");

    // An edit inside the new directory.
    gw.write(
        "policies/06-block.yaml",
        "rules:\n  - name: block2\n    match: {paths: [\"/also/**\"]}\n    effect: deny\n",
    );
    let applied = answers_soon(addr, "/also/x", StatusCode::FORBIDDEN).await;
    assert!(applied, "an edit in the swapped-in directory was seen");
    assert_eq!(get(gw.addr(), "/other").await.0, StatusCode::OK);
}

/// Deploys the gateway's policies as releases under `deploy/` (`deploy/releases/rN/<sub>`,
/// `deploy/current -> releases/r1`), points the config at them through `dir` (after `links`
/// are made: `(link, target)` pairs in the gateway's directory), waits for the watcher to
/// apply that, then swaps `deploy/current` to a release adding a deny rule, as deploy tools
/// do (a new link renamed over): the deny applies.
async fn a_swapped_release_applies(sub: &str, links: &[(&str, &str)], dir: &str) {
    let gw = watched_gateway().await;
    let release = |name: &str, extra: &str| {
        let dir = gw.path(&format!("deploy/releases/{name}/{sub}"));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(gw.path("policies")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        if !extra.is_empty() {
            std::fs::write(dir.join("05-block.yaml"), extra).unwrap();
        }
    };
    release("r1", "");
    std::os::unix::fs::symlink("releases/r1", gw.path("deploy/current")).unwrap();
    for (link, target) in links {
        let link = gw.path(link);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    assert!(config.contains("dir: policies"), "{config}");
    gw.write(
        "portcullis.yaml",
        config.replace("dir: policies", &format!("dir: {dir}")),
    );
    // The watcher applies the new config; then nothing is pending.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.lines().any(|l| {
            l.starts_with(r#"portcullis_config_reloads_total{outcome="applied"} "#)
                && !l.ends_with(" 0")
        }),
        "{metrics}"
    );
    assert_eq!(get(gw.addr(), "/blocked/x").await.0, StatusCode::OK);
    release("r2", BLOCK);
    std::os::unix::fs::symlink("releases/r2", gw.path("deploy/current.tmp")).unwrap();
    std::fs::rename(gw.path("deploy/current.tmp"), gw.path("deploy/current")).unwrap();
    assert!(
        answers_soon(gw.addr(), "/blocked/x", StatusCode::FORBIDDEN).await,
        "the new release was not applied"
    );
}

/// The policies under a release link (`deploy/current -> releases/r1`, as Capistrano and
/// git-sync lay them out, in a directory of its own): the link swapped to a new release, the
/// old one still on disk, applies the new release's rules. (It did not: no watched directory
/// saw the swap.)
#[tokio::test]
async fn a_release_link_swapped_above_the_policies_is_applied() {
    a_swapped_release_applies("policies", &[], "deploy/current/policies").await;
}

/// The same through two links: the policies reached by `etc/pc -> ../deploy/current/config`,
/// and `deploy/current` swapped. (The second link's directory was on no path as written, and
/// was not watched.)
#[tokio::test]
async fn a_release_link_inside_another_links_target_is_watched() {
    a_swapped_release_applies(
        "config/policies",
        &[("etc/pc", "../deploy/current/config")],
        "etc/pc/policies",
    )
    .await;
}

/// A policy file named in upper case (`.YAML`), which the loader reads, is watched too: its
/// edit applies. (The watcher matched lower case only.)
#[tokio::test]
async fn an_upper_case_policy_file_is_watched() {
    let gw = watched_gateway().await;
    gw.write(
        "policies/05-block.YAML",
        BLOCK
            .replace("effect: deny", "effect: deny\n    methods: [POST]")
            .as_str(),
    );
    gw.write("policies/05-block.YAML", BLOCK);
    assert!(
        answers_soon(gw.addr(), "/blocked/x", StatusCode::FORBIDDEN).await,
        "the edit of an upper-case policy file was not applied"
    );
}

/// Rules enough that compiling them takes a while (a large deployment's policy set).
fn many_rules(n: usize) -> String {
    let mut p = String::from("rules:\n");
    for i in 0..n {
        p.push_str(&format!(
            "  - name: r{i}\n    match: {{paths: [\"/svc{i}/**\"], methods: [GET]}}\n    effect: allow\n    anonymous: true\n    upstream: echo\n    when: \"request.path.startsWith('/svc{i}/')\"\n"
        ));
    }
    p
}

/// A deny rule for `/blocked/**`.
const BLOCK: &str =
    "rules:\n  - name: block\n    match: {paths: [\"/blocked/**\"]}\n    effect: deny\n";

/// A policy file written while the gateway reads its config at start (a ConfigMap or
/// git-sync update landing as the pod starts), before its files are watched, is applied.
/// (It was not: the old policy ran until some later edit.)
#[tokio::test]
async fn a_file_written_while_the_gateway_starts_is_applied() {
    let started = std::time::Instant::now();
    let gw = Setup {
        watch: true,
        policies: vec![
            ("05-many.yaml".into(), many_rules(3000)),
            ("10-all.yaml".into(), ALLOW_ALL.into()),
        ],
        ..Setup::default()
    }
    .start_while(|dir| {
        std::thread::sleep(Duration::from_millis(30));
        std::fs::write(dir.join("policies/01-block.yaml"), BLOCK).unwrap();
    })
    .await;
    let took = started.elapsed();
    assert!(
        answers_soon(gw.addr(), "/blocked/x", StatusCode::FORBIDDEN).await,
        "the file written at start was applied (start took {took:?})"
    );
    assert_eq!(get(gw.addr(), "/other").await.0, StatusCode::OK);
}

/// A policies directory replaced whole, then given a file while the reload it caused is still
/// compiling (before the new directory is watched): the file is applied, by a reload after
/// the watch is set. (It was lost: the rules stayed stale, with nothing reported.)
#[tokio::test]
async fn a_file_added_while_a_replaced_directory_reloads_is_applied() {
    let gw = watched_gateway().await;
    let (dir, next) = next_policies(&gw);
    std::fs::write(next.join("05-many.yaml"), many_rules(3000)).unwrap();
    std::fs::rename(&dir, gw.path("policies.old")).unwrap();
    std::fs::rename(&next, &dir).unwrap();
    // After the 50 ms debounce, while the 3,000 rules compile.
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::write(dir.join("01-block.yaml"), BLOCK).unwrap();
    let addr = gw.addr();
    assert!(
        eventually(Duration::from_secs(15), || async move {
            get(addr, "/blocked/x").await.0 == StatusCode::FORBIDDEN
        })
        .await,
        "the file added during the reload was applied"
    );
    assert_eq!(get(gw.addr(), "/svc7/x").await.0, StatusCode::OK);
}

/// A reload refused for emptying the policy set logs the refusal, not the warning its config
/// would have earned ("every request will be denied"), which described rules that never ran.
#[tokio::test]
async fn a_refused_reloads_warnings_are_not_logged() {
    let echo = portcullis::echo::Echo::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let bin = crate::memory::Binary::start_with(
        echo.addr,
        "  - name: http\n    address: 127.0.0.1:0\n",
        "",
        "",
        ALLOW_ALL,
        &[],
        &[],
    );
    std::fs::write(bin.dir.path().join("policies/10-all.yaml"), "rules: []\n").unwrap();
    let req = http::Request::post("/reload")
        .header("host", bin.admin.to_string())
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, _, _) = crate::support::send(bin.admin, req).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let refused = eventually(Duration::from_secs(5), || async {
        !bin.log_lines("Config reload failed").is_empty()
    })
    .await;
    assert!(refused);
    assert!(
        bin.log_lines("no rules found").is_empty(),
        "{:?}",
        bin.log_lines("rules")
    );
    assert_eq!(get(bin.addr("http"), "/x").await.0, StatusCode::OK);
}

/// A policy file that is a symlink to a file elsewhere: an edit made at the target applies
/// without a signal. (Only the link's directory was watched: the edit went unseen until
/// SIGHUP.)
#[tokio::test]
async fn an_edit_at_a_linked_files_target_is_seen() {
    let gw = watched_gateway().await;
    let ext = gw.path("ext");
    std::fs::create_dir(&ext).unwrap();
    let target = ext.join("05.yaml");
    std::fs::write(
        &target,
        "rules:\n  - name: ext\n    match: {paths: [\"/ext/**\"]}\n    effect: deny\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../ext/05.yaml", gw.path("policies/05-ext.yaml")).unwrap();
    let addr = gw.addr();
    assert!(
        answers_soon(addr, "/ext/x", StatusCode::FORBIDDEN).await,
        "the link was read"
    );
    // Edited where it lives, renamed over as editors do.
    let next = ext.join(".05.yaml.tmp");
    std::fs::write(
        &next,
        "rules:\n  - name: ext\n    match: {paths: [\"/ext/**\"]}\n    effect: deny\n  - name: ext2\n    match: {paths: [\"/ext2/**\"]}\n    effect: deny\n",
    )
    .unwrap();
    std::fs::rename(&next, &target).unwrap();
    assert!(
        answers_soon(addr, "/ext2/x", StatusCode::FORBIDDEN).await,
        "the edit at the target was seen"
    );
}

/// A config that names a file not there yet is refused; the file, made next, is watched
/// (it was no file of the running config) and its arrival applies the config.
#[tokio::test]
async fn a_file_a_refused_config_names_is_watched() {
    let old_secret = b"the-first-secret-of-thirty-two-bytes-or-more";
    let new_secret = b"the-second-secret-of-thirty-two-bytes-or-more";
    let gw = Setup {
        watch: true,
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: api, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users], upstream: echo}\n".into(),
        )],
        files: vec![("hs.secret".into(), old_secret.to_vec())],
        extra: crate::support::hs256_users("{}"),
        ..Setup::default()
    }
    .start()
    .await;
    let addr = gw.addr();
    let with = |secret: &'static [u8]| async move {
        let t = crate::support::hs256_token(secret, &serde_json::json!({"sub": "alice"}));
        crate::support::raw_status(addr, "/x", &format!("Authorization: Bearer {t}\r\n")).await
    };
    assert_eq!(with(old_secret).await, 200);
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    gw.write(
        "portcullis.yaml",
        config.replace("file: hs.secret", "file: keys/new.secret"),
    );
    let refused = eventually(Duration::from_secs(5), || async {
        let (_, metrics) = gw.admin_get("/metrics").await;
        metrics.contains(r#"portcullis_config_reloads_total{outcome="failed"} 1"#)
    })
    .await;
    assert!(refused, "the config naming a missing file is refused");
    assert_eq!(with(old_secret).await, 200, "the running config stays");
    std::fs::create_dir(gw.path("keys")).unwrap();
    crate::support::write_atomic(&gw.path("keys/new.secret"), new_secret);
    let applied = eventually(Duration::from_secs(5), || async {
        with(new_secret).await == 200
    })
    .await;
    assert!(applied, "the file's arrival applied the config");
    assert_eq!(with(old_secret).await, 401);
}

/// A file the config does not read, beside it (a log), wakes no reload; a watched change
/// after it still applies.
#[tokio::test]
async fn unrelated_files_beside_the_config_wake_no_reload() {
    let gw = Setup {
        watch: true,
        ..Setup::default()
    }
    .start()
    .await;
    for i in 0..5 {
        gw.write("gateway.log", format!("line {i}\n"));
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    gw.write(
        "policies/05-block.yaml",
        "rules:\n  - name: block\n    match: {paths: [\"/blocked/**\"]}\n    effect: deny\n",
    );
    let addr = gw.addr();
    let applied = answers_soon(addr, "/blocked/x", StatusCode::FORBIDDEN).await;
    assert!(applied, "the watched change applied");
    let (_, metrics) = gw.admin_get("/metrics").await;
    let reloads: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_config_reloads_total{"))
        .collect();
    assert_eq!(
        reloads,
        [r#"portcullis_config_reloads_total{outcome="applied"} 1"#],
        "{metrics}"
    );
}

#[tokio::test]
async fn restart_only_change_fails_reload() {
    let gw = Setup::default().start().await;
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    gw.write(
        "portcullis.yaml",
        config.replacen("address: 127.0.0.1:0", "address: 127.0.0.2:0", 1),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("restart required"), "{body}");
    // The listener's own address is named, at its line.
    let line = config
        .lines()
        .position(|l| l.contains("address: 127.0.0.1:0"))
        .unwrap()
        + 1;
    assert!(
        body.contains(&format!(
            "portcullis.yaml:{line}:5: error: listeners[0].address: changed: restart required"
        )),
        "{body}"
    );
    assert!(
        body.contains("nothing of this reload is applied (policies and other edits included)"),
        "{body}"
    );
    assert_eq!(get(gw.addr(), "/x").await.0, StatusCode::OK);
}

/// A restart-only setting other than the listeners (the log level raised to troubleshoot)
/// waits for the restart with a warning, and the rest of the reload applies: an emergency
/// deny rule added beside it is in force, as `check` and `explain` say.
#[tokio::test]
async fn a_restart_only_setting_waits_while_the_rest_applies() {
    let gw = Setup::default().start().await;
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    assert!(
        config.contains("logging:\n  access_log: false\n"),
        "{config}"
    );
    gw.write(
        "portcullis.yaml",
        config.replace(
            "logging:\n  access_log: false\n",
            "logging:\n  access_log: false\n  level: debug\n",
        ),
    );
    gw.write(
        "policies/01-lockdown.yaml",
        "rules:\n  - name: lockdown\n    match: {paths: [\"/reports/**\"]}\n    effect: deny\n",
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"outcome\":\"applied\""), "{body}");
    assert!(
        body.contains(
            "logging: format or level changed: restart required; the running value stays until then"
        ),
        "{body}"
    );
    assert_eq!(get(gw.addr(), "/reports/q3").await.0, StatusCode::FORBIDDEN);
    let (_, shown) = gw.admin_get("/config").await;
    assert!(shown.contains("restart required"), "{shown}");
    // Still waiting at the next reload, which applies too.
    gw.write(
        "policies/02-more.yaml",
        "rules:\n  - name: more\n    match: {paths: [\"/more/**\"]}\n    effect: deny\n",
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("restart required"), "{body}");
    assert_eq!(get(gw.addr(), "/more/x").await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(gw.addr(), "/x").await.0, StatusCode::OK);
    // A reload that finds nothing else changed still says so.
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"outcome\":\"unchanged\""), "{body}");
    assert!(body.contains("restart required"), "{body}");
    let (_, shown) = gw.admin_get("/config").await;
    assert!(shown.contains("restart required"), "{shown}");
}

#[tokio::test]
async fn twenty_reloads_under_load_drop_nothing() {
    let gw = Setup::default().start().await;
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            // Bounded: stops on the flag or after 5,000 requests.
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (s, _, _) = get(addr, "/load").await;
                if s == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for i in 0..20 {
        gw.write(
            "policies/10-all.yaml",
            ALLOW_ALL.replace("name: all", &format!("name: all-{i}")),
        );
        let (status, body) = gw.admin_post("/reload").await;
        assert_eq!(status, StatusCode::OK, "reload {i}: {body}");
        assert!(body.contains("applied"), "reload {i}: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) >= 20, "load actually ran");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(metrics.contains(r#"portcullis_config_reloads_total{outcome="applied"} 20"#));
}

/// A policy file edited to add a rule (watched, not asked for): the new route opens while a
/// client loop on the existing one sees no failure.
#[tokio::test]
async fn a_reload_that_adds_a_rule_takes_effect_without_dropping_a_request() {
    let old = "rules:
  - name: old
    match: {paths: [\"/old/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
";
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), old.into())],
        watch: true,
        ..Setup::default()
    }
    .start()
    .await;
    let addr = gw.addr();
    assert_eq!(get(addr, "/new/x").await.0, StatusCode::FORBIDDEN);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if get(addr, "/old/x").await.0 == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    gw.write(
        "policies/10-p.yaml",
        format!("{old}  - name: new\n    match: {{paths: [\"/new/**\"]}}\n    effect: allow\n    anonymous: true\n    upstream: echo\n"),
    );
    let opened = eventually(Duration::from_secs(10), || async {
        get(addr, "/new/x").await.0 == StatusCode::OK
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(opened, "the added rule took effect");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    assert!(ok.load(Ordering::Relaxed) > 0, "load actually ran");
}

// === Secret files: watched and hashed into the version ===

const OLD_SECRET: &[u8] = b"old-secret-0123456789abcdef-0123456789";
const NEW_SECRET: &[u8] = b"new-secret-0123456789abcdef-0123456789";

/// A gateway verifying HS256 tokens with the secret file `hs.secret` (holding
/// [`OLD_SECRET`]), watched or not; with tokens signed by the old and the new secret, the old
/// one checked to pass.
async fn hmac_secret_gateway(watch: bool) -> (crate::support::TestGateway, String, String) {
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), USERS_ONLY.into())],
        files: vec![("hs.secret".into(), OLD_SECRET.to_vec())],
        extra: crate::support::hs256_users("{}"),
        watch,
        ..Setup::default()
    }
    .start()
    .await;
    let old_token = crate::support::hs256_token(OLD_SECRET, &serde_json::json!({}));
    let new_token = crate::support::hs256_token(NEW_SECRET, &serde_json::json!({}));
    assert_eq!(bearer_status(&gw, &old_token).await, StatusCode::OK);
    (gw, old_token, new_token)
}

/// Rotating the HMAC secret file (overwritten, then `POST /reload`) applies: the old secret
/// stops working at once, the new one works, the version changes.
#[tokio::test]
async fn rotated_hmac_secret_file_applies_on_reload() {
    let (gw, old_token, new_token) = hmac_secret_gateway(false).await;
    let before = gw.app().version();
    // Overwritten in place (not renamed), as `echo new > file` does.
    std::fs::write(gw.path("hs.secret"), NEW_SECRET).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("applied"), "{body}");
    assert_ne!(gw.app().version(), before);
    assert_eq!(
        bearer_status(&gw, &old_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(bearer_status(&gw, &new_token).await, StatusCode::OK);
}

/// A secret file replaced by a pipe fails that reload at once, naming why, and the running
/// config stays; the file put back applies at the next reload.
#[tokio::test]
async fn a_pipe_in_place_of_a_secret_file_never_stops_reloads() {
    let (gw, old_token, new_token) = hmac_secret_gateway(false).await;
    let secret = gw.path("hs.secret");
    std::fs::remove_file(&secret).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&secret)
        .status()
        .unwrap();
    assert!(made.success());
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), gw.admin_post("/reload"))
        .await
        .expect("the reload answers");
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(body.contains("not a regular file"), "{body}");
    assert_eq!(bearer_status(&gw, &old_token).await, StatusCode::OK);
    std::fs::remove_file(&secret).unwrap();
    std::fs::write(&secret, NEW_SECRET).unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), gw.admin_post("/reload"))
        .await
        .expect("the next reload answers");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(bearer_status(&gw, &new_token).await, StatusCode::OK);
    assert_eq!(
        bearer_status(&gw, &old_token).await,
        StatusCode::UNAUTHORIZED
    );
}

/// The same rotation seen by the file watcher, without any explicit reload.
#[tokio::test]
async fn rotated_hmac_secret_file_is_watched() {
    let (gw, old_token, _) = hmac_secret_gateway(true).await;
    gw.write("hs.secret", NEW_SECRET);
    let gw = &gw;
    let applied = eventually(Duration::from_secs(5), || {
        let t = old_token.clone();
        async move { bearer_status(gw, &t).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    assert!(applied, "the watcher reloads a rotated secret file");
}

/// An API-key shared secret read from a file: SIGHUP (`App::reload`) after a rotation makes
/// the old secret fail.
#[tokio::test]
async fn rotated_api_key_secret_file_applies_on_signal() {
    let extra = "authenticators:
  cron:
    api_key:
      from: [{header: x-shared-secret}]
      keys:
        - id: cron-key
          owner: svc-cron
          secret: {file: cron.secret}
";
    let policy = USERS_ONLY.replace("[users]", "[cron]");
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), policy)],
        files: vec![(
            "cron.secret".into(),
            b"correct horse battery staple".to_vec(),
        )],
        extra: extra.into(),
        ..Setup::default()
    }
    .start()
    .await;
    let status = |secret: &'static str| {
        let addr = gw.addr();
        async move {
            crate::support::send(
                addr,
                http::Request::get("/api/x")
                    .header("x-shared-secret", secret)
                    .body(http_body_util::Full::default())
                    .unwrap(),
            )
            .await
            .0
        }
    };
    assert_eq!(status("correct horse battery staple").await, StatusCode::OK);
    std::fs::write(gw.path("cron.secret"), "tr0ub4dor&3 is no better at all").unwrap();
    let outcome = gw.app().reload().await.expect("reload");
    assert!(
        matches!(
            outcome,
            portcullis::config::reload::ReloadOutcome::Applied { .. }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        status("correct horse battery staple").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status("tr0ub4dor&3 is no better at all").await,
        StatusCode::OK
    );
}

/// `/api/**` needs the `users` authenticator.
const USERS_ONLY: &str = "rules:
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
";

async fn bearer_status(gw: &crate::support::TestGateway, token: &str) -> StatusCode {
    crate::support::send(
        gw.addr(),
        http::Request::get("/api/x")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await
    .0
}

/// An emptied policy file (truncated, or a ConfigMap mid-update) is refused: the running rules
/// stay and the reload fails, counted. With `policies.allow_empty: true` it applies.
#[tokio::test]
async fn reload_to_zero_rules_is_refused_unless_allowed() {
    let gw = Setup::default().start().await;
    let before = gw.app().version();
    gw.write("policies/10-all.yaml", "");
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("empty policy file"), "{body}");
    assert_eq!(gw.app().version(), before, "running rules stay");
    assert_eq!(get(gw.addr(), "/x").await.0, StatusCode::OK);
    gw.write("policies/10-all.yaml", "rules: []\n");
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("hold no rule"), "{body}");
    assert!(body.contains("allow_empty"), "{body}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_config_reloads_total{outcome="failed"} 2"#),
        "{metrics}"
    );

    // Intended: the config says so.
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    gw.write(
        "portcullis.yaml",
        config.replace(
            "policies:\n  dir: policies\n",
            "policies:\n  dir: policies\n  allow_empty: true\n",
        ),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(gw.addr(), "/x").await.0, StatusCode::FORBIDDEN);
}

/// A policy file truncated to be rewritten, or a `*.yaml` entry that cannot be read (a dangling
/// link, a directory), is an error: the running policies, the deny rule among them, stay.
#[tokio::test]
async fn unreadable_or_empty_policy_file_keeps_the_running_policies() {
    let deny = "rules:\n  - {name: admin, match: {paths: [\"/admin/**\"]}, effect: deny}\n";
    let gw = Setup {
        policies: vec![
            ("10-deny.yaml".into(), deny.into()),
            ("90-all.yaml".into(), "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n".into()),
        ],
        ..Setup::default()
    }
    .start()
    .await;
    assert_eq!(get(gw.addr(), "/admin/x").await.0, StatusCode::FORBIDDEN);
    let deny_path = gw.path("policies/10-deny.yaml");
    type BreakIt<'a> = Box<dyn Fn() + 'a>;
    let attempts: [(&str, BreakIt<'_>); 7] = [
        (
            "truncated",
            Box::new(|| std::fs::write(&deny_path, "").unwrap()),
        ),
        // Read as no rules, these dropped the deny (an outside tester's finding).
        (
            "blank lines",
            Box::new(|| std::fs::write(&deny_path, "\n\n   \n").unwrap()),
        ),
        (
            "only a comment",
            Box::new(|| std::fs::write(&deny_path, "# the admin rule\n").unwrap()),
        ),
        (
            "`rules:` with nothing after it",
            Box::new(|| std::fs::write(&deny_path, "rules:\n").unwrap()),
        ),
        (
            "no `rules` key",
            Box::new(|| std::fs::write(&deny_path, "case_insensitive_paths: true\n").unwrap()),
        ),
        (
            "a dangling link",
            Box::new(|| {
                std::fs::remove_file(&deny_path).unwrap();
                std::os::unix::fs::symlink("..data/10-deny.yaml", &deny_path).unwrap();
            }),
        ),
        (
            "a directory",
            Box::new(|| {
                std::fs::remove_file(&deny_path).unwrap();
                std::fs::create_dir(&deny_path).unwrap();
            }),
        ),
    ];
    for (what, break_it) in attempts {
        break_it();
        let (status, body) = gw.admin_post("/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert!(body.contains("10-deny.yaml"), "{what}: {body}");
        assert_eq!(
            get(gw.addr(), "/admin/x").await.0,
            StatusCode::FORBIDDEN,
            "{what}"
        );
        // Whole again, for the next.
        if deny_path.is_dir() {
            std::fs::remove_dir(&deny_path).unwrap();
        } else {
            std::fs::remove_file(&deny_path).unwrap();
        }
        std::fs::write(&deny_path, deny).unwrap();
        assert_eq!(gw.admin_post("/reload").await.0, StatusCode::OK, "{what}");
    }
}

/// Files an editor keeps beside a policy (Emacs's lock, a dangling link while a buffer has
/// unsaved changes; a hidden backup copy) are not read: reloads go on, and the rules are not
/// doubled.
#[tokio::test]
async fn hidden_files_are_not_policies() {
    let deny = "rules:\n  - {name: admin, match: {paths: [\"/admin/**\"]}, effect: deny}\n";
    let gw = Setup {
        policies: vec![
            ("10-deny.yaml".into(), deny.into()),
            ("90-all.yaml".into(), "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n".into()),
        ],
        ..Setup::default()
    }
    .start()
    .await;
    std::os::unix::fs::symlink("root@host.1234:1", gw.path("policies/.#10-deny.yaml")).unwrap();
    std::fs::write(gw.path("policies/.10-deny.yaml.swp.yaml"), deny).unwrap();
    let stricter =
        "rules:\n  - {name: admin, match: {paths: [\"/admin/**\", \"/ops/**\"]}, effect: deny}\n";
    std::fs::write(gw.path("policies/10-deny.yaml"), stricter).unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(gw.addr(), "/ops/x").await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(gw.addr(), "/admin/x").await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(gw.addr(), "/x").await.0, StatusCode::OK);
}

/// Whether `GET path` answers `status` within 5 s (a watched change applied).
async fn answers_soon(addr: std::net::SocketAddr, path: &'static str, status: StatusCode) -> bool {
    eventually(Duration::from_secs(5), || async move {
        get(addr, path).await.0 == status
    })
    .await
}

/// The gateway's `policies` directory, and `policies.next` made beside it holding a copy of
/// its files (a release being prepared, to be renamed into place).
fn next_policies(gw: &crate::support::TestGateway) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = gw.path("policies");
    let next = gw.path("policies.next");
    std::fs::create_dir(&next).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), next.join(entry.file_name())).unwrap();
    }
    (dir, next)
}

/// A gateway whose files are watched, serving `/blocked/x` (no rule refuses it yet).
async fn watched_gateway() -> crate::support::TestGateway {
    let gw = Setup {
        watch: true,
        ..Setup::default()
    }
    .start()
    .await;
    assert_eq!(get(gw.addr(), "/blocked/x").await.0, StatusCode::OK);
    gw
}

/// What a web page can make a browser send to the admin listener is refused: a cross-origin
/// `POST /reload` (a form needs no preflight), and any request naming the listener by a name
/// other than its address, `localhost` or `admin.allowed_hosts` (a page whose name was rebound
/// to 127.0.0.1). Tools that name it by address, and listed names, are served.
#[tokio::test]
async fn admin_refuses_what_a_web_page_sends() {
    let gw = Setup {
        admin: "  allowed_hosts: [portcullis-admin.svc]\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let admin = gw.app().admin_addr();
    let reloads = |text: String| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("portcullis_config_reloads_total"))
            .map(str::to_owned)
            .collect()
    };
    // A reload from a tool, so the counter has a line to compare.
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = reloads(gw.admin_get("/metrics").await.1);
    assert!(!before.is_empty());
    let ask = |method: http::Method, path: &str, headers: &[(&str, &str)]| {
        let mut req = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        crate::support::send(admin, req.body(http_body_util::Full::default()).unwrap())
    };
    let (status, _, body) = ask(
        http::Method::POST,
        "/reload",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    assert_eq!(&body[..], b"cross-origin request refused\n");
    for host in [
        "evil.example",
        "evil.example:9901",
        "127.0.0.1.evil.example",
    ] {
        let (status, _, body) = ask(http::Method::GET, "/config", &[("host", host)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}: {body:?}");
        assert!(
            !String::from_utf8_lossy(&body).contains("version"),
            "{host}"
        );
        let (status, _, _) = ask(http::Method::POST, "/reload", &[("host", host)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
    }
    // Two `Host` lines, the first one allowed.
    let (status, _, body) = ask(
        http::Method::GET,
        "/config",
        &[("host", "127.0.0.1"), ("host", "evil.example")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    assert_eq!(&body[..], b"more than one Host header\n");
    // Nothing above reloaded.
    assert_eq!(reloads(gw.admin_get("/metrics").await.1), before);
    for host in [
        "127.0.0.1",
        "localhost:9901",
        "[::1]:9901",
        "Portcullis-Admin.svc:9901",
    ] {
        let (status, _, body) = ask(http::Method::GET, "/config", &[("host", host)]).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body:?}");
    }
}
