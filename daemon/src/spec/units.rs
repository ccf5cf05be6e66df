//! The small value grammars of compose files: durations (`1m30s`), byte sizes (`512m`),
//! and port specifications (`8080`, `127.0.0.1:80:8080/tcp`).

use std::time::Duration;

/// A compose duration: one or more `<number><unit>` with units `ns`, `us`, `ms`, `s`, `m`,
/// `h` (Go's `time.ParseDuration`, which Compose uses), or a bare number of seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration: expected e.g. 30s, 1m30s or 500ms");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_end..];
        let part = Duration::try_from_secs_f64(number * scale).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

/// A byte size: a number of bytes, or a number with a unit `b`, `k`, `m`, `g` (powers of 1024,
/// as Docker reads them; `kb`, `mb`, `gb` and upper case too).
pub fn bytes(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size: expected e.g. 512m or 2g");
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let number: f64 = lower[..split].parse().map_err(|_| bad())?;
    let scale: u64 = match lower[split..].trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    let value = number * scale as f64;
    if !value.is_finite() || value < 0.0 || value > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(value as u64)
}

/// One port a service listens on, from `ports` or `expose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerPort {
    pub port: u16,
    pub udp: bool,
}

/// A `ports` entry in short syntax: the container port, and whether a host port (or address)
/// was asked for, which previewd never publishes.
pub fn port_spec(text: &str) -> Result<(ContainerPort, bool), String> {
    let bad = |why: &str| format!("{text:?} is not a port: {why}");
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((spec, protocol)) => (spec, protocol),
        None => (text, "tcp"),
    };
    let udp = match protocol {
        "tcp" => false,
        "udp" => true,
        _ => return Err(bad("the protocol is tcp or udp")),
    };
    // host_ip:host:container, host:container or container; an IPv6 host address is bracketed.
    let (host, container) = match spec.rsplit_once(':') {
        Some((host, container)) => (Some(host), container),
        None => (None, spec),
    };
    if container.contains('-') {
        return Err(bad("port ranges are not supported"));
    }
    let port = container
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("the container port is a number from 1 to 65535"))?;
    Ok((
        ContainerPort { port, udp },
        host.is_some_and(|h| !h.is_empty()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("30s", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2h", Duration::from_secs(7200)),
            ("10", Duration::from_secs(10)),
        ];
        for (text, want) in table {
            assert_eq!(duration(text), Ok(want), "{text}");
        }
        for text in [
            "",
            "s",
            "10x",
            "1m-3s",
            "abc",
            "10000000000000000000s10000000000000000000s",
        ] {
            assert!(duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn sizes() {
        let table = [
            ("512m", 512 << 20),
            ("2g", 2 << 30),
            ("2GB", 2 << 30),
            ("1024", 1024),
            ("64k", 64 << 10),
            ("1.5g", 3 << 29),
        ];
        for (text, want) in table {
            assert_eq!(bytes(text), Ok(want), "{text}");
        }
        for text in ["", "m", "12q", "-1m"] {
            assert!(bytes(text).is_err(), "{text}");
        }
    }

    #[test]
    fn ports() {
        let tcp = |port| ContainerPort { port, udp: false };
        assert_eq!(port_spec("8080"), Ok((tcp(8080), false)));
        assert_eq!(port_spec("80:8080"), Ok((tcp(8080), true)));
        assert_eq!(port_spec("127.0.0.1:80:8080"), Ok((tcp(8080), true)));
        assert_eq!(port_spec("[::1]:80:8080"), Ok((tcp(8080), true)));
        assert_eq!(
            port_spec("53/udp"),
            Ok((
                ContainerPort {
                    port: 53,
                    udp: true
                },
                false
            ))
        );
        for text in ["", "0", "70000", "3000-3005", "80:x", "80/sctp"] {
            assert!(port_spec(text).is_err(), "{text}");
        }
    }
}
