"""Domain errors of the host tools; the CLI turns them into one line on stderr."""


class DosisError(Exception):
    """An error the user can act on; the message says what to do. Exit code 1."""

    exit_code = 1


class InputError(DosisError):
    """Bad input: a file, an argument or a value that cannot be used as given."""
