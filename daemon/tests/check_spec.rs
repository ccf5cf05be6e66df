//! `previewd check-spec` as a user runs it: on files on disk, with exit statuses, and on
//! every example in docs/compose.md.

use std::path::Path;
use std::process::{Command, Output};

fn check_spec(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_previewd"))
        .arg("check-spec")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .output()
        .expect("previewd runs")
}

/// A tree with what the examples name: a root Dockerfile, `app/`, `db/init.sql`.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::create_dir_all(dir.path().join("app")).unwrap();
    std::fs::write(dir.path().join("app/Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::create_dir_all(dir.path().join("db")).unwrap();
    std::fs::write(dir.path().join("db/init.sql"), "select 1;\n").unwrap();
    dir
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn three_mistakes_are_reported_together_with_line_and_column() {
    let dir = tree();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    build: .\n    expose: [\"80\"]\n    privileged: true\n    enviroment:\n      A: b\n    volumes:\n      - /etc:/host-etc:ro\n",
    )
    .unwrap();
    let output = check_spec(dir.path(), &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors.len(), 3, "{text}");
    assert!(errors[0].starts_with("./compose.yaml:5:5: error: services.web.privileged: refused"));
    assert!(
        errors[1].starts_with("./compose.yaml:6:5: error: services.web.enviroment: unknown key")
    );
    assert!(errors[2].starts_with("./compose.yaml:9:9: error: services.web.volumes[0]:"));
    assert!(
        text.ends_with("./compose.yaml: 3 errors, 0 warnings\n"),
        "{text}"
    );
}

#[test]
fn a_good_file_exits_0_and_says_what_runs() {
    let dir = tree();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        "services:\n  web:\n    image: \"app:${TAG}\"\n    ports: [\"8080:80\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".env"), "TAG=v1\n").unwrap();
    let output = check_spec(dir.path(), &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("warning: services.web.ports[0]: host port dropped"),
        "{text}"
    );
    assert!(
        text.ends_with("./docker-compose.yml: ok: 1 service (web); web web:80; 1 warning\n"),
        "{text}"
    );
}

#[test]
fn compose_s_lookup_order_is_followed_and_a_missing_file_is_a_usage_error() {
    let dir = tree();
    let good = "services:\n  web:\n    image: a\n    expose: [\"80\"]\n";
    std::fs::write(dir.path().join("docker-compose.yaml"), "not: [valid\n").unwrap();
    std::fs::write(dir.path().join("compose.yml"), good).unwrap();
    let output = check_spec(dir.path(), &["."]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).starts_with("./compose.yml: ok"));

    let empty = tempfile::tempdir().unwrap();
    let output = check_spec(empty.path(), &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no compose file in ."));
}

#[test]
fn the_hosts_policy_comes_from_its_config() {
    let dir = tree();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: a\n    expose: [\"80\"]\n    cap_add: [NET_ADMIN]\n",
    )
    .unwrap();
    assert_eq!(check_spec(dir.path(), &[]).status.code(), Some(1));
    std::fs::write(
        dir.path().join("previewd.toml"),
        "[policy]\nallowed_capabilities = [\"NET_ADMIN\"]\n",
    )
    .unwrap();
    let output = check_spec(dir.path(), &["--config", "previewd.toml"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[test]
fn every_example_in_the_compose_doc_passes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/compose.md"))
        .unwrap();
    let mut examples = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(text), "```") => {
                examples.push(std::mem::take(text));
                current = None;
            }
            (Some(text), line) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(examples.len() >= 3, "found {} examples", examples.len());
    for example in examples {
        let dir = tree();
        std::fs::write(dir.path().join("compose.yaml"), &example).unwrap();
        let output = check_spec(dir.path(), &[]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "example fails check-spec:\n{example}\n{}",
            stdout(&output)
        );
    }
}
