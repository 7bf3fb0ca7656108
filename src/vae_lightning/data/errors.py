"""The data layer's user-facing error: data that is missing, corrupt or does not fit the options."""


class DataError(ValueError):
    """Its message says what is wrong with the data and how to mend it."""
