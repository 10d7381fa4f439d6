"""The tool-env SDK.

:class:`ToolEnv` and ``@tool``, tool-call parsing, the ``info`` contract
(:class:`~actorlearner.env.info.StepInfo`), :func:`check_env` and evaluation suites.
"""
