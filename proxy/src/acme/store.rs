//! What mode "acme" keeps on disk, one directory per ACME server under
//! `<state_dir>/tls/acme/<server>/`: `account.json` (account URL and key,
//! mode 0600), the wildcard's `cert.pem` (chain, 0644) and `key.pem` (0600),
//! and with HTTP-01 one pair per host in `hosts/`: `<host>.cert.pem` and
//! `<host>.key.pem`. Switching the directory URL (staging to production)
//! therefore starts clean. It only reads and writes these files; deciding
//! what to issue and keep is `acme::wildcard` and `acme::per_host`.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;

use crate::atomic_file::{self, WriteError};
use crate::host::normalize_host;

const ACCOUNT_FILE: &str = "account.json";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const HOSTS_DIR: &str = "hosts";
const HOST_CERT_SUFFIX: &str = ".cert.pem";
const HOST_KEY_SUFFIX: &str = ".key.pem";

/// Reading or writing the ACME state failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or the directory cannot be read or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// `account.json` is not the credentials previewd wrote.
    #[error("{} is not ACME account credentials: {source}", path.display())]
    Account {
        /// The account file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The persisted certificate as PEM bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCert {
    /// Chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The leaf's private key.
    pub key_pem: Vec<u8>,
}

/// The state directory of one ACME server.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// `<tls_dir>/acme/<server>` for `directory_url`, created (0700) if missing.
    pub fn open(tls_dir: &Path, directory_url: &str) -> Result<Self, StoreError> {
        let dir = tls_dir.join("acme").join(server_dir_name(directory_url));
        create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The saved account, if any.
    pub fn load_account(&self) -> Result<Option<AccountCredentials>, StoreError> {
        let path = self.dir.join(ACCOUNT_FILE);
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| StoreError::Account { path, source })
    }

    /// Saves the account (its private key inside), readable only by previewd.
    pub fn save_account(&self, credentials: &AccountCredentials) -> Result<(), StoreError> {
        let json =
            serde_json::to_vec_pretty(credentials).map_err(|source| StoreError::Account {
                path: self.dir.join(ACCOUNT_FILE),
                source,
            })?;
        atomic_file::write(&self.dir, ACCOUNT_FILE, &json, 0o600)?;
        Ok(())
    }

    /// The saved certificate and key, if both exist.
    pub fn load_cert(&self) -> Result<Option<StoredCert>, StoreError> {
        let key_pem = read_optional(&self.dir.join(KEY_FILE))?;
        let cert_pem = read_optional(&self.dir.join(CERT_FILE))?;
        Ok(match (cert_pem, key_pem) {
            (Some(cert_pem), Some(key_pem)) => Some(StoredCert { cert_pem, key_pem }),
            _ => None,
        })
    }

    /// Saves a newly issued certificate. The key goes first: a crash between
    /// the two writes leaves a pair that does not match, which is refused at
    /// the next start and re-issued, never served.
    pub fn save_cert(&self, cert: &StoredCert) -> Result<(), StoreError> {
        atomic_file::write(&self.dir, KEY_FILE, &cert.key_pem, 0o600)?;
        atomic_file::write(&self.dir, CERT_FILE, &cert.cert_pem, 0o644)?;
        Ok(())
    }
    /// Every persisted per-host certificate: host and its pair, or `None`
    /// when the key is missing (a crash while saving or removing it).
    pub fn load_host_certs(&self) -> Result<Vec<(String, Option<StoredCert>)>, StoreError> {
        let dir = self.dir.join(HOSTS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut certs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            // Only names this store writes: temp files and strays are skipped.
            let Some(host) = name
                .to_str()
                .and_then(|name| name.strip_suffix(HOST_CERT_SUFFIX))
                .filter(|host| normalize_host(host).as_deref() == Some(*host))
            else {
                continue;
            };
            let cert_pem = read_optional(&entry.path())?;
            let key_pem = read_optional(&dir.join(format!("{host}{HOST_KEY_SUFFIX}")))?;
            let pair = match (cert_pem, key_pem) {
                (Some(cert_pem), Some(key_pem)) => Some(StoredCert { cert_pem, key_pem }),
                _ => None,
            };
            certs.push((host.to_owned(), pair));
        }
        Ok(certs)
    }

    /// Saves `host`'s newly issued certificate, key first as [`Store::save_cert`].
    /// `host` must be normalized (it becomes a file name).
    pub fn save_host_cert(&self, host: &str, cert: &StoredCert) -> Result<(), StoreError> {
        let dir = self.dir.join(HOSTS_DIR);
        create_private_dir(&dir)?;
        let key = format!("{host}{HOST_KEY_SUFFIX}");
        atomic_file::write(&dir, &key, &cert.key_pem, 0o600)?;
        atomic_file::write(
            &dir,
            &format!("{host}{HOST_CERT_SUFFIX}"),
            &cert.cert_pem,
            0o644,
        )?;
        Ok(())
    }

    /// Deletes `host`'s pair, if any. The key goes first: a crash between
    /// the two leaves a certificate without key, which the next start loads
    /// as incomplete and removes.
    pub fn remove_host_cert(&self, host: &str) -> Result<(), StoreError> {
        let dir = self.dir.join(HOSTS_DIR);
        for suffix in [HOST_KEY_SUFFIX, HOST_CERT_SUFFIX] {
            let path = dir.join(format!("{host}{suffix}"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { path, source }),
            }
        }
        Ok(())
    }
}

