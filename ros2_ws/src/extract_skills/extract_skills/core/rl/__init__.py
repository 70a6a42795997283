"""Online RL: episode bookkeeping (the learner comes with the online-RL issue)."""
