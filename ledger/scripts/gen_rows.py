# Generates a JSONL upload for the ingestion benchmark (docs/benchmarks.md, "Ledger"):
# python3 ledger/scripts/gen_rows.py ROWS OUT.jsonl
import json, random, sys
random.seed(7)
n = int(sys.argv[1])
vocab = ["alpha","river","cloud","engine","garden","market","signal","planet","forest","window","bridge","silver","harbor","castle","rocket","meadow","canyon","lantern","violet","copper","thunder","marble","island","falcon","orchard","glacier","compass","velvet","ember","quartz"] * 1
def sentence(k):
    return " ".join(random.choice(vocab) + str(random.randint(0, 999)) for _ in range(k))
rows = []
out = open(sys.argv[2], "w")
for i in range(n):
    r = random.random()
    if r < 0.10 and rows:
        q, a = random.choice(rows)            # exact duplicate
    elif r < 0.15 and rows:
        q, a = random.choice(rows)            # near duplicate: one word changed
        ws = a.split(); ws[random.randrange(len(ws))] = "changed"; a = " ".join(ws)
    else:
        q, a = sentence(12), sentence(60)
        rows.append((q, a))
    f = i % 3
    if random.random() < 0.02:
        out.write('{"prompt": "broken\n'); continue
    if f == 0: rec = {"instruction": q, "output": a}
    elif f == 1: rec = {"prompt": q, "completion": a}
    else: rec = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    out.write(json.dumps(rec) + "\n")
