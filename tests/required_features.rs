//! Built with every feature set, so that a run without the default features is never a quiet
//! one. The tests that start the `shmbus` binary declare `required-features = ["cli"]` in
//! Cargo.toml, and cargo leaves them out without a word under `--no-default-features`: this
//! test lists them (read from Cargo.toml, so the list cannot go stale) and fails, unless
//! `SHMBUS_LIB_ONLY=1` says that a library-only run is what was meant. The federation tests
//! (feature `federation`, not a default one) are named on stderr when left out.
#![cfg(not(shmbus_loom))]

/// Whether this build has `feature`.
fn enabled(feature: &str) -> bool {
    match feature {
        "cli" => cfg!(feature = "cli"),
        "bench" => cfg!(feature = "bench"),
        "tokio" => cfg!(feature = "tokio"),
        "bridge" => cfg!(feature = "bridge"),
        "socketio" => cfg!(feature = "socketio"),
        "federation" => cfg!(feature = "federation"),
        other => panic!("Cargo.toml names a feature this test does not know: {other}"),
    }
}

/// Every `[[test]]` of Cargo.toml with its `required-features`.
fn declared_tests() -> Vec<(String, Vec<String>)> {
    let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("read Cargo.toml");
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_test = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_test = line == "[[test]]";
            continue;
        }
        if !in_test {
            continue;
        }
        let quoted = |s: &str| -> Vec<String> {
            s.split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        if let Some(v) = line.strip_prefix("name") {
            let name = quoted(v).into_iter().next().expect("[[test]] name");
            out.push((name, Vec::new()));
        } else if let Some(v) = line.strip_prefix("required-features") {
            out.last_mut().expect("name before required-features").1 = quoted(v);
        }
    }
    out
}

#[test]
fn tests_left_out_by_the_feature_set_are_named() {
    let declared = declared_tests();
    assert!(
        declared.iter().any(|(n, _)| n == "hub_process"),
        "no [[test]] entries read from Cargo.toml: {declared:?}"
    );
    let left_out: Vec<(&str, Vec<&str>)> = declared
        .iter()
        .filter_map(|(name, req)| {
            let missing: Vec<&str> = req
                .iter()
                .map(String::as_str)
                .filter(|f| !enabled(f))
                .collect();
            (!missing.is_empty()).then_some((name.as_str(), missing))
        })
        .collect();
    let (need_cli, federation_only): (Vec<_>, Vec<_>) =
        left_out.iter().partition(|(_, m)| m.contains(&"cli"));
    if !federation_only.is_empty() {
        eprintln!(
            "left out by this feature set (run `cargo test --release --features federation \
             --test 'federation_*'` with a nats-server on PATH): {federation_only:?}"
        );
    }
    if need_cli.is_empty() || std::env::var_os("SHMBUS_LIB_ONLY").is_some_and(|v| v == "1") {
        return;
    }
    let names: Vec<&str> = need_cli.iter().map(|(n, _)| *n).collect();
    panic!(
        "these tests need the default features: run cargo test --release. This build leaves \
         out {} test binaries that start the shmbus binary (feature `cli`): {}. To run only \
         the library's tests on purpose, set SHMBUS_LIB_ONLY=1.",
        names.len(),
        names.join(", ")
    );
}

/// The `tests/*.rs` files (but this one) whose text `uses` picks, each with the features its
/// `[[test]]` entry requires (none when there is no entry).
fn tests_using(uses: impl Fn(&str) -> bool) -> Vec<(String, Vec<String>)> {
    let declared = declared_tests();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read tests/") {
        let path = entry.expect("tests/ entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_none_or(|e| e != "rs") || name == "required_features" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read test file");
        if !uses(&text) {
            continue;
        }
        let req = declared
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        found.push((name, req));
    }
    found
}

/// Every test file that starts hubs with `--nats` (the federation harness, `mod fed_util`)
/// declares `required-features` with `federation` in Cargo.toml. Without it, `cargo test
/// --release` builds that test against a binary without the feature, and its hubs exit on
/// the unknown `--nats` flag ("hub alpha did not come up"): a CI failure of session 7.
#[test]
fn every_federation_harness_test_requires_the_feature() {
    let found = tests_using(|text| text.lines().any(|l| l.trim() == "mod fed_util;"));
    for (name, req) in &found {
        assert!(
            req.iter().any(|f| f == "federation"),
            "tests/{name}.rs uses the federation harness but Cargo.toml has no [[test]] \
             name = \"{name}\" with required-features = [\"federation\", \"cli\"]: \
             `cargo test --release` would run it without the feature and its hubs would \
             refuse --nats"
        );
    }
    assert!(
        found.len() >= 8,
        "found only {} federation harness tests in tests/",
        found.len()
    );
}

/// Every test file that starts the `shmbus` binary (`util::hub_process`, or the binary's path
/// from cargo) declares `required-features` with `cli`: without it, a build without the default
/// features fails to compile that test (`hub_process` exists only with `cli`) instead of
/// leaving it out by name (clippy `--no-default-features --features tokio`, session 9).
#[test]
fn every_test_that_starts_the_binary_requires_cli() {
    let found =
        tests_using(|text| text.contains("hub_process(") || text.contains("CARGO_BIN_EXE_shmbus"));
    for (name, req) in &found {
        assert!(
            req.iter().any(|f| f == "cli"),
            "tests/{name}.rs starts the shmbus binary but Cargo.toml has no [[test]] \
             name = \"{name}\" with required-features containing \"cli\""
        );
    }
    assert!(
        found.len() >= 10,
        "found only {} tests that start the binary in tests/",
        found.len()
    );
}
