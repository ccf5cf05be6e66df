//! The operator's DNS hook: the one program that publishes and removes the
//! DNS-01 TXT records, so previewd needs no DNS provider API.
//!
//! Contract (like lego's exec provider and dehydrated's hooks):
//!
//! - `<hook> set <record-name> <value>`: add a TXT record `<value>` at
//!   `<record-name>` (e.g. `_acme-challenge.preview.example.com.`, always
//!   fully qualified with the trailing dot). **Add, do not replace**: a
//!   wildcard plus apex certificate puts two values on the same name. Exit 0
//!   only once the record is published on the authoritative servers (wait
//!   for propagation inside the hook if needed).
//! - `<hook> clear <record-name> <value>`: remove that value again. Failures
//!   are logged and otherwise ignored.
//!
//! Each call gets `timeout`; stdout is ignored, the last lines of stderr end
//! up in the error. `hooks/dns-nsupdate` is an RFC 2136 example.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// At most this much of the hook's stderr goes into an error.
const STDERR_LIMIT: usize = 2048;

/// Why a hook call failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The program could not be started.
    #[error("cannot run DNS hook {}: {source}", program.display())]
    Spawn {
        /// The hook.
        program: PathBuf,
        /// Why exec failed.
        #[source]
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("DNS hook `{} {action} {record}` failed ({status}): {stderr}", program.display())]
    Failed {
        /// The hook.
        program: PathBuf,
        /// `set` or `clear`.
        action: &'static str,
        /// The record name it was called for.
        record: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its stderr.
        stderr: String,
    },
    /// The program did not finish in time and was killed.
    #[error("DNS hook `{} {action} {record}` did not finish within {timeout:?}", program.display())]
    Timeout {
        /// The hook.
        program: PathBuf,
        /// `set` or `clear`.
        action: &'static str,
        /// The record name it was called for.
        record: String,
        /// The limit it exceeded.
        timeout: Duration,
    },
}

/// The configured hook program and its per-call time limit.
#[derive(Debug, Clone)]
pub struct DnsHook {
    program: PathBuf,
    timeout: Duration,
}

impl DnsHook {
    /// A hook running `program` with `timeout` per call.
    pub fn new(program: &Path, timeout: Duration) -> Self {
        Self {
            program: program.to_owned(),
            timeout,
        }
    }

    /// Publishes TXT `value` at `record`.
    pub async fn set(&self, record: &str, value: &str) -> Result<(), HookError> {
        self.call("set", record, value).await
    }

    /// Removes TXT `value` from `record`.
    pub async fn clear(&self, record: &str, value: &str) -> Result<(), HookError> {
        self.call("clear", record, value).await
    }

    async fn call(&self, action: &'static str, record: &str, value: &str) -> Result<(), HookError> {
        let mut child = Command::new(&self.program)
            .args([action, record, value])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // A timed-out or abandoned hook must not linger.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HookError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        let mut stderr_pipe = child.stderr.take();
        let run = async {
            let mut stderr = Vec::new();
            if let Some(pipe) = stderr_pipe.as_mut() {
                // A read error only loses diagnostics.
                let _ = pipe.read_to_end(&mut stderr).await;
            }
            (child.wait().await, stderr)
        };
        let (status, stderr) = match tokio::time::timeout(self.timeout, run).await {
            Ok(done) => done,
            Err(_) => {
                return Err(HookError::Timeout {
                    program: self.program.clone(),
                    action,
                    record: record.to_owned(),
                    timeout: self.timeout,
                })
            }
        };
        let status = status.map_err(|source| HookError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        Err(HookError::Failed {
            program: self.program.clone(),
            action,
            record: record.to_owned(),
            status,
            stderr: tail(&stderr),
        })
    }
}

/// The end of `stderr` as one trimmed line-joined string.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(STDERR_LIMIT);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].lines().collect::<Vec<_>>().join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by a child `sh`: a file this process held open for writing
    /// could be inherited by a hook another test forks at that moment, and
    /// running the script would then fail with "Text file busy".
    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("hook");
        let status = std::process::Command::new("sh")
            .args([
                "-c",
                "printf '%s\\n' \"$2\" > \"$1\" && chmod 755 \"$1\"",
                "sh",
            ])
            .arg(&path)
            .arg(format!("#!/bin/sh\n{body}"))
            .status()
            .expect("sh");
        assert!(status.success(), "writing {}", path.display());
        path
    }

    #[tokio::test]
    async fn arguments_are_action_record_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("calls");
        let hook = script(dir.path(), &format!("echo \"$@\" >> {}", out.display()));
        let hook = DnsHook::new(&hook, Duration::from_secs(10));
        hook.set("_acme-challenge.a.test.", "v1")
            .await
            .expect("set");
        hook.clear("_acme-challenge.a.test.", "v1")
            .await
            .expect("clear");
        let calls = std::fs::read_to_string(out).expect("calls");
        assert_eq!(
            calls,
            "set _acme-challenge.a.test. v1\nclear _acme-challenge.a.test. v1\n"
        );
    }

    #[tokio::test]
    async fn failure_carries_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hook = script(dir.path(), "echo 'zone refused' >&2; exit 3");
        let err = DnsHook::new(&hook, Duration::from_secs(10))
            .set("r.", "v")
            .await
            .expect_err("fails");
        let text = err.to_string();
        assert!(text.contains("zone refused"), "{text}");
        assert!(text.contains("set r."), "{text}");
    }

    #[tokio::test]
    async fn slow_hook_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hook = script(dir.path(), "exec sleep 30");
        let err = DnsHook::new(&hook, Duration::from_millis(200))
            .set("r.", "v")
            .await
            .expect_err("times out");
        assert!(matches!(err, HookError::Timeout { .. }), "{err}");
    }
}
