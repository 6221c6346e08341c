//! Text for the per-request path: numbers, IPv4 socket addresses and hex written
//! straight into a `String`. `core::fmt` took about a fifth of a request's
//! instructions (callgrind, `hack/bench`): `SocketAddrV4`'s `Display` alone formats
//! through a scratch buffer and padding logic, twice or three times per request.

use std::net::SocketAddr;

/// Appends `n` in decimal.
pub fn push_u64(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // A byte at a time: the numbers here are a few digits long, where a `push_str`
    // costs more in its copy call than the digits do.
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
pub fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut len = 1;
    let mut rest = n / 10;
    while rest > 0 {
        len += 1;
        rest /= 10;
    }
    for _ in len..width {
        out.push('0');
    }
    push_u64(out, n);
}

/// Appends the low `digits` hex digits of `n`, lower case, zero-padded.
pub fn push_hex(out: &mut String, n: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..digits).rev() {
        out.push(char::from(HEX[((n >> (shift * 4)) & 0xf) as usize]));
    }
}

/// Appends `addr` as its `Display` does.
pub fn push_socket_addr(out: &mut String, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(':');
            push_u64(out, u64::from(v4.port()));
        }
        // Rare on this path; the standard library's rules for `::` runs stay theirs.
        SocketAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `addr` as its `Display` writes it.
#[must_use]
pub fn socket_addr(addr: &SocketAddr) -> String {
    let mut out = String::with_capacity(21);
    push_socket_addr(&mut out, addr);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_display_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 65_535, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
            for width in [0, 1, 2, 3, 4, 12] {
                let mut s = String::new();
                push_padded(&mut s, n, width);
                assert_eq!(s, format!("{n:0width$}"));
            }
        }
    }

    #[test]
    fn hex_as_format_writes_it() {
        for n in [0, 0xa, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            for digits in [1, 3, 4, 8, 12, 16] {
                let mut s = String::new();
                push_hex(&mut s, n, digits);
                let mask = if digits == 16 {
                    u64::MAX
                } else {
                    (1 << (digits * 4)) - 1
                };
                assert_eq!(s, format!("{:0w$x}", n & mask, w = digits as usize));
            }
        }
    }

    #[test]
    fn socket_addresses_as_display_writes_them() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "10.244.0.15:15008",
            "255.255.255.255:65535",
            "[::1]:80",
            "[fd00::1:2]:8000",
            "[::ffff:10.0.0.1]:443",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(socket_addr(&addr), addr.to_string());
        }
    }
}
