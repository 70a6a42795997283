"""The simulated Franka Kitchen twin and its scripted demonstrations."""
