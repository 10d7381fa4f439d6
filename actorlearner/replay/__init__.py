"""What the learner consumes.

The group replay buffer, its sum-tree, filters, priority functions and DSCL.
"""
