#!/usr/bin/env python3
"""Writes ledger/data/scan-corpus.jsonl: the labelled corpus for the personal-data and
secrets scanner (ledger/src/datanet/scan.rs). Deterministic (seeded). Each line is
{"text": ..., "labels": [{"kind": K, "value": V}]}, where every V occurs in text; lines with
no labels are realistic non-matches (versions, dates, hashes, code, order numbers...).
All personal data here is synthetic: numbers are generated to pass their checksums.

Run: python3 scripts/gen-scan-corpus.py > ledger/data/scan-corpus.jsonl
"""
import json, random, string

R = random.Random(18)

def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix]
    while len(digits) < length - 1:
        digits.append(R.randrange(10))
    for check in range(10):
        d = digits + [check]
        s = 0
        for i, x in enumerate(reversed(d)):
            if i % 2 == 1:
                x *= 2
                if x > 9: x -= 9
            s += x
        if s % 10 == 0:
            return "".join(map(str, d))

def group(s, sizes, sep=" "):
    out, i = [], 0
    for n in sizes:
        if i >= len(s): break
        out.append(s[i:i+n]); i += n
    if i < len(s): out.append(s[i:])
    return sep.join(out)

def card():
    kind = R.choice(["visa", "mc", "amex", "disc", "mc2"])
    if kind == "visa": n = luhn_complete("4" + str(R.randrange(10)), 16)
    elif kind == "mc": n = luhn_complete(str(R.randrange(51, 56)), 16)
    elif kind == "mc2": n = luhn_complete(str(R.randrange(2221, 2721)), 16)
    elif kind == "disc": n = luhn_complete("6011", 16)
    else: n = luhn_complete(R.choice(["34", "37"]), 15)
    style = R.choice(["plain", "space", "dash"])
    if style == "plain": return n
    sizes = [4, 6, 5] if len(n) == 15 else [4, 4, 4, 4]
    return group(n, sizes, " " if style == "space" else "-")

IBAN_LEN = {"DE": 22, "FR": 27, "GB": 22, "ES": 24, "NL": 18, "IT": 27, "BE": 16}
def iban():
    c = R.choice(list(IBAN_LEN))
    n = IBAN_LEN[c]
    if c == "GB": bban = "".join(R.choice(string.ascii_uppercase) for _ in range(4)) + "".join(str(R.randrange(10)) for _ in range(14))
    elif c == "NL": bban = "".join(R.choice(string.ascii_uppercase) for _ in range(4)) + "".join(str(R.randrange(10)) for _ in range(10))
    elif c == "IT": bban = R.choice(string.ascii_uppercase) + "".join(str(R.randrange(10)) for _ in range(n - 5))
    else: bban = "".join(str(R.randrange(10)) for _ in range(n - 4))
    num = int("".join(str(int(ch, 36)) for ch in bban + c + "00"))
    check = 98 - num % 97
    s = f"{c}{check:02d}{bban}"
    return group(s, [4] * 10) if R.random() < 0.6 else s

def ssn():
    a = R.choice([x for x in range(1, 900) if x != 666])
    return f"{a:03d}-{R.randrange(1,100):02d}-{R.randrange(1,10000):04d}"

def nino():
    first = R.choice("ABCEGHJKLMNOPRSTWXYZ")
    second = R.choice("ABCEGHJKLMNPRSTWXYZ")
    if first + second in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"): second = "A"
    d = "".join(str(R.randrange(10)) for _ in range(6))
    return f"{first}{second} {d[:2]} {d[2:4]} {d[4:]} {R.choice('ABCD')}" if R.random() < 0.5 else f"{first}{second}{d}{R.choice('ABCD')}"

def dni():
    n = R.randrange(10**7, 10**8)
    return f"{n:08d}" + "TRWAGMYFPDXBNJZSQVHLCKE"[n % 23]

