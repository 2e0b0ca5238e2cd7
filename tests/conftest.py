"""Shared fixtures: each embedded model is loaded once per test session (real weights, no mocks)."""

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
