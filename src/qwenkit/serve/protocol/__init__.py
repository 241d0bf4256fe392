"""OpenAI-compatible request and response shapes (typed, validated; no serving logic here).

`common` (shared parts), `messages` (a chat's conversation), `chat`, `completions`, `server` (the
other endpoints and the error body). `responses_protocol` holds the Responses API's shapes.
"""