VM = [[0,1,2,3,4,5,6,7,8,9],[1,2,3,4,0,6,7,8,9,5],[2,3,4,0,1,7,8,9,5,6],[3,4,0,1,2,8,9,5,6,7],[4,0,1,2,3,9,5,6,7,8],[5,9,8,7,6,0,4,3,2,1],[6,5,9,8,7,1,0,4,3,2],[7,6,5,9,8,2,1,0,4,3],[8,7,6,5,9,3,2,1,0,4],[9,8,7,6,5,4,3,2,1,0]]
VP = [[0,1,2,3,4,5,6,7,8,9],[1,5,7,6,2,8,3,0,9,4],[5,8,0,3,7,9,6,1,4,2],[8,9,1,6,0,4,3,5,2,7],[9,4,5,3,1,2,6,8,7,0],[4,2,8,6,5,7,3,9,0,1],[2,7,9,3,8,0,6,4,1,5],[7,0,4,6,9,1,3,2,5,8]]
VINV = [0,4,3,2,1,5,6,7,8,9]
def aadhaar():
    d = [R.randrange(2, 10)] + [R.randrange(10) for _ in range(10)]
    c = 0
    for i, x in enumerate(reversed(d)):
        c = VM[c][VP[(i + 1) % 8][x]]
    s = "".join(map(str, d + [VINV[c]]))
    return group(s, [4, 4, 4])

FIRST = ["ana", "li.wei", "j.smith", "maria_garcia", "o'neil", "kofi", "priya.n", "tom+news", "d.muller", "sven92"]
DOMS = ["example.org", "mail.example.com", "uni-example.edu", "example.co.uk", "corp.example.net"]
def email():
    return R.choice(FIRST).replace("'", "") + "@" + R.choice(DOMS)

def phone():
    f = R.choice(["intl_uk", "intl_fr", "intl_us", "nanp", "nanp_dot", "uk_nat", "fr_nat", "intl_de"])
    d = lambda n: "".join(str(R.randrange(10)) for _ in range(n))
    if f == "intl_uk": return f"+44 20 {d(4)} {d(4)}"
    if f == "intl_fr": return f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}"
    if f == "intl_us": return f"+1 {R.randrange(201,990)} {d(3)} {d(4)}"
    if f == "intl_de": return f"+49 30 {d(8)}"
    if f == "nanp": return f"({R.randrange(201,990)}) {d(3)}-{d(4)}"
    if f == "nanp_dot": return f"{R.randrange(201,990)}.{d(3)}.{d(4)}"
    if f == "uk_nat": return f"07{d(3)} {d(6)}"
    return f"06 {d(2)} {d(2)} {d(2)} {d(2)}"

def public_ip():
    if R.random() < 0.75:
        while True:
            a = R.choice([8, 23, 31, 45, 62, 77, 81, 91, 104, 151, 185, 212])
            return f"{a}.{R.randrange(256)}.{R.randrange(256)}.{R.randrange(1,255)}"
    return f"2a0{R.randrange(10)}:{R.randrange(4096,65535):x}:{R.randrange(65535):x}::{R.randrange(1,65535):x}"

def rnd(alpha, n):
    return "".join(R.choice(alpha) for _ in range(n))
A62 = string.ascii_letters + string.digits
def token():
    k = R.choice(["aws", "gh", "openai", "stripe", "slack", "google", "gitlab", "hf", "npm", "jwt"])
    if k == "aws": return "AKIA" + rnd(string.ascii_uppercase + string.digits, 16)
    if k == "gh": return "ghp_" + rnd(A62, 36)
    if k == "openai": return "sk-proj-" + rnd(A62, 40)
    if k == "stripe": return "sk_live_" + rnd(A62, 24)
    if k == "slack": return "xoxb-" + rnd(string.digits, 11) + "-" + rnd(A62, 24)
    if k == "google": return "AIza" + rnd(A62 + "_-", 35)
    if k == "gitlab": return "glpat-" + rnd(A62, 20)
    if k == "hf": return "hf_" + rnd(A62, 34)
    if k == "npm": return "npm_" + rnd(A62, 36)
    return "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx" + rnd(A62, 12) + "." + rnd(A62 + "_-", 43)

