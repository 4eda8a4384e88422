//! Verbatim evidence: which spans of an answer occur word for word in training examples.
//!
//! A suffix array over the concatenated tokenized training texts (each followed by its own
//! separator, so no match crosses two examples) finds, for every position of the answer,
//! the longest run of tokens that occurs in some example; spans are kept when they are at
//! least `min_tokens` long and start and end at word boundaries, read greedily left to
//! right. Each span lists the examples and token offsets where it occurs: evidence a person
//! can read and check (infini-gram and OLMoTrace do this at web scale).
//!
//! Built by prefix doubling in O(n log² n); a query of m tokens costs O(m · L · log n) for
//! matches of length L.

use serde::{Deserialize, Serialize};

/// One place a span occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occurrence {
    /// Index of the training document.
    pub doc: usize,
    /// Token offset inside it.
    pub offset: usize,
}

/// A span of the answer found verbatim in training data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// First answer token of the span.
    pub start: usize,
    /// Length in tokens.
    pub len: usize,
    /// Where it occurs (one per document, the first offset there), sorted by document.
    pub occurrences: Vec<Occurrence>,
    /// Documents it occurs in, in total (`occurrences` may be capped).
    pub documents: usize,
}

/// Suffix array over tokenized documents.
#[derive(Debug, Clone)]
pub struct SuffixIndex {
    text: Vec<u64>,
    sa: Vec<u32>,
    doc_start: Vec<usize>,
}

const SEPARATOR: u64 = 1 << 32;

impl SuffixIndex {
    /// Indexes `docs` (token ids).
    pub fn new(docs: &[Vec<u32>]) -> Self {
        let mut text = Vec::new();
        let mut doc_start = Vec::with_capacity(docs.len());
        for (d, toks) in docs.iter().enumerate() {
            doc_start.push(text.len());
            text.extend(toks.iter().map(|&t| u64::from(t)));
            text.push(SEPARATOR + d as u64);
        }
        let sa = suffix_array(&text);
        Self {
            text,
            sa,
            doc_start,
        }
    }

    /// Tokens indexed, separators included.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    fn at(&self, pos: usize) -> Option<u64> {
        self.text.get(pos).copied()
    }

    /// Narrows the suffix-array range `[lo, hi)` (all sharing their first `depth` tokens)
    /// to those whose token at `depth` is `t`.
    fn narrow(&self, lo: usize, hi: usize, depth: usize, t: u64) -> (usize, usize) {
        let key = |i: usize| self.at(self.sa[i] as usize + depth);
        let mut a = lo;
        let mut b = hi;
        while a < b {
            let m = (a + b) / 2;
            if key(m).is_none_or(|v| v < t) {
                a = m + 1;
            } else {
                b = m;
            }
        }
        let start = a;
        let mut b = hi;
        while a < b {
            let m = (a + b) / 2;
            if key(m).is_some_and(|v| v <= t) {
                a = m + 1;
            } else {
                b = m;
            }
        }
        (start, a)
    }

    fn locate(&self, pos: usize) -> Occurrence {
        let doc = self.doc_start.partition_point(|&s| s <= pos) - 1;
        Occurrence {
            doc,
            offset: pos - self.doc_start[doc],
        }
    }

    /// Spans of `answer` of at least `min_tokens` tokens found verbatim, starting and ending
    /// at word boundaries (`word_start(t)`: token `t` begins a word). At most
    /// `max_occurrences` occurrences are listed per span.
    pub fn spans(
        &self,
        answer: &[u32],
        min_tokens: usize,
        max_occurrences: usize,
        word_start: impl Fn(u32) -> bool,
    ) -> Vec<Span> {
        let min_tokens = min_tokens.max(1);
        let mut out = Vec::new();
        let mut i = 0;
        while i < answer.len() {
            if !word_start(answer[i]) {
                i += 1;
                continue;
            }
            let (mut lo, mut hi) = (0, self.sa.len());
            let mut len = 0;
            let mut ranges = Vec::new();
            while i + len < answer.len() {
                let (a, b) = self.narrow(lo, hi, len, u64::from(answer[i + len]));
                if a == b {
                    break;
                }
                (lo, hi) = (a, b);
                len += 1;
                ranges.push((lo, hi));
            }
            // end at a word boundary: the next answer token starts a word, or the answer ends
            while len > 0 && i + len < answer.len() && !word_start(answer[i + len]) {
                len -= 1;
            }
            if len >= min_tokens {
                let (a, b) = ranges[len - 1];
                let mut occ: Vec<Occurrence> = self.sa[a..b]
                    .iter()
                    .map(|&p| self.locate(p as usize))
                    .collect();
                occ.sort_by_key(|o| (o.doc, o.offset));
                occ.dedup_by_key(|o| o.doc);
                let documents = occ.len();
                occ.truncate(max_occurrences);
                out.push(Span {
                    start: i,
                    len,
                    occurrences: occ,
                    documents,
                });
                i += len;
            } else {
                i += 1;
            }
        }
        out
    }
}

