"""The embedded default policy.

A tiny model and tokenizer built locally and loaded with ``from_pretrained``, the same path a
user's model takes.
"""