def private_key():
    kind = R.choice(["RSA ", "EC ", "OPENSSH ", ""])
    body = "\n".join(rnd(A62 + "+/", 64) for _ in range(3))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"

def secret():
    return rnd(A62, R.choice([32, 40, 48]))

TEMPLATES = {
    "email": ["You can reach me at {} if the build fails.", "Send the signed form to {} before Friday.", "My address is {}, thanks!", "cc: {}"],
    "phone": ["Call the front desk on {} after 9am.", "Her mobile is {}.", "Fax: {}", "Reach support at {} any time."],
    "card": ["My card number is {} and it expires 04/27.", "Charge {} for the order please.", "The customer paid with {}."],
    "iban": ["Please wire the deposit to {}.", "IBAN: {}", "Refunds go to account {} within 5 days."],
    "national_id": ["His SSN is {}.", "National Insurance number {} on the payslip.", "DNI {} del titular.", "Aadhaar no. {} was used for KYC."],
    "ip_address": ["The login came from {} at 03:12.", "Block {} in the firewall.", "client_ip={} status=403"],
    "api_token": ["export API_KEY={}", "Use the token {} to authenticate.", "headers = {{'Authorization': 'Bearer {}'}}"],
    "private_key": ["Here is the deploy key:\n{}\nkeep it safe"],
    "high_entropy": ["client_secret = \"{}\"", "The webhook signing secret is {}", "password: {}"],
}
GEN = {"email": email, "phone": phone, "card": card, "iban": iban, "ip_address": public_ip, "api_token": token, "private_key": private_key, "high_entropy": secret}

def national():
    f = R.choice([ssn, nino, dni, aadhaar])
    return f(), f

