"""Small helpers with no knowledge of models or data: hashing, atomic files, statistics,
ranks, progress bars and the machine a number was measured on."""
