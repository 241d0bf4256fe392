"""Engines: token ids in, `Chunk`s out (`base.py` is the protocol; one subpackage per implementation).

Engines know tokens, not Qwen: nothing here imports the chat layer, the server or the CLI.
"""
