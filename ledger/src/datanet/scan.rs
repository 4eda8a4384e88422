//! The personal-data and secrets scanner run on every text field at ingestion.
//!
//! Kinds: e-mail addresses, phone numbers (international `+CC …`, North American
//! `(555) 123-4567`, national `0…` forms), payment card numbers (Luhn-valid with a known
//! issuer prefix), IBANs (ISO 13616 mod-97 checksum), national identifiers (US SSN, UK
//! National Insurance number, Spanish DNI with its check letter, Indian Aadhaar with its
//! Verhoeff check digit), public IPv4/IPv6 addresses (loopback, private, link-local and
//! documentation ranges are not personal data and are not reported), PEM private keys, API
//! tokens by known prefix (AWS, GitHub, OpenAI, Stripe, Slack, Google, GitLab, Hugging
//! Face, npm, JWT), and high-entropy strings that look like generated secrets.
//!
//! [`scan`] returns non-overlapping findings as character spans; nothing here ever returns
//! or formats the matched text. A datanet's [`Policy`] chooses per kind what ingestion does:
//! reject the row, redact the span (typed placeholder such as `<EMAIL>`), hold the row for
//! the owner's review, or allow it. Precision and recall on the labelled corpus in
//! `ledger/data/scan-corpus.jsonl` are measured by `ledger/tests/scan_corpus.rs`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

mod checks;

pub use checks::luhn;
use checks::{
    digits_of, iban_len, is_card, looks_generated, looks_like_date, public_v4, public_v6, touches,
    trim_to_chars, valid_dni, valid_ssn, verhoeff_valid, version_context,
};

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    PrivateKey,
    ApiToken,
    Card,
    Iban,
    NationalId,
    Email,
    Phone,
    IpAddress,
    HighEntropy,
}

impl Kind {
    /// Every kind, in the order overlapping matches are resolved (earlier wins).
    pub const ALL: [Kind; 9] = [
        Kind::PrivateKey,
        Kind::ApiToken,
        Kind::Card,
        Kind::Iban,
        Kind::NationalId,
        Kind::Email,
        Kind::Phone,
        Kind::IpAddress,
        Kind::HighEntropy,
    ];

    /// The snake_case name used in policies, reports and the corpus.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PrivateKey => "private_key",
            Kind::ApiToken => "api_token",
            Kind::Card => "card",
            Kind::Iban => "iban",
            Kind::NationalId => "national_id",
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::IpAddress => "ip_address",
            Kind::HighEntropy => "high_entropy",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The typed placeholder a redaction writes.
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::PrivateKey => "<PRIVATE_KEY>",
            Kind::ApiToken => "<API_TOKEN>",
            Kind::Card => "<CARD>",
            Kind::Iban => "<IBAN>",
            Kind::NationalId => "<NATIONAL_ID>",
            Kind::Email => "<EMAIL>",
            Kind::Phone => "<PHONE>",
            Kind::IpAddress => "<IP_ADDRESS>",
            Kind::HighEntropy => "<SECRET>",
        }
    }
}

/// One match: a kind and a span in characters (`start..end`) of the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// What ingestion does with a row holding a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Redact,
    Hold,
    Reject,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "allow" => Some(Action::Allow),
            "redact" => Some(Action::Redact),
            "hold" => Some(Action::Hold),
            "reject" => Some(Action::Reject),
            _ => None,
        }
    }
}

/// Per-kind actions. Kinds not named use [`Policy::default`]'s action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy(pub BTreeMap<Kind, Action>);

/// The default action for a kind: contact details and addresses are redacted; card
/// numbers, IBANs, national ids, private keys and known tokens reject the row; unexplained
/// high-entropy strings are held for the owner's review.
pub fn default_action(kind: Kind) -> Action {
    match kind {
        Kind::Email | Kind::Phone | Kind::IpAddress => Action::Redact,
        Kind::HighEntropy => Action::Hold,
        Kind::PrivateKey | Kind::ApiToken | Kind::Card | Kind::Iban | Kind::NationalId => {
            Action::Reject
        }
    }
}

impl Default for Policy {
    /// Every kind at its [`default_action`].
    fn default() -> Self {
        Policy(
            Kind::ALL
                .into_iter()
                .map(|k| (k, default_action(k)))
                .collect(),
        )
    }
}

