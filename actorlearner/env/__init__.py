"""The tool-env SDK.

:class:`ToolEnv` and ``@tool``, tool-call parsing, the step ``info`` contract and :func:`check_env`.
"""
