"""The ``geohf`` subcommands, one module each (as transformers' ``commands/``).

Each module registers its subparser (``register_subcommand``), holds a dataclass of its parsed arguments
and a function running it; :mod:`geohf.cli` assembles the parser and handles errors. Importing a command
module imports no torch, transformers or datasets (its choices come from the torch-free ``names``
registries of the packages that own them): the run function imports what it needs.
"""

COMMANDS = ("demo", "predict", "dataset", "evaluate", "index", "convert", "collect", "app", "export", "train")
"""The modules of :mod:`geohf.commands`, in ``geohf --help``'s order."""