impl Policy {
    pub fn action(&self, kind: Kind) -> Action {
        self.0
            .get(&kind)
            .copied()
            .unwrap_or_else(|| default_action(kind))
    }

    /// Parses `kind=action[,kind=action…]` over the default policy; errors name the
    /// unknown kind or action.
    pub fn parse(spec: &str) -> Result<Policy, String> {
        let mut p = Policy::default();
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, a) = part
                .split_once('=')
                .ok_or_else(|| format!("policy `{part}`: expected KIND=ACTION"))?;
            let kind = Kind::parse(k.trim()).ok_or_else(|| {
                format!(
                    "policy: unknown kind `{k}` (one of {})",
                    Kind::ALL.map(Kind::name).join(", ")
                )
            })?;
            let action = Action::parse(a.trim()).ok_or_else(|| {
                format!("policy: unknown action `{a}` for {k} (allow, redact, hold or reject)")
            })?;
            p.0.insert(kind, action);
        }
        Ok(p)
    }
}

fn re(pattern: &str) -> Regex {
    // The patterns are constants, each compiled by the unit tests, so this cannot fail at
    // run time; a pattern that did not compile would be a build defect, not bad input.
    #[allow(clippy::panic)]
    Regex::new(pattern).unwrap_or_else(|e| panic!("scanner pattern {pattern:?}: {e}"))
}

struct Patterns {
    private_key: Regex,
    tokens: Vec<Regex>,
    card: Regex,
    iban: Regex,
    ssn: Regex,
    nino: Regex,
    dni: Regex,
    aadhaar: Regex,
    email: Regex,
    phone_intl: Regex,
    phone_nanp: Regex,
    phone_national: Regex,
    ipv4: Regex,
    ipv6: Regex,
    entropy: Regex,
}

static PATTERNS: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    private_key: re(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)",
    ),
    tokens: [
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",
        r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
        r"\bgithub_pat_[A-Za-z0-9_]{60,}",
        r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",
        r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}",
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        r"\bAIza[0-9A-Za-z_-]{35}",
        r"\bglpat-[A-Za-z0-9_-]{20,}",
        r"\bhf_[A-Za-z0-9]{30,}",
        r"\bnpm_[A-Za-z0-9]{36}\b",
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    ]
    .into_iter()
    .map(re)
    .collect(),
    card: re(r"\b\d(?:[ -]?\d){12,18}\b"),
    iban: re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
    ssn: re(r"\b\d{3}-\d{2}-\d{4}\b"),
    nino: re(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
    dni: re(r"\b\d{8}-?[A-Z]\b"),
    aadhaar: re(r"\b[2-9]\d{3} \d{4} \d{4}\b|\b[2-9]\d{11}\b"),
    email: re(
        r"(?i)\b[a-z0-9][a-z0-9._%+-]{0,63}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.[a-z]{2,24}\b",
    ),
    phone_intl: re(r"\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,6}"),
    phone_nanp: re(r"(?:\(\d{3}\) ?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b"),
    phone_national: re(r"\b0\d{1,4}(?:[ .-]\d{2,6}){1,4}\b"),
    ipv4: re(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
    ipv6: re(r"(?i)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}"),
    entropy: re(r"[A-Za-z0-9+/_-]{24,}={0,2}"),
});

