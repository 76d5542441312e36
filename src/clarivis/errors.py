"""Errors a user can cause. The CLI prints their message as one line and exits with code 2."""


class ClarivisError(Exception):
    """Base class: the message must say what went wrong and what to do about it."""


class DataError(ClarivisError):
    """The images, folders or manifest given cannot be used as a dataset."""


class ImageDecodeError(DataError):
    """One file is not a readable image (corrupt, truncated, not an image, too many pixels)."""


class ModelError(ClarivisError):
    """A model name, weights file or ModelBundle cannot be used."""


class ConfigError(ClarivisError):
    """A setting is out of range or a config file is malformed."""


class ResumeError(ClarivisError):
    """A run cannot be resumed (finished, foreign data, no checkpoint)."""
