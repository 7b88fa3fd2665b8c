"""Evaluation harness: score stacks and single models on multiple-choice and
generative tasks (``fslm-edge eval``; see docs/eval.md).

Modules: ``tasks`` (named tasks, prompt formats), ``data`` (JSONL rows, discovery),
``scoring`` (KV-reuse log-likelihood scorer), ``extract`` (answer extraction),
``harness`` (targets, per-example loop and cache), ``report`` (statistics,
table, JSON, chart), ``cli`` (the command).
"""
