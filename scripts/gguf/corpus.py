"""Texts the llama.cpp comparison runs on (scripts/gguf/llama_cpp_reference.py): a tokenizer
corpus of short strings, documents for teacher-forced next-token checks, and chat prompts
for greedy answers. Deterministic: the same list every run."""

import itertools

HAND = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tand\ttabs\t\t\tend",
    "new\nlines\n\n\nthree",
    "\r\nwindows line\r\n",
    "      ",
    "\n",
    "",
    " ",
    "a",
    "I'm sure you've seen what they'll do, and we'd say it's fine.",
    "DON'T SHOUT, It'S fine",
    "Café au lait, naïve façade, coöperate, résumé.",
    "Straße, Ärger, Öl, Übermut",
    "日本語のテキストです。東京は大きい。",
    "中文文本：你好，世界！",
    "한국어 문장입니다.",
    "Русский текст: привет, мир!",
    "Ελληνικά: γειά σου κόσμε",
    "עברית: שלום עולם",
    "العربية: مرحبا بالعالم",
    "हिन्दी: नमस्ते दुनिया",
    "ไทย: สวัสดีชาวโลก",
    "Emoji: 🚀🔥😀👍🏽👨‍👩‍👧‍👦🇫🇷",
    "🦀 Rust and 🐍 Python",
    "math: ∑_{i=1}^{n} x_i ≤ ∞, ∀x ∈ ℝ, √2 ≈ 1.41421",
    "arrows → ← ↑ ↓ ⇒ and boxes ┌─┐ │ │ └─┘",
    "fn main() { println!(\"hi {}\", 42); }",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}",
    "<div class=\"note\">Hello &amp; welcome</div>",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.org, +1 (555) 123-4567",
    "C:\\Program Files\\App\\bin\\app.exe",
    "$ cargo build --release && ./target/release/app --flag=3",
    "0 1 2 3 4 5 6 7 8 9",
    "1234567890",
    "3.14159265358979",
    "-42, +17, 1e-5, 6.02e23, 0xFF, 0b1010, 1_000_000",
    "2026-12-06T10:35:49Z",
    "$1,234.56 and €99,99 and ¥1000",
    "100% of 50 is 50; 12.5% of 8 is 1",
    "The year 1999 and 2000 and 2024.",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>assistant\n",
    "text <|endoftext|> more text",
    "<repo_name>tributary<file_sep>src/main.rs",
    "a<|im_end|>b",
    "!!!???...,,,;;;:::",
    "''\"\"``",
    "---===+++***",
    "snake_case_name camelCaseName PascalCaseName kebab-case-name",
    "ALLCAPS lowercase MiXeDcAsE",
    "x=1;y=2;z=x+y",
    "    indented code line",
    "\t\tdouble-tab indented",
    "Line one.\nLine two.\n\nParagraph two.",
    "supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "a b c d e f g h i j k l m n o p",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abababababababababab",
    "...",
    "¿Dónde está la biblioteca? ¡Aquí!",
    "Ça va? Très bien, merci.",
    "Zürich, Genève, Bern",
    "naïve café résumé jalapeño",
    "½ ¼ ¾ ² ³ ° ± × ÷",
    "© ® ™ § ¶ † ‡ •",
    "\u00a0non-breaking\u00a0spaces\u00a0",
    "zero\u200bwidth\u200bspace",
    "combining: e\u0301 a\u0308 n\u0303",
]

WORDS = ["data", "model", "contributor", "adapter", "reward", "ledger", "token", "the",
         "of", "and", "learning", "fine-tune", "GPU", "CPU", "2048", "3.5", "Hello", "world"]
SEPARATORS = [" ", "  ", "\n", "\t", ", ", ". ", " - ", "_", "/", ""]


