//! The checks behind the scanner's patterns: checksums (Luhn, IBAN mod 97, Verhoeff,
//! the DNI letter), issuer prefixes, public address ranges, and the shape tests that keep
//! versions, dates, section numbers and hashes from matching.

use std::net::{Ipv4Addr, Ipv6Addr};

pub(super) fn digits_of(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// Whether the byte just before `s` or just after `e` is one of `seps` followed (or
/// preceded) by an alphanumeric: the match is part of a longer dotted/dashed token.
pub(super) fn touches(text: &str, s: usize, e: usize, seps: &[char]) -> bool {
    let before = text[..s].chars().rev().take(2).collect::<Vec<_>>();
    let after = text[e..].chars().take(2).collect::<Vec<_>>();
    let glued = |v: &[char]| {
        v.first().is_some_and(|c| seps.contains(c)) && v.get(1).is_some_and(|c| c.is_alphanumeric())
    };
    glued(&before) || glued(&after)
}

pub(super) fn looks_like_date(s: &str) -> bool {
    let groups: Vec<&str> = s.split([' ', '.', '-']).collect();
    groups.len() == 3 && groups.iter().any(|g| g.len() == 4) && digits_of(s).len() <= 8
}

/// Luhn-valid with a known issuer prefix and that issuer's length.
pub(super) fn is_card(s: &str) -> bool {
    let d = digits_of(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let [d0, d1, d2, d3, ..] = d[..] else {
        return false;
    };
    let n2 = d0 * 10 + d1;
    let n4 = u32::from(n2) * 100 + u32::from(d2) * 10 + u32::from(d3);
    let brand = match d0 {
        4 => [13, 16, 19].contains(&d.len()),
        5 => (51..=55).contains(&n2) && d.len() == 16,
        2 => (2221..=2720).contains(&n4) && d.len() == 16,
        3 => {
            ([34, 37].contains(&n2) && d.len() == 15)
                || (n2 == 35 && d.len() >= 16)
                || ([30, 36, 38].contains(&n2) && d.len() >= 14)
        }
        6 => (n4 == 6011 || n2 == 65) && d.len() >= 16,
        _ => false,
    };
    brand && luhn(&d)
}

/// The Luhn checksum.
pub fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN lengths for the countries checked (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AT", 20),
    ("BE", 16),
    ("CH", 21),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("ES", 24),
    ("FI", 18),
    ("FR", 27),
    ("GB", 22),
    ("GR", 27),
    ("HU", 28),
    ("IE", 22),
    ("IT", 27),
    ("LU", 20),
    ("NL", 18),
    ("NO", 15),
    ("PL", 28),
    ("PT", 25),
    ("RO", 24),
    ("SE", 24),
    ("SK", 24),
    ("TR", 26),
    ("BR", 29),
    ("SA", 24),
    ("AE", 23),
];

/// If `s` starts with a valid IBAN, the number of characters (spaces included) it spans.
pub(super) fn iban_len(s: &str) -> Option<usize> {
    let country = s.get(..2)?;
    let want = IBAN_LENGTHS.iter().find(|(c, _)| *c == country)?.1;
    let mut compact = String::new();
    let mut span = 0usize;
    for c in s.chars() {
        if compact.len() == want {
            break;
        }
        span += 1;
        if c != ' ' {
            compact.push(c);
        }
    }
    if compact.len() != want {
        return None;
    }
    // Move the first four characters to the end, letters to numbers, mod 97 == 1.
    let rotated = compact[4..].chars().chain(compact[..4].chars());
    let mut rem: u32 = 0;
    for c in rotated {
        let v = c.to_digit(36)?;
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    (rem == 1).then_some(span)
}

/// The byte index `chars` characters after `start`.
pub(super) fn trim_to_chars(text: &str, start: usize, chars: usize) -> usize {
    text[start..]
        .char_indices()
        .nth(chars)
        .map(|(i, _)| start + i)
        .unwrap_or(text.len())
}

pub(super) fn valid_ssn(s: &str) -> bool {
    let d = digits_of(s);
    let [a0, a1, a2, g0, g1, ref serial @ ..] = d[..] else {
        return false;
    };
    let area = u32::from(a0) * 100 + u32::from(a1) * 10 + u32::from(a2);
    let group = g0 * 10 + g1;
    let serial = serial.iter().any(|x| *x != 0);
    area != 0 && area != 666 && area < 900 && group != 0 && serial
}

pub(super) fn valid_dni(s: &str) -> bool {
    let d = digits_of(s);
    let n = d.iter().fold(0u32, |acc, x| acc * 10 + u32::from(*x));
    let letter = s.chars().last();
    let table: Vec<char> = "TRWAGMYFPDXBNJZSQVHLCKE".chars().collect();
    letter == table.get((n % 23) as usize).copied()
}

/// The Verhoeff check (Aadhaar's last digit).
pub(super) fn verhoeff_valid(d: &[u8]) -> bool {
    const M: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    let mut c = 0u8;
    for (i, &x) in d.iter().rev().enumerate() {
        let permuted = P.get(i % 8).and_then(|row| row.get(usize::from(x)));
        match permuted.and_then(|&p| M.get(usize::from(c))?.get(usize::from(p))) {
            Some(&next) => c = next,
            None => return false, // not a digit
        }
    }
    c == 0 && d.len() == 12
}

pub(super) fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let documentation = matches!(o, [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]);
    let shared = o[0] == 100 && (64..128).contains(&o[1]);
    let benchmark = o[0] == 198 && (o[1] == 18 || o[1] == 19);
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || documentation
        || shared
        || benchmark
        || o[0] == 0
        || o[0] >= 240)
}

pub(super) fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let documentation = s[0] == 0x2001 && s[1] == 0x0db8;
    let unique_local = (s[0] & 0xfe00) == 0xfc00;
    let link_local = (s[0] & 0xffc0) == 0xfe80;
    // Global unicast is 2000::/3.
    (s[0] & 0xe000) == 0x2000 && !documentation && !unique_local && !link_local
}

