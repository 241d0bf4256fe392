"""Errors a user can act on: the CLI and the server show their message, never a traceback."""


class QwenkitError(Exception):
    """A failure with a one-line, user-facing explanation."""


class ModelNotFound(QwenkitError):
    """A model reference that resolves to nothing."""


class FetchError(QwenkitError):
    """Weights could not be downloaded, assembled or verified."""


class ModelLoadError(QwenkitError):
    """A model file exists but the engine cannot load it."""


class TemplateError(QwenkitError):
    """A conversation that cannot be rendered with the model's chat template."""


class BadRequest(QwenkitError):
    """Input that is invalid before any model work starts (empty prompt, prompt too long...)."""
