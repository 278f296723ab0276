"""Test-wide settings: every response the service sends during the tests is also validated
against its documented model (IRQLAB_VALIDATE_RESPONSES), including the real uvicorn
processes the tests start, which inherit the environment."""

import os

os.environ["IRQLAB_VALIDATE_RESPONSES"] = "1"
