//! The command line's contract: bad flags or configuration give one clear line and exit 2.

use std::process::Command;

fn previewd(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_previewd-e2e-daemon"))
        .args(args)
        .output()
        .expect("run previewd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2() {
    let (code, err) = previewd(&["run", "--https-listen", "not-an-address"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--https-listen"), "{err}");
    let (code, err) = previewd(&["run", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = previewd(&["run", "--domain", "under_score.test"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("invalid domain"), "{err}");
}

#[test]
fn bad_config_files_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "domian = \"x.test\"\n",
            "unknown field `domian`",
        ),
        ("syntax.toml", "domain = \n", "syntax.toml"),
        (
            "instance.toml",
            "instance = \"Bad Name\"\n",
            "invalid instance",
        ),
    ];
    for (name, text, expect) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (code, err) = previewd(&["run", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(expect), "{name}: {err}");
    }
    let (code, err) = previewd(&["run", "--config", "/nonexistent/previewd.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn ls_without_a_daemon_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, err) = previewd(&["ls", "--state-dir", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("previewd is not running"), "{err}");
}