/// Suffix array by prefix doubling: sort by (rank of the first h, rank of the next h).
fn suffix_array(text: &[u64]) -> Vec<u32> {
    let n = text.len();
    let mut sa: Vec<u32> = (0..n as u32).collect();
    if n == 0 {
        return sa;
    }
    let mut sorted: Vec<u64> = text.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut rank: Vec<u64> = text
        .iter()
        .map(|t| sorted.partition_point(|s| s < t) as u64 + 1)
        .collect();
    let mut tmp = vec![0u64; n];
    let mut h = 1;
    loop {
        let key = |i: u32| {
            let i = i as usize;
            (rank[i], if i + h < n { rank[i + h] } else { 0 })
        };
        sa.sort_unstable_by_key(|&i| key(i));
        tmp[sa[0] as usize] = 1;
        for w in 1..n {
            let bump = u64::from(key(sa[w - 1]) != key(sa[w]));
            tmp[sa[w] as usize] = tmp[sa[w - 1] as usize] + bump;
        }
        std::mem::swap(&mut rank, &mut tmp);
        if rank[sa[n - 1] as usize] as usize == n || h >= n {
            break;
        }
        h *= 2;
    }
    sa
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_sa(text: &[u64]) -> Vec<u32> {
        let mut sa: Vec<u32> = (0..text.len() as u32).collect();
        sa.sort_by(|&a, &b| text[a as usize..].cmp(&text[b as usize..]));
        sa
    }

    #[test]
    fn suffix_array_matches_naive_sort() {
        let mut x = 12345u64;
        for n in [0usize, 1, 2, 7, 50, 300] {
            let text: Vec<u64> = (0..n)
                .map(|_| {
                    x = crate::splitmix64(x);
                    x % 4
                })
                .collect();
            assert_eq!(suffix_array(&text), naive_sa(&text), "n = {n}");
        }
    }

    #[test]
    fn finds_spans_with_documents_and_offsets() {
        // word starts are even token ids
        let ws = |t: u32| t.is_multiple_of(2);
        let docs = vec![
            vec![10, 11, 12, 14, 16, 18],
            vec![2, 4, 12, 14, 16, 7],
            vec![20, 22],
        ];
        let idx = SuffixIndex::new(&docs);
        let answer = [40, 12, 14, 16, 18, 20, 22, 30];
        let spans = idx.spans(&answer, 2, 10, ws);
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert_eq!((spans[0].start, spans[0].len), (1, 4));
        assert_eq!(spans[0].occurrences, vec![Occurrence { doc: 0, offset: 2 }]);
        assert_eq!((spans[1].start, spans[1].len), (5, 2));
        assert_eq!(spans[1].occurrences, vec![Occurrence { doc: 2, offset: 0 }]);
        // shorter match present in two docs
        let s = idx.spans(&[12, 14, 16, 98], 3, 10, ws);
        assert_eq!(s[0].documents, 2);
        assert_eq!(s[0].occurrences[1], Occurrence { doc: 1, offset: 2 });
    }

    #[test]
    fn spans_stop_at_word_boundaries_and_never_cross_documents() {
        let ws = |t: u32| t.is_multiple_of(2);
        let idx = SuffixIndex::new(&[vec![2, 4, 5], vec![6, 8]]);
        // "2 4 5" matches but the answer's word "4 5 7" goes on: only "2" is a whole word
        let s = idx.spans(&[2, 4, 5, 7], 1, 10, ws);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].start, s[0].len), (0, 1));
        let s = idx.spans(&[4, 5, 6, 8], 2, 10, ws);
        assert_eq!(s.len(), 2, "{s:?}");
        // 4 5 then 6 8: crosses the document boundary, so two spans of 2 at most
        let s = idx.spans(&[4, 5, 6, 8], 3, 10, ws);
        assert!(s.is_empty(), "{s:?}");
    }
}