/// A dotted quad in a version context: `v1.2.3.4`, `version 1.2.3.4`, or a fifth part.
pub(super) fn version_context(text: &str, s: usize, e: usize) -> bool {
    let before = text[..s].to_ascii_lowercase();
    let after = &text[e..];
    before.ends_with('v')
        || before.trim_end().ends_with("version")
        || after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit())
}

/// A token that looks generated: upper, lower and digits mixed, many character-class
/// changes (unlike CamelCase words), Shannon entropy of at least 4 bits a character, and
/// not a hex digest (hashes are not secrets).
pub(super) fn looks_generated(s: &str) -> bool {
    let t = s.trim_end_matches('=');
    // Subresource-integrity digests (`sha512-…`) are hashes, not secrets.
    if ["sha1-", "sha256-", "sha384-", "sha512-", "md5-"]
        .iter()
        .any(|p| t.starts_with(p))
    {
        return false;
    }
    let b = t.as_bytes();
    if b.len() < 24 || b.iter().all(u8::is_ascii_hexdigit) {
        return false;
    }
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    let lower = b.iter().filter(|c| c.is_ascii_lowercase()).count();
    let digit = b.iter().filter(|c| c.is_ascii_digit()).count();
    if upper < 2 || lower < 2 || digit < 2 {
        return false;
    }
    let class = |c: u8| {
        if c.is_ascii_uppercase() {
            0
        } else if c.is_ascii_lowercase() {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            3
        }
    };
    let changes = b
        .windows(2)
        .filter(|w| matches!(w, [x, y] if class(*x) != class(*y)))
        .count();
    if (changes as f64) < 0.3 * b.len() as f64 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &c in b {
        if let Some(n) = counts.get_mut(usize::from(c)) {
            *n += 1;
        }
    }
    let n = b.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy >= 4.0
}