NEGATIVE = [
    "Upgrade to version 1.24.3 and restart; 1.24.2 had a memory leak.",
    "Released v2.0.0.1 on 2024-01-15 after the 2023-12-31 freeze.",
    "The meeting moved from 10:30:00 to 14:45:00 on 06/12/2026.",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed the race.",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "md5 of the file is d41d8cd98f00b204e9800998ecf8427e",
    "request id 550e8400-e29b-41d4-a716-446655440000 timed out",
    "let mut buf: Vec<u8> = Vec::with_capacity(1024 * 1024);",
    "for (i, x) in xs.iter().enumerate() { total += i * x; }",
    "def train(model, lr=3e-4, steps=10_000): return model.fit(lr, steps)",
    "std::collections::HashMap<String, Vec<usize>>::new()",
    "Order #1234567890123456 shipped yesterday.",
    "Tracking number 9400111899223197428490 is on its way.",
    "Server listens on 127.0.0.1:8080 and 0.0.0.0:9090.",
    "Set the gateway to 192.168.1.1 and the DNS to 10.0.0.53.",
    "The docs use 192.0.2.15 and 2001:db8::1 as examples.",
    "ISBN 978-0-306-40615-7 is the second edition.",
    "Coordinates 48.8584, 2.2945 mark the tower.",
    "Total: 1,234,567.89 EUR including 19% VAT.",
    "The population grew from 7,800,000,000 to 8,000,000,000.",
    "Use `git clone git@github.com:org/repo.git` to fetch it.",
    "class ConfigurationManagerFactoryBuilder extends AbstractFactory {}",
    "The file is at /usr/lib/x86_64-linux-gnu/libssl.so.3",
    "color: #1e90ff; margin: 0 auto; font-size: 14px;",
    "The timestamp 1700000000000 is in milliseconds.",
    "Unix time 1733443200 corresponds to 2024-12-06.",
    "Matrix shape (4096, 11008) in bfloat16.",
    "pip install torch==2.3.1+cu121 transformers>=4.41.0",
    "docker run -p 5432:5432 postgres:16.2-alpine",
    "The answer is 3.14159265358979 to fifteen digits.",
    "Room 404, building 12, floor 3.",
    "Call stack depth reached 10000 frames.",
    "Product code ABC-1234-XYZ is discontinued.",
    "My favourite number is 4111 and my door code is 2580.",
    "The lottery numbers were 04 15 23 42 08 16.",
    "Invoice INV-2024-000123 due 2024-02-29.",
    "UUID 123e4567-e89b-12d3-a456-426614174000",
    "x = base64.b64encode(b'hello world')  # aGVsbG8gd29ybGQ=",
    "The IPv6 loopback is ::1 and link-local starts with fe80::",
    "Kernel 6.8.0-45-generic #45-Ubuntu SMP",
    "ratio 1:2:3:4 and time 12:34:56",
    "Temperature ranged from -12.5 to 38.7 degrees.",
    "Chapter 3.2.1.4 covers the proof.",
    "sk-learn is not a token, scikit-learn is the package.",
    "The gene BRCA1 and protein p53 are tumour suppressors.",
    "Our fiscal year 2024-2025 ends on 31.03.2025.",
    "Phone model iPhone15,3 with iOS 17.4.1",
    "The recipe needs 250 g flour, 2 eggs and 100 ml milk.",
    "Use the function getUserAccountSettingsById in the service layer.",
    "SELECT id, email FROM users WHERE created_at > '2024-01-01';",
    "The email field must be validated with a regex like ^[^@]+@[^@]+$.",
    "Write to the list at announce (at) example (dot) org.",
    "Flight LH 400 departs 13:05 from gate B44.",
    "ISO 8601: 2026-12-06T10:35:48Z",
    "EAN 4006381333931 on the package.",
    "The hex colour 0xFF00FF is magenta.",
    "checksum=sha512-3a81oZ2KnVVhH5e2XQ7 in package-lock",
    "path = 'models/llama-3-8b-instruct/model-00001-of-00004.safetensors'",
    "Visit https://example.com/docs/v3/getting-started#install",
    "Zip code 90210 and postcode SW1A 1AA.",
    "RFC 7231 section 6.5.1 defines 400 Bad Request.",
    "A 256-bit key has 2^256 possible values.",
    "The Fibonacci numbers 1 1 2 3 5 8 13 21 34 55 89 144.",
    "Serial port /dev/ttyUSB0 at 115200 baud.",
    "config.yaml: replicas: 3, maxSurge: 25%, timeout: 30s",
    "Call me maybe at noon, or email me later.",
    "Account 12345678 sort code 12-34-56 is closed.",
    "The range 100.64.0.0/10 is carrier-grade NAT.",
    "The word antidisestablishmentarianism has 28 letters.",
    "AbstractSingletonProxyFactoryBean is a real Spring class name.",
    "The model scored 87.45% on MMLU and 92.1% on GSM8K.",
]

out = []
for kind, templates in TEMPLATES.items():
    n = 30 if kind != "private_key" else 10
    for _ in range(n):
        if kind == "national_id":
            v, _f = national()
        else:
            v = GEN[kind]()
        t = R.choice(templates)
        out.append({"text": t.format(v), "labels": [{"kind": kind, "value": v}]})
# Mixed rows: two kinds together.
for _ in range(20):
    e, p = email(), phone()
    out.append({"text": f"Contact: {e} / {p}", "labels": [{"kind": "email", "value": e}, {"kind": "phone", "value": p}]})
for t in NEGATIVE:
    out.append({"text": t, "labels": []})
# Near-misses: checksum-invalid look-alikes.
for _ in range(20):
    c = card().replace(" ", "").replace("-", "")
    bad = c[:-1] + str((int(c[-1]) + 1) % 10)
    out.append({"text": f"Order reference {bad} confirmed.", "labels": []})
for _ in range(10):
    s = iban().replace(" ", "")
    bad = s[:2] + f"{(int(s[2:4]) + 1) % 100:02d}" + s[4:]
    out.append({"text": f"Reference {bad} in the ledger.", "labels": []})
R.shuffle(out)
for row in out:
    for l in row["labels"]:
        assert l["value"] in row["text"], row
    print(json.dumps(row))