/// A file-name-safe rendering of the directory URL's host and port.
fn server_dir_name(directory_url: &str) -> String {
    let rest = directory_url
        .split_once("://")
        .map_or(directory_url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let name: String = authority
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    match name.trim_start_matches('.') {
        "" => "default".to_owned(),
        name => name.to_owned(),
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `dir` and its parents, created 0700 where missing: account and
/// certificate keys live below it.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn server_dirs_are_safe_names() {
        assert_eq!(
            server_dir_name("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org"
        );
        assert_eq!(
            server_dir_name("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000"
        );
        assert_eq!(server_dir_name("https://../x"), "default");
    }

    #[test]
    fn cert_round_trips_with_a_private_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "https://ca.test/dir").expect("open");
        assert_eq!(store.load_cert().expect("load"), None);
        let cert = StoredCert {
            cert_pem: b"chain".to_vec(),
            key_pem: b"key".to_vec(),
        };
        store.save_cert(&cert).expect("save");
        assert_eq!(store.load_cert().expect("load"), Some(cert));
        let mode = fs::metadata(store.dir().join(KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn host_certs_round_trip_and_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "https://ca.test/dir").expect("open");
        assert!(store.load_host_certs().expect("load").is_empty());
        let cert = StoredCert {
            cert_pem: b"chain".to_vec(),
            key_pem: b"key".to_vec(),
        };
        store.save_host_cert("a.preview.test", &cert).expect("save");
        store.save_host_cert("b.preview.test", &cert).expect("save");
        // A stray file and a certificate whose key is gone.
        let hosts = store.dir().join(HOSTS_DIR);
        fs::write(hosts.join("notes.txt"), "x").expect("stray");
        fs::remove_file(hosts.join("b.preview.test.key.pem")).expect("rm key");

        let mut loaded = store.load_host_certs().expect("load");
        loaded.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            loaded,
            [
                ("a.preview.test".to_owned(), Some(cert.clone())),
                ("b.preview.test".to_owned(), None)
            ]
        );
        let mode = fs::metadata(hosts.join("a.preview.test.key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        store.remove_host_cert("a.preview.test").expect("remove");
        store.remove_host_cert("b.preview.test").expect("remove");
        store
            .remove_host_cert("never.preview.test")
            .expect("remove");
        assert!(store.load_host_certs().expect("load").is_empty());
    }
}
