"""Exceptions raised by shira-diffusion. Every message names the file, tensor or value at fault."""


class ShiraError(Exception):
    """Base class: anything the user can fix (bad file, wrong base, bad argument)."""


class AdapterFileError(ShiraError):
    """An adapter file is unreadable, malformed or internally inconsistent."""


class ArchitectureMismatchError(ShiraError):
    """An adapter was made for another base architecture than the UNet it is applied to."""


class OutputExistsError(ShiraError):
    """An output file exists and the caller did not ask to overwrite it (``--overwrite``)."""
