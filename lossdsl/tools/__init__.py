"""Tools on top of the library, each used by a command of ``lossdsl``: ``explain`` (the
operation tree and the table of terms, with ``weight_words``: effective weights in words),
``gradcheck``, ``catalogue`` (the README's table and ``lossdsl terms``), ``plot``, ``suggest``
(weights from a log) and ``demo`` (the demo's data, model and training loop). The tools never
import the configs (:mod:`lossdsl.config`); the command line (:mod:`lossdsl.cli`) joins the two.
"""