def generated(n):
    """Deterministic combinations of words, numbers and separators."""
    out = []
    for i, (a, b, sep) in enumerate(itertools.product(WORDS, WORDS, SEPARATORS)):
        if i % 7 == 0:
            out.append(f"{a}{sep}{b}")
        if len(out) >= n:
            break
    for k in range(20):
        out.append(" " * (k + 1) + str(k * 37) + "\n" * (k % 3))
    return out


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Colour of the sky?"}],
    [{"role": "user", "content": "Write a haiku about rivers."},
     {"role": "assistant", "content": "Water finds its way\nstones remember every turn\nthe sea waits below"},
     {"role": "user", "content": "Now one about mountains."}],
    [{"role": "user", "content": "Convert 5 km to miles."}],
    [{"role": "user", "content": "Ünïcödé and emoji 🚀 in a chat?"}],
    [{"role": "user", "content": "def f(x):\n    return x * 2\nWhat does f(3) return?"}],
    [{"role": "user", "content": "List three fruits."}],
    [{"role": "user", "content": "How many legs does a spider have?"}],
]


def tokenizer_corpus():
    return HAND + generated(140)


DOCUMENTS = [
    # Encyclopedic prose.
    """The Rhine is one of the major European rivers. It begins in the Swiss canton of Graubünden in the southeastern Swiss Alps, forms part of the Swiss-Liechtenstein, Swiss-Austrian and Swiss-German borders, and then the Franco-German border, after which it flows through the German Rhineland and the Netherlands and eventually empties into the North Sea. The river has long been an important trade route, carrying coal, grain, chemicals and containers between the industrial regions of the interior and the great ports of the coast. Castles built on its cliffs in the Middle Ages collected tolls from passing ships, and many of them still stand today, drawing visitors from around the world. In the nineteenth century engineers straightened long stretches of the upper river to reduce flooding and to make navigation easier, which shortened its course by more than eighty kilometres but also changed the habitats of fish and birds along its banks. Today several countries cooperate to keep the water clean, and salmon, which had disappeared from the river for decades, have slowly begun to return.""",
    # A recipe with numbers and a list.
    """Simple bread (makes one loaf)

Ingredients:
- 500 g strong white flour
- 10 g salt
- 7 g dried yeast
- 30 ml olive oil
- 320 ml warm water

Method:
1. Mix the flour, salt and yeast in a large bowl.
2. Add the oil and most of the water, and stir until a rough dough forms. Add the rest of the water a little at a time if the dough is dry.
3. Knead on a lightly floured surface for 10 minutes, until the dough is smooth and elastic.
4. Cover and leave to rise for 1 to 2 hours, until doubled in size.
5. Shape into a loaf, place in a greased 900 g tin, and leave to rise for another 45 minutes.
6. Bake at 220 °C (200 °C fan) for 30 to 35 minutes. The loaf should sound hollow when tapped underneath.
7. Cool on a wire rack for at least 20 minutes before slicing.""",
    # Python code.
    '''import json
from dataclasses import dataclass


@dataclass
class Example:
    prompt: str
    completion: str
    contributor: str


def load_examples(path):
    """Reads one JSON object per line and keeps the well-formed ones."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                print(f"line {number}: {err}")
                continue
            examples.append(Example(row["prompt"], row["completion"], row.get("contributor", "anonymous")))
    return examples


def shares(examples):
    counts = {}
    for e in examples:
        counts[e.contributor] = counts.get(e.contributor, 0) + 1
    total = sum(counts.values())
    return {name: n / total for name, n in sorted(counts.items())}


if __name__ == "__main__":
    data = load_examples("train.jsonl")
    for name, share in shares(data).items():
        print(f"{name:>12}: {share:.1%}")
''',
    # Rust code.
    """use std::collections::HashMap;

/// Counts how often each word appears in `text`, ignoring case.
pub fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
        if word.is_empty() {
            continue;
        }
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

fn main() {
    let text = "The river flows. The river bends, and the river meets the sea.";
    let mut counts: Vec<_> = word_counts(text).into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (word, n) in counts.iter().take(3) {
        println!("{word}: {n}");
    }
}
""",
    # A dialogue and narrative.
    """"Are you sure this is the right way?" Maya asked, holding the map up against the wind.
"Not at all," said Tom. "But the path goes uphill, and the lighthouse is on the hill, so I think we can't go far wrong."
They walked on in silence for a while. The grass was wet, and the sky over the sea had turned the colour of slate. Somewhere below them waves broke against the rocks, a slow, heavy rhythm that seemed to shake the ground.
"Look," Maya said at last, pointing. A thin white tower had appeared between two hills, its lamp already turning although it was barely four o'clock.
"Told you," said Tom, and grinned. "Twenty minutes, maybe less."
It took them almost an hour. The path dipped into a valley they had not seen on the map, crossed a stream on three flat stones, and climbed again through a field of sheep that watched them with mild, unblinking interest. When they finally reached the door of the lighthouse, the keeper was waiting for them with a pot of tea and a plate of biscuits, as if he had known all along that they would come.""",
    # Numbers, a table and units.
    """Monthly rainfall at the station (mm), 2021-2023:

| Month | 2021 | 2022 | 2023 |
|-------|------|------|------|
| Jan   | 81.2 | 64.0 | 97.5 |
| Feb   | 55.9 | 71.3 | 40.8 |
| Mar   | 42.1 | 38.6 | 88.0 |
| Apr   | 30.4 | 25.2 | 51.7 |
| May   | 61.8 | 47.9 | 33.3 |
| Jun   | 49.0 | 58.4 | 62.1 |

The wettest month in the period was January 2023 with 97.5 mm, and the driest was April 2022 with 25.2 mm. Over the three years the average for January was (81.2 + 64.0 + 97.5) / 3 = 80.9 mm. One millimetre of rain on one square metre is one litre of water, so a roof of 120 m² collected about 11,700 litres in January 2023. At a price of €2.10 per cubic metre, that water would have cost €24.57 from the mains supply.""",
    # French text.
    """La Loire est le plus long fleuve de France. Elle prend sa source au mont Gerbier-de-Jonc, dans le Massif central, et se jette dans l'océan Atlantique près de Saint-Nazaire, après un parcours de plus de mille kilomètres. Sa vallée, entre Sully-sur-Loire et Chalonnes-sur-Loire, est inscrite au patrimoine mondial de l'Unesco depuis l'an 2000, en raison de ses paysages culturels et de ses nombreux châteaux, comme Chambord, Chenonceau ou Amboise. On l'appelle souvent le dernier fleuve sauvage d'Europe, parce que son cours n'a été que peu aménagé et que ses bancs de sable changent de place au gré des crues.""",
    # Instructions in the chat format (rendered), a JSON config and a shell session.
    """<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
<|im_start|>user
How do I list the files in a directory, including hidden ones, on Linux?<|im_end|>
<|im_start|>assistant
Use the `ls` command with the `-a` flag:

```sh
ls -a
```

To see details such as permissions, sizes and dates as well, combine it with `-l`:

```sh
ls -la /path/to/directory
```

Hidden files are the ones whose names start with a dot, such as `.bashrc` or `.git`.<|im_end|>
<|im_start|>user
And how do I count them?<|im_end|>
<|im_start|>assistant
Pipe the listing into `wc -l`, which counts lines: `ls -A | wc -l`. The `-A` flag lists hidden files but leaves out `.` and `..`, so the count is exact.<|im_end|>
""",
    """{
  "name": "tributary-demo",
  "version": "0.3.1",
  "datanets": [
    {"id": "units", "examples": 240, "contributors": ["ana", "bo", "chen", "dara"]},
    {"id": "recipes", "examples": 1180, "contributors": ["eli", "fay"]}
  ],
  "training": {"rank": 8, "alpha": 16, "lr": 0.0002, "steps": 300, "seed": 7},
  "serving": {"max_batch": 32, "timeout_ms": 2500, "adapters": ["units@v2", "recipes@v5"]}
}""",
    """The history of computing is often told as a story of machines, but it is just as much a story of people and the problems they wanted to solve. Early mechanical calculators helped merchants add up long columns of figures and astronomers prepare tables of planetary positions. In the twentieth century, electronic computers were built to break codes, to design weapons and to predict the weather, and each of these tasks pushed engineers to make the machines faster, smaller and more reliable. The invention of the transistor, and later of the integrated circuit, allowed thousands and then billions of switches to fit on a single chip. Software grew alongside the hardware: programming languages made it possible to describe a calculation once and run it on many different machines, and operating systems let several programs share a computer without getting in each other's way. Today a phone in a pocket holds more computing power than all the computers of the 1960s put together, and much of that power is spent on tasks their designers could hardly have imagined, such as recognising faces, translating speech, or recommending the next song.""",
]
