"""The demo: a character-level LSTM language model trained on text that ships with Python.

    python -m recur demo [--steps 800] [--hidden 256] [--seed 0] [--output char_lstm.npz]

The corpus is the help text of `pydoc_data.topics` (the pages of Python's built-in `help()`),
split into training text and the last tenth for validation. The model reads characters
through an Embedding, an LSTM and a Dense layer that gives the logits of the next character.
Training runs B parallel streams through the training text, T characters at a time; each
chunk continues where the previous one stopped, so the LSTM state is carried across chunks
while `truncate` keeps backpropagation inside the chunk (truncated backpropagation through
time). Afterwards the demo prints the validation loss in bits per character beside the
unigram entropy of the corpus (what a model that ignores context would score), samples a
paragraph one character at a time, and saves the model with `recur.save`.
"""
import argparse
import math
import time

import numpy as np

import recur as rc

VALIDATION_FRACTION = 0.1
PROMPT = "The "


def add_arguments(parser):
    parser.add_argument("--steps", type=int, default=800,
                        help="training steps, one chunk of every stream each (default: 800)")
    parser.add_argument("--hidden", type=int, default=256, help="LSTM state size (default: 256)")
    parser.add_argument("--embed", type=int, default=32,
                        help="character embedding size (default: 32)")
    parser.add_argument("--batch", type=int, default=32,
                        help="parallel streams through the text (default: 32)")
    parser.add_argument("--seq-len", type=int, default=64,
                        help="characters per chunk, the truncation length (default: 64)")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (default: 5e-3)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the initial weights and the sampling (default: 0)")
    parser.add_argument("--sample-length", type=int, default=500,
                        help="characters to sample after training (default: 500)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature: lower is more conservative (default: 0.8)")
    parser.add_argument("--output", default="char_lstm.npz",
                        help="where to save the trained model (default: char_lstm.npz)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show the progress bar (default: when stderr is a terminal)")


def corpus():
    """The text of Python's help topics; the same on every install of one Python version."""
    from pydoc_data.topics import topics
    return "".join(topics.values())


def build_model(vocab_size, hidden=256, embed=32):
    """Embedding → LSTM → Dense: the logits of the next character. `recur.load(path, model)`
    restores a saved demo model into `build_model(len(vocabulary), hidden, embed)`."""
    return rc.Chain(rc.Embedding(vocab_size, embed), rc.LSTM(embed, hidden),
                    rc.Dense(hidden, vocab_size))


def unigram_entropy_bits(indices, vocab_size):
    """Entropy of the character frequencies in bits: the loss of the best model that
    ignores the context."""
    counts = np.bincount(indices, minlength=vocab_size)
    p = counts[counts > 0] / indices.size
    return float(-(p * np.log2(p)).sum())


def streams(indices, batch):
    """`indices` cut into `batch` equal consecutive pieces, as columns: (length, batch)."""
    length = indices.size // batch
    return np.ascontiguousarray(indices[:length * batch].reshape(batch, length).T)


class Chunks:
    """`steps` (inputs, next characters) pairs of shape (seq_len, batch), each continuing
    the streams where the previous stopped: the model keeps its state from one chunk to the
    next but, truncated, not the history behind it, so gradients stay within a chunk. At
    the end of the text every stream starts over, and so does the model's state. (A class
    rather than a generator so that `len` gives the progress bar its total.)"""

    def __init__(self, columns, seq_len, steps, model):
        self.per_pass = (columns.shape[0] - 1) // seq_len
        if self.per_pass == 0:
            raise ValueError(f"demo: the training text is too short for --seq-len {seq_len} "
                             f"with --batch {columns.shape[1]}")
        self.columns, self.seq_len, self.steps, self.model = columns, seq_len, steps, model

    def __len__(self):
        return self.steps

    def __iter__(self):
        for step in range(self.steps):
            position = step % self.per_pass
            if position == 0:
                rc.reset(self.model)
            else:
                rc.truncate(self.model)
            start = position * self.seq_len
            yield (self.columns[start:start + self.seq_len],
                   self.columns[start + 1:start + self.seq_len + 1])


