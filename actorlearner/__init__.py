"""actorlearner: asynchronous actor-learner RL for multi-turn tool-using LLM agents."""
