//! The address pool preview networks take their subnets from: one small IPv4 subnet each,
//! chosen by previewd, so a stock engine holds hundreds of previews without editing
//! `daemon.json` (the engine's own pools hold about 30 bridge networks). Pure: the engine
//! adapter says which subnets are taken and asks for candidates.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network, `address/prefix`, its address the first of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ipv4Net {
    pub first: u32,
    pub prefix: u8,
}

impl Ipv4Net {
    fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    fn last(self) -> u32 {
        (u64::from(self.first) + self.size() - 1) as u32
    }

    pub fn overlaps(self, other: Ipv4Net) -> bool {
        self.first <= other.last() && other.first <= self.last()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.first), self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IPv4 network such as 10.210.0.0/16");
        let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let first = u32::from(address);
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        if first & !mask != 0 {
            return Err(format!(
                "{text:?} has host bits set: the network is {}/{prefix}",
                Ipv4Addr::from(first & mask)
            ));
        }
        Ok(Ipv4Net { first, prefix })
    }
}

/// Preview networks' subnets: `size`-prefix pieces of `range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetPool {
    pub range: Ipv4Net,
    /// The prefix length of each preview's subnet.
    pub size: u8,
}

impl SubnetPool {
    pub fn new(range: Ipv4Net, size: u8) -> Result<Self, String> {
        // A /29 holds the gateway and five containers; anything smaller is no stack.
        if !(range.prefix..=29).contains(&size) {
            return Err(format!(
                "subnet_size {size}: from the pool's own prefix ({}) to 29",
                range.prefix
            ));
        }
        Ok(SubnetPool { range, size })
    }

    /// How many subnets the pool has.
    pub fn capacity(&self) -> u64 {
        1u64 << (self.size - self.range.prefix)
    }

    /// Free subnets in the order to try them, starting from `seed` (a hash of the preview, so
    /// previews created at once rarely ask for the same one), skipping those that overlap
    /// `taken`.
    pub fn candidates<'a>(
        &'a self,
        seed: u64,
        taken: &'a [Ipv4Net],
    ) -> impl Iterator<Item = Ipv4Net> + 'a {
        let count = self.capacity();
        let step = 1u64 << (32 - u32::from(self.size));
        (0..count)
            .map(move |i| {
                let index = (seed % count + i) % count;
                Ipv4Net {
                    first: (u64::from(self.range.first) + index * step) as u32,
                    prefix: self.size,
                }
            })
            .filter(move |net| !taken.iter().any(|t| t.overlaps(*net)))
    }
}

/// Where a preview's search for a subnet starts: a hash of its name (FNV-1a), stable across
/// passes and restarts.
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl fmt::Display for SubnetPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (/{} each, {} in all)",
            self.range,
            self.size,
            self.capacity()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_refuse_what_is_not_one() {
        assert_eq!(net("10.210.0.0/16").to_string(), "10.210.0.0/16");
        for bad in [
            "10.210.0.0",
            "10.210.0.1/16",
            "10.0.0.0/33",
            "x/8",
            "::1/64",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        assert!(net("10.0.0.0/8").overlaps(net("10.1.2.0/24")));
        assert!(!net("10.0.0.0/24").overlaps(net("10.0.1.0/24")));
        assert!(net("0.0.0.0/0").overlaps(net("192.168.0.0/16")));
    }

    #[test]
    fn candidates_cover_the_pool_once_from_the_seed_and_skip_what_is_taken() {
        let pool = SubnetPool::new(net("10.211.0.0/24"), 26).unwrap();
        assert_eq!(pool.capacity(), 4);
        let all: Vec<String> = pool.candidates(2, &[]).map(|n| n.to_string()).collect();
        assert_eq!(
            all,
            [
                "10.211.0.128/26",
                "10.211.0.192/26",
                "10.211.0.0/26",
                "10.211.0.64/26"
            ]
        );
        // A network of someone else's inside the pool takes what it overlaps.
        let taken = [net("10.211.0.200/30"), net("10.211.0.0/25")];
        let free: Vec<String> = pool.candidates(0, &taken).map(|n| n.to_string()).collect();
        assert_eq!(free, ["10.211.0.128/26"]);
        let full = [net("10.0.0.0/8")];
        assert_eq!(pool.candidates(7, &full).count(), 0);
    }

    #[test]
    fn subnet_sizes_must_fit_the_pool() {
        assert!(SubnetPool::new(net("10.0.0.0/16"), 15).is_err());
        assert!(SubnetPool::new(net("10.0.0.0/16"), 30).is_err());
        let whole = SubnetPool::new(net("10.0.0.0/16"), 16).unwrap();
        assert_eq!(whole.capacity(), 1);
        assert_eq!(
            SubnetPool::new(net("10.210.0.0/16"), 26)
                .unwrap()
                .to_string(),
            "10.210.0.0/16 (/26 each, 1024 in all)"
        );
    }
}
