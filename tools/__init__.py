"""Host-side tools run from the repository root with the development virtualenv (``.venv``)."""
