//! The git side of the mirror's `post-receive` hook: rendering the script installed into the
//! mirror, and `previewd hook post-receive`, which the script runs to poke the daemon and tell
//! the pusher where each branch's preview is.

use std::io::BufRead;
use std::path::Path;

use crate::control;

/// The hook script of `hooks/post-receive`, with this binary and state dir filled in, so it
/// works when previewd is not on `PATH` (as under `cargo run`).
pub fn render(binary: &Path, state_dir: &Path) -> String {
    include_str!("../../hooks/post-receive")
        .replace("@PREVIEWD_BIN@", &shell_quote(&binary.to_string_lossy()))
        .replace("@STATE_DIR@", &shell_quote(&state_dir.to_string_lossy()))
}

/// Single-quotes `s` for sh: the only character that needs care inside '' is ' itself.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One line git feeds a post-receive hook: `<old> <new> <ref>`.
#[derive(Debug, PartialEq, Eq)]
struct Update {
    branch: String,
    deleted: bool,
}

fn parse(line: &str) -> Option<Update> {
    let mut parts = line.split_whitespace();
    let (_old, new, name) = (parts.next()?, parts.next()?, parts.next()?);
    let branch = name.strip_prefix("refs/heads/")?;
    Some(Update {
        branch: branch.to_owned(),
        deleted: new.bytes().all(|b| b == b'0'),
    })
}

/// Reads the pushed refs from `input`, pokes the daemon and writes one line per branch to
/// `out`. Never fails the push: every problem becomes a line of text.
pub async fn post_receive(state_dir: &Path, input: impl BufRead, out: &mut impl std::io::Write) {
    let updates: Vec<Update> = input
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| parse(&l))
        .collect();
    if updates.is_empty() {
        return;
    }
    let socket = crate::config::socket_path(state_dir);
    let rows = match control::poke(&socket).await {
        Ok(rows) => rows,
        Err(error) => {
            let _ = writeln!(out, "previewd: {error}");
            let _ = writeln!(out, "previewd: previews update when the daemon runs again");
            return;
        }
    };
    for update in updates {
        let row = rows.iter().find(|r| r.branch == update.branch);
        let line = match (row, update.deleted) {
            (_, true) => format!("{}: deleted, its preview is being removed", update.branch),
            (Some(row), false) => {
                format!("{}: {} ({})", row.branch, row.url, row.state.as_str())
            }
            (None, false) => format!("{}: no preview (main, or merged into it)", update.branch),
        };
        let _ = writeln!(out, "previewd: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
        let script = render(Path::new("/opt/previewd"), Path::new("/var/lib/previewd"));
        assert!(script.contains("PREVIEWD='/opt/previewd'"));
        assert!(script.contains("STATE_DIR='/var/lib/previewd'"));
        assert!(!script.contains('@'));
    }

    #[test]
    fn parses_pushed_and_deleted_branches() {
        let zero = "0".repeat(40);
        let one = "1".repeat(40);
        assert_eq!(
            parse(&format!("{zero} {one} refs/heads/feature/x")),
            Some(Update {
                branch: "feature/x".into(),
                deleted: false
            })
        );
        assert_eq!(
            parse(&format!("{one} {zero} refs/heads/old")),
            Some(Update {
                branch: "old".into(),
                deleted: true
            })
        );
        assert_eq!(parse(&format!("{zero} {one} refs/tags/v1")), None);
        assert_eq!(parse("garbage"), None);
    }

    #[tokio::test]
    async fn a_daemon_that_is_down_is_reported_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let line = format!("{} {} refs/heads/x\n", "0".repeat(40), "1".repeat(40));
        let mut out = Vec::new();
        post_receive(tmp.path(), line.as_bytes(), &mut out).await;
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("previewd is not running"), "{text}");
    }
}
