"""Records that fail to decode: which errors mean a bad record, and the rule for a run of
them (the input pipeline replaces a bad record in training and leaves it out of evaluation)."""

from mmjax.data import images, transforms
from mmjax.errors import BadData

MAX_REPLACEMENTS = 64    # this many bad records in a row: the data is broken, not a record
BAD_RECORD_ERRORS = (images.BadImage, UnicodeDecodeError, ValueError, OSError, KeyError)


def broken(name, first_error):
    """BadData: a run of MAX_REPLACEMENTS bad records in dataset `name`."""
    return BadData(f'{MAX_REPLACEMENTS} records in a row of dataset {name!r} are bad (first: '
                   f'{first_error}): rebuild it with `mmjax data build` (it drops bad records)')


def decoded(ops, records, name):
    """(key, example or None, error) for each (key, record), `apply_one` seeded by `key`: a
    record that fails to decode gives None and what went wrong; MAX_REPLACEMENTS bad records
    in a row are BadData (the streamed and evaluation reads' form of _Examples' rule)."""
    in_a_row, first_error = 0, None
    for key, record in records:
        try:
            example = transforms.apply_one(ops, record, key)
        except BAD_RECORD_ERRORS as err:
            error = f'{name} record {key[-1]}: {err}'
            first_error, in_a_row = first_error or error, in_a_row + 1
            if in_a_row >= MAX_REPLACEMENTS:
                raise broken(name, first_error) from None
            yield key, None, error
            continue
        in_a_row = 0
        yield key, example, ''