def one_hot(indices, vocab_size, dtype=np.float32):
    return np.eye(vocab_size, dtype=dtype)[indices]


def evaluate_bits(model, indices, vocab_size, batch):
    """Mean loss in bits per character of predicting each character of `indices` from the
    ones before it, read as `batch` parallel streams (each starting from a reset state)."""
    columns = streams(indices, batch)
    rc.reset(model)
    logits = model(columns[:-1])
    nats = rc.logitcrossentropy(logits, one_hot(columns[1:], vocab_size))
    return float(nats) / math.log(2)


def sample(model, vocabulary, length, temperature, rng, prompt=PROMPT):
    """`prompt` and `length` characters drawn one at a time from the model's prediction,
    each fed back in as the next input."""
    index = {char: i for i, char in enumerate(vocabulary)}
    rc.reset(model)
    for char in prompt[:-1]:
        model(np.array(index[char]))
    current = index[prompt[-1]]
    drawn = []
    for _ in range(length):
        logits = np.asarray(model(np.array(current)), dtype=np.float64) / temperature
        p = np.exp(logits - logits.max())
        current = rng.choice(len(vocabulary), p=p / p.sum())
        drawn.append(vocabulary[current])
    return prompt + "".join(drawn)


def run(args):
    for name in ("steps", "hidden", "embed", "batch", "seq_len", "sample_length"):
        if getattr(args, name) < 1:
            raise SystemExit(f"recur demo: --{name.replace('_', '-')} must be at least 1")
    if not args.temperature > 0:
        raise SystemExit("recur demo: --temperature must be > 0")

    text = corpus()
    vocabulary = sorted(set(text))
    to_index = {char: i for i, char in enumerate(vocabulary)}
    indices = np.array([to_index[char] for char in text], dtype=np.int64)
    split = int(indices.size * (1 - VALIDATION_FRACTION))
    training, validation = indices[:split], indices[split:]
    vocab_size = len(vocabulary)
    print(f"corpus: pydoc_data.topics, {indices.size:,} characters, {vocab_size} distinct; "
          f"training on {training.size:,}, validating on the last {validation.size:,}")

    rc.seed(args.seed)
    model = build_model(vocab_size, args.hidden, args.embed)
    print(f"model: Embedding({vocab_size} => {args.embed}) → LSTM({args.embed} => {args.hidden}) "
          f"→ Dense({args.hidden} => {vocab_size}), "
          f"{sum(p.value.size for p in rc.params(model)):,} parameters")
    print(f"training: {args.steps} steps of {args.batch} streams × {args.seq_len} characters, "
          f"Adam(lr={args.lr})")

    def loss_in_bits(x, next_chars):
        return rc.logitcrossentropy(model(x), one_hot(next_chars, vocab_size)) / math.log(2)

    data = Chunks(streams(training, args.batch), args.seq_len, args.steps, model)
    started = time.perf_counter()
    losses = rc.train(loss_in_bits, model, data, rc.Adam(args.lr), progress=args.progress)
    seconds = time.perf_counter() - started
    print(f"trained in {seconds:.1f} s ({args.steps / seconds:.1f} steps/s); "
          f"last training loss {losses[-1]:.3f} bits/char")

    bits = evaluate_bits(model, validation, vocab_size, args.batch)
    unigram = unigram_entropy_bits(indices, vocab_size)
    print(f"validation loss: {bits:.3f} bits/char "
          f"(unigram entropy of the corpus: {unigram:.3f} bits/char, {unigram - bits:.2f} lower)")

    paragraph = sample(model, vocabulary, args.sample_length, args.temperature,
                       np.random.default_rng(args.seed))
    print(f"\nsample (temperature {args.temperature}):\n\n{paragraph}\n")

    rc.reset(model)
    rc.save(args.output, model)
    print(f"saved the model to {args.output}; reload it with recur.load(path, "
          f"recur.demo.build_model({vocab_size}, hidden={args.hidden}, embed={args.embed}))")
