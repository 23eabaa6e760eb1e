"""Python `tokenizers` baseline for benches/tokenize.rs: `encode_batch` over the same ~100 MB of
chat JSONL, rendered with the model's chat template first (rendering is not timed: this is the
tokenization-only number, comparable to the Rust bench's second line).

    RAYON_NUM_THREADS=2 python crates/tuna-data/benches/tokenize_python.py /tmp/tuna-bench-alpaca_en_demo-100mb.jsonl

Run the Rust bench first: it writes the 100 MB file.
"""

import json
import os
import sys
import time

import tokenizers
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")


def main():
    path = sys.argv[1]
    model = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "assets", "qwen3")
    hf = AutoTokenizer.from_pretrained(model)
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # Render each distinct conversation once (the file repeats a small one), then expand.
    cache = {}
    texts = []
    for row in rows:
        key = json.dumps(row["messages"], ensure_ascii=False)
        if key not in cache:
            cache[key] = hf.apply_chat_template(row["messages"], tokenize=False)
        texts.append(cache[key])
    tk = tokenizers.Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
    mb = os.path.getsize(path) / 1e6
    print(f"{path}: {mb:.1f} MB, {len(texts)} conversations, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS')}")
    t, c = time.perf_counter(), time.process_time()
    tokens = 0
    batch = 10_000
    for i in range(0, len(texts), batch):
        tokens += sum(len(e.ids) for e in tk.encode_batch(texts[i : i + batch], add_special_tokens=False))
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    print(
        f"python tokenizers {tokenizers.__version__} encode_batch: {tokens} tokens in {secs:.2f} s = {tokens / secs:.0f} tokens/s; "
        f"{cpu:.1f} CPU s = {tokens / cpu:.0f} tokens per CPU second"
    )


if __name__ == "__main__":
    main()
