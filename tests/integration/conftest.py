"""Fixtures of the integration tests that talk to a platform's fake."""

from tests.integration.github_bot import github, github_bot, start_github_bot, start_github_molt
from tests.integration.inprocess import start_bot

__all__ = ["github", "github_bot", "start_bot", "start_github_bot", "start_github_molt"]
