"""Learning: advantage estimators, policy losses, KL estimators and the learner."""
