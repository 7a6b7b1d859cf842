"""The one exception type for user errors: bad values, bad files. The CLI prints it on one line."""


class DdimError(ValueError):
    """A problem with the user's input (a value, a file, a config), stated in one line.

    A message about one argument of a library function starts with that argument's name and says
    so in `argument` (`DdimError("batch must be >= 1, got 0", argument="batch")`): the command
    line puts the flag that set it in the name's place (`--batch must be >= 1, got 0`).
    """

    def __init__(self, message: str = "", *, argument: str | None = None):
        super().__init__(message)
        self.argument = argument
