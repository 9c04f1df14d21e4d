"""Fixtures of the pipeline's tests that drive Molt in this process through the console."""

from tests.desk import chat, start_chat

__all__ = ["chat", "start_chat"]
