"""Shared fixtures: each embedded model is loaded once per test session (real weights, no mocks)."""

import os
import random

import pytest
import torch

import steerlens

torch.set_grad_enabled(False)

IOI = "When Mary and John went to the store, John gave a drink to"
TEXTS = [
    IOI,
    "12+7=",
    "The capital of France is Paris, and the capital of Germany is",
    "A short one.",
    "Steering vectors shift the residual stream of a language model along one direction.",
]


@pytest.fixture(scope="session")
def gemma() -> steerlens.Model:
    return steerlens.load("gemma-3-270m")


@pytest.fixture(scope="session")
def smol() -> steerlens.Model:
    return steerlens.load("smollm2-135m-instruct")


@pytest.fixture(scope="session", params=["gemma-3-270m", "smollm2-135m-instruct"])
def model(request, gemma, smol) -> steerlens.Model:
    return {"gemma-3-270m": gemma, "smollm2-135m-instruct": smol}[request.param]


def _property_seed() -> str:
    return os.environ.setdefault("STEERLENS_PROPERTY_SEED", str(random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    """The randomized property test's seed, chosen before any test runs (shown without -q)."""
    return f"steerlens property test seed: {_property_seed()}"


def pytest_terminal_summary(terminalreporter):
    """...and repeated at the end, also under -q, so a failed CI run can be replayed."""
    seed = _property_seed()
    terminalreporter.write_line(
        f"steerlens property test seed: {seed} (STEERLENS_PROPERTY_SEED={seed} replays it)"
    )


@pytest.fixture(scope="session")
def qwen() -> steerlens.Model:
    """Qwen2.5-Coder-0.5B-Instruct: the embedded model that reasons (critique and test-time scaling)."""
    return steerlens.load("qwen2.5-coder-0.5b-instruct")
