"""Evaluation suites held against Qwen's published scores, and the sandbox generated code runs in."""
