"""``clstream soak`` and its outage sweep: the long runs ``make soak`` makes, outside CI."""
