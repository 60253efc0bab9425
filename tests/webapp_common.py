"""What the web app tests share: a tiny training setup and a small mixed-language vocabulary."""

TINY = dict(
    num_layers=1,
    num_heads=2,
    emb_size=16,
    context=16,
    vocab_size=300,
    learning_rate=1e-2,
    batch_size=8,
    dropout=0.0,
    device="cpu",
)
WORDS = "the cat sat on a mat and the dog ran to the sun while birds sang кот сидел на ковре".split()
