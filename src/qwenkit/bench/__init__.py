"""Measuring models and servers: `qwenkit bench`, `qwenkit loadtest` and `qwenkit health`."""
