"""Shared fixtures live in tests/fixtures/; they start the real parts (broker, ClickHouse, model)."""

import os

# Before transformers is imported anywhere: nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every process of the suite (workers inherit it) checks a new model version's ONNX graph against
# fp32 on 250 validation texts rather than 1000: on a 2-core CPU a check costs ~2.5 s, not ~10 s,
# and the tiny models' graphs pass it all the same (0 flips allowed at 250).
os.environ.setdefault("VIGIL_PARITY_SAMPLE", "250")

pytest_plugins = ["tests.fixtures.clickhouse", "tests.fixtures.broker", "tests.fixtures.models", "tests.fixtures.labelling"]
