"""Core: types, errors and contracts every layer above builds on."""
