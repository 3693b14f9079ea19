"""Images a job sends in: decoded under limits (``decode``), fetched from https (``fetch``),
and gathered per job (``load``). Nothing about an image is logged or put in a message
beyond its field, size and format."""
