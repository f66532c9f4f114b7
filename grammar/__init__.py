"""Holds the grammar file so that the installed wheel carries it (``lossdsl.grammar``)."""
