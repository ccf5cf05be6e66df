//! A real nginx in front of a given upstream, as the reference a user would
//! otherwise run: TLS on loopback with a test certificate, `proxy_pass` as
//! its documentation shows, limits raised to previewd's so the comparison
//! is about syntax, not sizes. Stopped when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::certs::TestCa;
use super::{tls_connect, APP};

pub struct Nginx {
    pub addr: SocketAddr,
    /// The CA clients must trust for `addr`.
    pub ca_pem: String,
    child: Child,
    dir: TempDir,
}

/// Where nginx is; a test prerequisite (README: Prerequisites).
fn binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("nginx is a test prerequisite (apt-get install nginx): not found in /usr/sbin")
        })
}

impl Nginx {
    /// nginx proxying `https://APP/` to `upstream`, answering TLS.
    pub async fn start(upstream: SocketAddr) -> Nginx {
        let ca = TestCa::new("nginx test CA");
        let leaf = ca.leaf(&[APP]);
        // The port is found free and handed over; another process taking it
        // in between makes nginx exit, and a new port is tried.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("cert.pem"), &leaf.chain_pem).expect("cert");
            std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).expect("key");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("free port")
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            std::fs::write(dir.path().join("nginx.conf"), config(&dir, addr, upstream))
                .expect("config");
            let child = Command::new(binary())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let mut nginx = Nginx {
                addr,
                ca_pem: ca.pem.clone(),
                child,
                dir,
            };
            if nginx.ready().await {
                return nginx;
            }
        }
        panic!("nginx did not start; see its error.log");
    }

    /// Polls TLS handshakes until one succeeds, nginx exits, or 10 s pass.
    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_exit)) = self.child.try_wait() {
                return false;
            }
            if tls_connect(self.addr, &self.ca_pem, APP, &[b"http/1.1"])
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not answer within 10 s:\n{log}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &TempDir, listen: SocketAddr, upstream: SocketAddr) -> String {
    let dir = dir.path().display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  # previewd's limits: a 64 KiB header block, no body limit.
  large_client_header_buffers 4 64k;
  client_max_body_size 0;
  server {{
    listen {listen} ssl;
    server_name {APP};
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    location / {{
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
    }}
  }}
}}
"
    )
}
