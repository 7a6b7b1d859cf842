"""The one exception type for user errors: bad values, bad files. The CLI prints it on one line."""


class DdimError(ValueError):
    """A problem with the user's input (a value, a file, a config), stated in one line."""
