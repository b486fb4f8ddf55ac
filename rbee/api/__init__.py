"""Wire types shared by the keeper, queen, hives and workers. No I/O here."""
