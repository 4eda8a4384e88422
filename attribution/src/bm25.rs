//! BM25 (Robertson & Zaragoza; k1 = 1.2, b = 0.75): the text-retrieval baseline. An
//! answer's words are matched against each training example's words; the gradient methods
//! are only worth their cost where they beat this.

use std::collections::HashMap;

/// Lowercased alphanumeric words of `text`.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A BM25 index over documents.
#[derive(Debug, Clone)]
pub struct Bm25 {
    k1: f64,
    b: f64,
    docs: Vec<HashMap<String, u32>>,
    lens: Vec<usize>,
    avg_len: f64,
    df: HashMap<String, u32>,
}

impl Bm25 {
    /// Indexes `docs` with the usual parameters.
    pub fn new<S: AsRef<str>>(docs: &[S]) -> Self {
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut counts = Vec::with_capacity(docs.len());
        let mut lens = Vec::with_capacity(docs.len());
        for d in docs {
            let ws = words(d.as_ref());
            lens.push(ws.len());
            let mut tf: HashMap<String, u32> = HashMap::new();
            for w in ws {
                *tf.entry(w).or_default() += 1;
            }
            for w in tf.keys() {
                *df.entry(w.clone()).or_default() += 1;
            }
            counts.push(tf);
        }
        let avg_len = lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64;
        Self {
            k1: 1.2,
            b: 0.75,
            docs: counts,
            lens,
            avg_len,
            df,
        }
    }

    /// BM25 score of every document for `query` (0 for no shared word).
    pub fn scores(&self, query: &str) -> Vec<f64> {
        let n = self.docs.len() as f64;
        let mut q: Vec<String> = words(query);
        q.sort();
        q.dedup();
        self.docs
            .iter()
            .zip(&self.lens)
            .map(|(tf, &len)| {
                q.iter()
                    .map(|w| {
                        let Some(&f) = tf.get(w) else { return 0.0 };
                        let df = f64::from(self.df.get(w).copied().unwrap_or(0));
                        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                        let f = f64::from(f);
                        let norm = 1.0 - self.b + self.b * len as f64 / self.avg_len.max(1e-9);
                        idf * f * (self.k1 + 1.0) / (f + self.k1 * norm)
                    })
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_shared_words_rank_first() {
        let docs = [
            "the capital of france is paris",
            "the cat sat on the mat",
            "the dog sat on the log",
        ];
        let bm = Bm25::new(&docs);
        let s = bm.scores("Paris, France?");
        assert!(s[0] > 0.0 && s[1] == 0.0 && s[2] == 0.0, "{s:?}");
        let s = bm.scores("a cat on a mat");
        assert!(s[1] > s[2] && s[2] > 0.0, "{s:?}");
        // a word in every document weighs less than a rare one
        let s = bm.scores("the log");
        assert!(s[2] > s[0]);
    }

    #[test]
    fn hand_computed_value() {
        let bm = Bm25::new(&["a b", "c"]);
        let s = bm.scores("a");
        // n = 2, df = 1: idf = ln(1.5/1.5 + 1) = ln 2; f = 1, len 2, avg 1.5
        let norm = 0.25 + 0.75 * 2.0 / 1.5;
        let want = 2f64.ln() * 2.2 / (1.0 + 1.2 * norm);
        assert!((s[0] - want).abs() < 1e-12);
        assert_eq!(s[1], 0.0);
    }
}
