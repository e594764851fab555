"""The one exception type that the command line turns into a one-line message and exit code 2."""


class InputError(Exception):
    """Bad input from the user (a missing, corrupt or mismatched file, an impossible option).

    The message must name the file or option and say what is wrong, in one line.
    """
