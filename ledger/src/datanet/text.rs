//! Text normalization and content ids, and the repetition-spam rule.
//!
//! An example's id is the BLAKE3 digest of its normalized text: every message rendered as
//! `role: content` with the content in Unicode NFC and whitespace folded (runs of Unicode
//! whitespace become one space, ends trimmed), joined by `\n`. So copies that differ only
//! in Unicode composition or spacing get the same id.

use unicode_normalization::UnicodeNormalization;

/// NFC, then whitespace runs folded to one space and trimmed.
pub fn fold(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    let mut out = String::with_capacity(nfc.len());
    for word in nfc.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The normalized text of a conversation (what the content id hashes).
pub fn normalized(messages: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (role, content)) in messages.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(role);
        out.push_str(": ");
        out.push_str(&fold(content));
    }
    out
}

/// Content id: hex BLAKE3 of the normalized text.
pub fn content_id(messages: &[(String, String)]) -> String {
    blake3::hash(normalized(messages).as_bytes())
        .to_hex()
        .to_string()
}

/// Repetition-spam thresholds.
#[derive(Debug, Clone, Copy)]
pub struct SpamRule {
    /// Texts with at least this many words are checked for word diversity.
    pub min_words: usize,
    /// Minimum share of distinct words (lowercased) among all words.
    pub min_distinct_ratio: f64,
    /// Longest allowed run of one repeated character (whitespace excluded).
    pub max_char_run: usize,
}

impl Default for SpamRule {
    fn default() -> Self {
        Self {
            min_words: 24,
            min_distinct_ratio: 0.2,
            max_char_run: 48,
        }
    }
}

impl SpamRule {
    /// `Some(reason)` when the text is repetition spam.
    pub fn check(&self, text: &str) -> Option<String> {
        let mut run = 0usize;
        let mut last = None;
        for c in text.chars() {
            if c.is_whitespace() {
                last = None;
                run = 0;
                continue;
            }
            if Some(c) == last {
                run += 1;
            } else {
                run = 1;
                last = Some(c);
            }
            if run > self.max_char_run {
                return Some(format!(
                    "repetition spam: the character {c:?} repeated more than {} times in a row",
                    self.max_char_run
                ));
            }
        }
        let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
        if words.len() >= self.min_words {
            let mut distinct = words.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let ratio = distinct.len() as f64 / words.len() as f64;
            if ratio < self.min_distinct_ratio {
                return Some(format!(
                    "repetition spam: {} distinct words of {} ({:.0}%, minimum {:.0}%)",
                    distinct.len(),
                    words.len(),
                    ratio * 100.0,
                    self.min_distinct_ratio * 100.0
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(a: &str, b: &str) -> Vec<(String, String)> {
        vec![("user".into(), a.into()), ("assistant".into(), b.into())]
    }

    #[test]
    fn ids_ignore_composition_and_spacing_but_not_words() {
        // "é" precomposed vs e + combining acute; tabs and newlines vs spaces.
        let a = content_id(&msgs("caf\u{e9}  au lait", "yes"));
        let b = content_id(&msgs(" cafe\u{301}\tau\nlait ", "yes"));
        assert_eq!(a, b);
        assert_ne!(a, content_id(&msgs("café au lait", "no")));
        // The role is part of the text.
        let c = content_id(&[("assistant".into(), "café au lait".into())]);
        assert_ne!(a, c);
    }

    #[test]
    fn spam_rule_catches_repetition_and_passes_prose() {
        let rule = SpamRule::default();
        assert!(rule.check(&"buy ".repeat(50)).is_some());
        assert!(rule.check(&"a".repeat(49)).is_some());
        assert!(rule.check(&"a".repeat(48)).is_none());
        let prose = "The mitochondria is the powerhouse of the cell, producing most of the \
                     chemical energy needed to power the biochemical reactions of the cell \
                     through a process called oxidative phosphorylation.";
        assert!(rule.check(prose).is_none());
    }
}
