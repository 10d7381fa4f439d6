"""Built-in tool envs, registered with gymnasium under the ``actorlearner/`` namespace."""
