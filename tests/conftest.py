"""Shared fixtures live in tests/fixtures/; they start the real parts (broker, ClickHouse, model)."""

import os

# Before transformers is imported anywhere: nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.fixtures.clickhouse", "tests.fixtures.broker", "tests.fixtures.models", "tests.fixtures.labelling"]
