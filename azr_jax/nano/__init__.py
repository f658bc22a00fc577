"""The nano preset: a procedural corpus, a SentencePiece tokenizer and a small base model trained
on it (the stand-in for human pretraining), and a held-out benchmark from the same generator.

Kept import-light (no JAX here); `BASE_DIR` is where the shipped base checkpoint lives.
"""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent / "base"
