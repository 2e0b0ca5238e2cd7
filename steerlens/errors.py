"""Errors steerlens raises. Each message names the bad value, what was expected, and the fix."""


class SteerlensError(ValueError):
    """Base class: bad input to a steerlens function."""


class ModelNotAvailable(SteerlensError):
    """A model name or path that cannot be loaded here (unknown name, package not installed)."""


class SiteError(SteerlensError):
    """A hook-site name that does not exist in this model (bad grammar, layer out of range)."""


class StoreMismatch(SteerlensError):
    """An activation store made by another model, site list or dataset than the one asked for."""


class EmptyInput(SteerlensError):
    """No examples, or examples with no tokens at the requested positions."""


class SAEMismatch(SteerlensError):
    """A sparse autoencoder that does not fit the model or site asked for (width, hook site, model)."""


class SAENotAvailable(SteerlensError):
    """A sparse autoencoder that cannot be loaded here (no such directory, release or id; no network)."""
