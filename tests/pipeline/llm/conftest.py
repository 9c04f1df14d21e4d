"""The fake Messages API and settings that point the real client at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from pipeline.config import Settings
from tests.fakes.anthropic import API_KEY, FakeAnthropic


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def llm_settings(settings: Settings, fake: FakeAnthropic) -> Settings:
    return settings.model_copy(
        update={"anthropic_api_key": SecretStr(API_KEY), "anthropic_base_url": fake.url}
    )
