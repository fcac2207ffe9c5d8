"""Evaluation: language-model scores (lm.py)."""