/// Scans `text`; findings are sorted by start and never overlap.
pub fn scan(text: &str) -> Vec<Finding> {
    let p = &*PATTERNS;
    // (kind, byte start, byte end)
    let mut raw: Vec<(Kind, usize, usize)> = Vec::new();
    let mut push = |k: Kind, s: usize, e: usize| raw.push((k, s, e));
    for m in p.private_key.find_iter(text) {
        push(Kind::PrivateKey, m.start(), m.end());
    }
    for r in &p.tokens {
        for m in r.find_iter(text) {
            push(Kind::ApiToken, m.start(), m.end());
        }
    }
    for m in p.card.find_iter(text) {
        if is_card(m.as_str()) && !touches(text, m.start(), m.end(), &['.', '-', '/', ':']) {
            push(Kind::Card, m.start(), m.end());
        }
    }
    for m in p.iban.find_iter(text) {
        if let Some(len) = iban_len(m.as_str()) {
            let end = trim_to_chars(text, m.start(), len);
            push(Kind::Iban, m.start(), end);
        }
    }
    for m in p.ssn.find_iter(text) {
        if valid_ssn(m.as_str()) && !touches(text, m.start(), m.end(), &['-', '.']) {
            push(Kind::NationalId, m.start(), m.end());
        }
    }
    for m in p.nino.find_iter(text) {
        let prefix: String = m.as_str().chars().take(2).collect();
        if !["BG", "GB", "NK", "KN", "TN", "NT", "ZZ"].contains(&prefix.as_str()) {
            push(Kind::NationalId, m.start(), m.end());
        }
    }
    for m in p.dni.find_iter(text) {
        if valid_dni(m.as_str()) {
            push(Kind::NationalId, m.start(), m.end());
        }
    }
    for m in p.aadhaar.find_iter(text) {
        let digits: Vec<u8> = digits_of(m.as_str());
        if verhoeff_valid(&digits) && !touches(text, m.start(), m.end(), &['.', '-']) {
            push(Kind::NationalId, m.start(), m.end());
        }
    }
    for m in p.email.find_iter(text) {
        // `git@host:org/repo` is an scp-style remote, not a mailbox.
        let scp = text[m.end()..].starts_with(':')
            && text[m.end() + 1..].starts_with(|c: char| !c.is_whitespace());
        if !scp {
            push(Kind::Email, m.start(), m.end());
        }
    }
    for r in [&p.phone_intl, &p.phone_nanp, &p.phone_national] {
        for m in r.find_iter(text) {
            let s = m.as_str().trim_end_matches(['-', '.', ' ', '(']);
            let n = digits_of(s).len();
            let ok = if s.starts_with('+') {
                (8..=15).contains(&n)
            } else if s.starts_with('0') {
                (10..=11).contains(&n) && !looks_like_date(s)
            } else {
                n == 10
            };
            // A longer run of number groups (lottery draws, tables) is not a phone number.
            let continues = text[m.start() + s.len()..]
                .strip_prefix([' ', '.', '-'])
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
            if ok
                && !continues
                && !touches(text, m.start(), m.start() + s.len(), &['.', '/', ':', '_'])
            {
                push(Kind::Phone, m.start(), m.start() + s.len());
            }
        }
    }
    for m in p.ipv4.find_iter(text) {
        // All single-digit parts (`3.2.1.4`) read as section or version numbers.
        let sectionlike = m.as_str().split('.').all(|o| o.len() == 1);
        if let Ok(ip) = m.as_str().parse::<Ipv4Addr>()
            && !sectionlike
            && public_v4(ip)
            && !version_context(text, m.start(), m.end())
        {
            push(Kind::IpAddress, m.start(), m.end());
        }
    }
    for m in p.ipv6.find_iter(text) {
        let s = m.as_str();
        if s.len() >= 6
            && s.matches(':').count() >= 2
            && s.chars().filter(|c| c.is_ascii_hexdigit()).count() >= 4
            && let Ok(ip) = s.parse::<Ipv6Addr>()
            && public_v6(ip)
            && !touches(text, m.start(), m.end(), &[':', '.'])
        {
            push(Kind::IpAddress, m.start(), m.end());
        }
    }
    for m in p.entropy.find_iter(text) {
        if looks_generated(m.as_str()) {
            push(Kind::HighEntropy, m.start(), m.end());
        }
    }
    // Resolve overlaps: by kind priority, then longer first.
    raw.sort_by_key(|(k, s, e)| (*k, *s, std::cmp::Reverse(*e)));
    let mut taken: Vec<(Kind, usize, usize)> = Vec::new();
    for (k, s, e) in raw {
        if s < e && !taken.iter().any(|(_, ts, te)| s < *te && *ts < e) {
            taken.push((k, s, e));
        }
    }
    taken.sort_by_key(|(_, s, _)| *s);
    // Byte offsets to character offsets.
    taken
        .into_iter()
        .map(|(kind, s, e)| Finding {
            kind,
            start: text[..s].chars().count(),
            end: text[..e].chars().count(),
        })
        .collect()
}

