from tests.steering.conftest import gemma_vec, smol_vec  # noqa: F401 - the same vectors the steering tests use
