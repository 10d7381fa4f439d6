"""Records and protocols every role shares.

The trajectory contract, prompt histories, registries, the protocols the runtime is typed against
and metric helpers. Imports nothing else of actorlearner.
"""