/// Replaces each finding's span (character offsets into `text`) with the kind's placeholder
/// when `redact(kind)` says so.
pub fn redact(text: &str, findings: &[Finding], redact: impl Fn(Kind) -> bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut at = 0usize;
    for f in findings {
        if !redact(f.kind) || f.start < at || f.end > chars.len() {
            continue;
        }
        out.extend(chars.get(at..f.start).unwrap_or_default());
        out.push_str(f.kind.placeholder());
        at = f.end;
    }
    out.extend(chars.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Kind> {
        scan(text).into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn each_kind_is_found_with_its_span() {
        let t = "write to ana.lopez@example.org today";
        let f = scan(t);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, Kind::Email);
        let got: String = t
            .chars()
            .skip(f[0].start)
            .take(f[0].end - f[0].start)
            .collect();
        assert_eq!(got, "ana.lopez@example.org");
        assert_eq!(kinds("card 4111 1111 1111 1111 ok"), vec![Kind::Card]);
        assert_eq!(
            kinds("pay GB82 WEST 1234 5698 7654 32 now"),
            vec![Kind::Iban]
        );
        assert_eq!(kinds("ssn 123-45-6789"), vec![Kind::NationalId]);
        assert_eq!(kinds("NI AB 12 34 56 C"), vec![Kind::NationalId]);
        assert_eq!(kinds("DNI 12345678Z"), vec![Kind::NationalId]);
        assert_eq!(kinds("call +44 20 7946 0958"), vec![Kind::Phone]);
        assert_eq!(kinds("call (415) 555-0132"), vec![Kind::Phone]);
        assert_eq!(
            kinds("from 81.2.69.160 and 2a00:1450:4001:81b::200e"),
            vec![Kind::IpAddress, Kind::IpAddress]
        );
        assert_eq!(kinds("key AKIAIOSFODNN7EXAMPLE"), vec![Kind::ApiToken]);
        assert_eq!(
            kinds(
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
            ),
            vec![Kind::PrivateKey]
        );
        assert_eq!(
            kinds("secret=Zx8Qp2LmW9vR4tY7uI1oK3jH6gF5dS0a"),
            vec![Kind::HighEntropy]
        );
    }

    #[test]
    fn checksums_and_ranges_reject_look_alikes() {
        assert!(kinds("card 4111 1111 1111 1112").is_empty(), "Luhn-invalid");
        assert!(
            kinds("GB82 WEST 1234 5698 7654 33").is_empty(),
            "bad IBAN checksum"
        );
        assert!(kinds("DNI 12345678A").is_empty(), "wrong DNI letter");
        assert!(kinds("ssn 000-12-3456 and 666-12-3456").is_empty());
        assert!(kinds("listen on 127.0.0.1 or 192.168.1.10 or 10.0.0.1").is_empty());
        assert!(kinds("released v1.2.3.4 on 2024-01-15").is_empty());
        assert!(
            kinds("commit 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
                .is_empty()
        );
        assert!(kinds("fn parse_configuration_fileFromDisk() {}").is_empty());
        assert!(kinds("std::collections::HashMap::new()").is_empty());
    }

    #[test]
    fn redaction_writes_typed_placeholders_and_policy_parses() {
        let t = "mail bob@example.com or call +1 415 555 0132";
        let f = scan(t);
        assert_eq!(redact(t, &f, |_| true), "mail <EMAIL> or call <PHONE>");
        assert_eq!(
            redact(t, &f, |k| k == Kind::Email),
            "mail <EMAIL> or call +1 415 555 0132"
        );
        let p = Policy::parse("email=reject, high_entropy=allow").unwrap();
        assert_eq!(p.action(Kind::Email), Action::Reject);
        assert_eq!(p.action(Kind::HighEntropy), Action::Allow);
        assert_eq!(p.action(Kind::Card), Action::Reject);
        let e = Policy::parse("emails=reject").unwrap_err();
        assert!(e.contains("unknown kind `emails`"), "{e}");
        let e = Policy::parse("email=drop").unwrap_err();
        assert!(e.contains("unknown action `drop`"), "{e}");
    }
}
