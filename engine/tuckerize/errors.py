"""Error classes shared by the engine; the CLI maps EngineInputError to exit code 2."""


class EngineInputError(ValueError):
    """The input (model, dataset, options) cannot be processed; retrying will not help.

    Messages name the node/op/value at fault and say what to do.
    """
