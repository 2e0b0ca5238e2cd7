import pytest

from steerlens.steering import vector_from_prompts

POS = [
    "I love this, it is wonderful and amazing.",
    "What a fantastic, happy day this has been.",
    "This is great news, I am delighted.",
    "The food was delicious and the staff were kind.",
]
NEG = [
    "I hate this, it is awful and terrible.",
    "What a horrible, sad day this has been.",
    "This is terrible news, I am upset.",
    "The food was disgusting and the staff were rude.",
]


@pytest.fixture(scope="session")
def smol_vec(smol):
    return vector_from_prompts(smol, POS, NEG)


@pytest.fixture(scope="session")
def gemma_vec(gemma):
    return vector_from_prompts(gemma, POS, NEG)
