//! systemd's readiness protocol: one datagram to `$NOTIFY_SOCKET`. A no-op outside systemd.

use std::os::unix::net::UnixDatagram;

/// Tells systemd previewd is ready (routes recovered), or does nothing when not under it.
pub fn ready() {
    send("READY=1");
}

/// Tells systemd's watchdog the reconcile loop is alive, when the unit asks for that
/// (`WatchdogSec=` sets `$WATCHDOG_USEC`).
pub fn watchdog() {
    if std::env::var_os("WATCHDOG_USEC").is_some() {
        send("WATCHDOG=1");
    }
}

/// Tells systemd previewd is stopping.
pub fn stopping() {
    send("STOPPING=1");
}

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket: the name has no file behind it.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(error) = result {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
