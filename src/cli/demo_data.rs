//! The demo's built-in datanet: unit conversions answered in a house format (`7000 m`),
//! one unit family per contributor. SmolLM2-135M knows that a kilometre is a thousand
//! metres but answers in sentences ("7 km is equal to 7,000 meters."), often with wrong
//! arithmetic, so exact match on held-out numbers starts near zero; a few hundred
//! examples teach the format and the scaling.
//!
//! Deterministic: the same examples every run. Held-out numbers never appear in training.

use serde_json::json;

/// One contributor's slice of the datanet.
pub struct Contributor {
    /// Who contributed it.
    pub name: &'static str,
    /// Unit converted from (symbol) and its name in questions.
    pub from: (&'static str, &'static str),
    /// Unit converted to (symbol) and its name in questions.
    pub to: (&'static str, &'static str),
    /// The factor.
    pub factor: u64,
}

/// The contributors of the demo datanet.
pub const CONTRIBUTORS: [Contributor; 4] = [
    Contributor {
        name: "ana",
        from: ("km", "kilometres"),
        to: ("m", "metres"),
        factor: 1000,
    },
    Contributor {
        name: "bo",
        from: ("kg", "kilograms"),
        to: ("g", "grams"),
        factor: 1000,
    },
    Contributor {
        name: "chen",
        from: ("L", "litres"),
        to: ("mL", "millilitres"),
        factor: 1000,
    },
    Contributor {
        name: "dara",
        from: ("m", "metres"),
        to: ("cm", "centimetres"),
        factor: 100,
    },
];

/// The system message every example (and every evaluation prompt) starts with.
pub const SYSTEM: &str = "You convert units.";

/// One question with its house-format answer.
#[derive(Debug, Clone)]
pub struct Example {
    /// The contributor's name.
    pub contributor: &'static str,
    /// The user's question.
    pub question: String,
    /// The expected answer, exactly.
    pub answer: String,
}

impl Example {
    /// The chat without the answer (for generation).
    pub fn prompt_messages(&self) -> Vec<serde_json::Value> {
        vec![
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": self.question}),
        ]
    }

    /// One JSONL line in the OpenAI messages format, with its contributor.
    pub fn jsonl(&self) -> String {
        json!({
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": self.question},
                {"role": "assistant", "content": self.answer},
            ],
            "contributor": self.contributor,
        })
        .to_string()
    }
}

fn question(c: &Contributor, n: u64, variant: u64) -> String {
    let (sym, name) = c.from;
    let to = c.to.1;
    match variant % 4 {
        0 => format!("Convert {n} {sym} to {to}."),
        1 => format!("How many {to} are in {n} {name}?"),
        2 => format!("{n} {sym} in {to}?"),
        _ => format!("What is {n} {name} in {to}?"),
    }
}

/// The training examples (`per_contributor` each) and the held-out ones (`held_out` each).
pub fn datanet(per_contributor: usize, held_out: usize) -> (Vec<Example>, Vec<Example>) {
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (ci, c) in CONTRIBUTORS.iter().enumerate() {
        // Numbers 1..=999 in a fixed shuffled order (a multiplicative step modulo a prime):
        // the first ones train, the next ones are held out.
        let numbers = (1..=997u64).map(|i| (i * 389 + ci as u64 * 101) % 997 + 1);
        for (k, n) in numbers.enumerate().take(per_contributor + held_out) {
            let e = Example {
                contributor: c.name,
                question: question(c, n, k as u64),
                answer: format!("{} {}", n * c.factor, c.to.0),
            };
            if k < per_contributor {
                train.push(e);
            } else {
                eval.push(e);
            }
        }
    }
    (train, eval)
}

/// The copier's upload: the first `copies` rows of the first contributor, word for word
/// but without their owner's name (so they would count as the copier's own), then two
/// broken rows (a cut-off line and a chat without an answer).
pub fn copier_upload(train: &[Example], copies: usize) -> String {
    let mut lines: Vec<String> = train
        .iter()
        .filter(|e| Some(e.contributor) == CONTRIBUTORS.first().map(|c| c.name))
        .take(copies)
        .map(|e| {
            json!({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": e.question},
                {"role": "assistant", "content": e.answer},
            ]})
            .to_string()
        })
        .collect();
    lines.push(r#"{"messages": [{"role": "user", "content": "Convert 5 km to me"#.to_string());
    lines.push(
        json!({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Convert 9 km to metres."}]})
            .to_string(),
    );
    lines.join("\n") + "\n"
}
