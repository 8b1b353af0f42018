"""A synthetic RecBole dataset with a large catalogue, to time the SID build beyond Beauty's
12,101 items: 150,000 items with 6-word titles and two categories, 100,000 users with 5-23
distinct items each, item popularity ~ rank^-0.8. Writes FOLDER/big/big.{item,inter}.

    python results/benchmarks/sid-quantiser-large-catalogue/make_catalogue.py FOLDER
"""

import os
import sys

import numpy as np


def main(folder, users=100_000, items=150_000):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "big"), exist_ok=True)
    vocab, categories = [f"w{i}" for i in range(5000)], [f"c{i}" for i in range(300)]
    with open(os.path.join(folder, "big", "big.item"), "w") as f:
        f.write("item_id:token\ttitle:token_seq\tcategories:token_seq\n")
        for item in range(items):
            c = int(rng.integers(0, 300))  # a category's titles draw from 200 nearby words
            words = " ".join(vocab[j % 5000] for j in rng.integers(c * 10, c * 10 + 200, 6))
            f.write(f"i{item}\t{words}\t{categories[c]} {categories[(c * 7) % 300]}\n")
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    lengths = rng.integers(5, 24, users)
    draws = rng.choice(items, size=int(lengths.sum() * 1.2), p=popularity / popularity.sum())
    start = 0
    with open(os.path.join(folder, "big", "big.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(users):
            drawn = draws[start : start + int(lengths[user] * 1.2)].tolist()
            start += int(lengths[user] * 1.2)
            seen = list(dict.fromkeys(drawn))[: lengths[user]]
            f.write("".join(f"u{user}\ti{i}\t{1000 * user + t}\n" for t, i in enumerate(seen)))


if __name__ == "__main__":
    main(sys.argv[1])
