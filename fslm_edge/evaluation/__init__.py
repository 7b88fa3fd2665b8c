"""Evaluation harness: score stacks and single models on multiple-choice and
generative tasks (``fslm-edge eval``; see docs/eval.md).

Modules: ``tasks`` (named tasks, prompt formats), ``data`` (JSONL rows, discovery),
``extract`` (answer extraction), ``matcher`` (which option a printed answer
names, for ``--mode generate``),
``harness`` (targets, per-example loop and cache), ``report`` (statistics,
table, JSON, chart), ``cli`` (the command).
"""
